"""Model work of the smoothed classifier: keyed Gaussian draws and an L2 attack on it.

* :func:`keyed_normal` is what a draw's key means: draw ``j`` of a stream is row
  ``j mod DRAWS_PER_KEY`` of the stateless standard normal block of key ``j // DRAWS_PER_KEY``,
  so counts do not depend on how the draws are batched.
* :func:`smoothed_l2_pgd` searches the L2 ball around an image for a point where the smoothed
  classifier's call changes: projected gradient ascent (the L2 step and projection of
  :class:`~robustkit.model.attack_loop.L2PGD`) on the loss of the *smoothed soft classifier*,
  ``-log mean_j q(f(x + e_j))``, where ``q`` is the soft probability of the attacked call and
  the ``e_j ~ N(0, s^2 I)`` are fresh keyed draws at every step (SmoothAdv: Salman et al.,
  "Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers", NeurIPS
  2019). With ``sigma = 0`` and one draw it is plain L2 PGD on the base model.

The soft probability of a call: for an arg-max rule, the softmax of the logits at the
output; for a threshold rule, ``sigmoid(z_k - logit(t_k))`` (above 1/2 exactly when the
call is "present"); a call "absent" is one minus that.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from robustkit._tf import tf
from robustkit.model.adapter import ModelAdapter
from robustkit.model.attack_loop import L2PGD

__all__ = ["DRAWS_PER_KEY", "keyed_normal", "smoothed_l2_pgd"]

#: noisy copies drawn from one key (a fixed constant: it is part of what a draw's key means)
DRAWS_PER_KEY = 32

#: a step is this factor times the radius over the steps (as the attack loop's default)
STEP_SIZE_FACTOR = 2.5


def keyed_normal(keys: Any, used: Any, shape: tuple[int, int, int]) -> Any:
    """``(used, H, W, C)`` standard normal draws from the stateless seeds ``keys`` ``(B, 2)``
    (graph code: block ``b`` holds draws ``b * DRAWS_PER_KEY ...``)."""
    noise = tf.map_fn(lambda k: tf.random.stateless_normal((DRAWS_PER_KEY, *shape), seed=k), keys,
                      fn_output_signature=tf.float32)
    return tf.reshape(noise, (-1, *shape))[:used]


def smoothed_l2_pgd(model: ModelAdapter, x: np.ndarray, *, output: int, present: bool, radius: float,
                    sigma: float, keys: np.ndarray, draws: int, threshold: float | None = None) -> np.ndarray:
    """The last iterate of L2 PGD on the smoothed soft classifier, started at ``x``.

    Args:
        model: the adapter (its compiled logits graph).
        x: one image ``(H, W, C)`` in [0, 1].
        output: the output whose call is attacked (the class, for an arg-max rule).
        present: the attacked call (True: the output is called; always True for an arg-max rule).
        radius: the L2 radius of the ball (pixel units); the result stays inside it and in [0, 1].
        sigma: the smoothing noise level (0 with ``draws = 1``: PGD on the base model).
        keys: ``(steps, B, 2)`` stateless seeds: step ``t`` uses the first ``draws`` draws of ``keys[t]``.
        draws: noisy copies per step (``m``), at most ``B * DRAWS_PER_KEY``.
        threshold: the output's decision threshold, or None for the arg-max rule.

    Returns:
        ``x'`` ``(H, W, C)`` with ``||x' - x||_2 <= radius``.
    """
    steps = len(keys)
    step = _step_graph(model, threshold is None)
    x0 = tf.constant(np.asarray(x, np.float32))
    bias = 0.0 if threshold is None else float(np.log(threshold / (1.0 - threshold)))
    args = [tf.constant(v, dtype) for v, dtype in ((output, tf.int32), (present, tf.bool), (bias, tf.float32),
                                                   (radius, tf.float32), (sigma, tf.float32),
                                                   (STEP_SIZE_FACTOR * radius / max(steps, 1), tf.float32),
                                                   (draws, tf.int32))]
    xt = x0
    for t in range(steps):
        xt = step(xt, x0, tf.constant(np.asarray(keys[t], np.int64)), *args)
        model.calls += 1
    return np.asarray(xt.numpy())


_STEPS: weakref.WeakKeyDictionary[Any, dict[bool, Any]] = weakref.WeakKeyDictionary()


def _step_graph(model: ModelAdapter, argmax: bool) -> Any:
    """The compiled step ``x -> clip01(x0 + project(x + a * normalize(grad loss) - x0))``."""
    cache = _STEPS.setdefault(model, {})
    if argmax not in cache:
        shape = model.input_shape

        def step(x: Any, x0: Any, keys: Any, output: Any, present: Any, bias: Any, radius: Any, sigma: Any,
                 size: Any, used: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                z = model.logits_graph(x[None] + sigma * keyed_normal(keys, used, shape))
                q = tf.nn.softmax(z)[:, output] if argmax else tf.sigmoid(z[:, output] - bias)
                p = tf.reduce_mean(tf.where(present, q, 1.0 - q))
                loss = -tf.math.log(p + 1e-12)
            g = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            moved = x[None] + size * L2PGD._normalize(g[None])
            return tf.clip_by_value(x0 + L2PGD._project(moved - x0[None], radius[None])[0], 0.0, 1.0)

        image = tf.TensorSpec(shape, tf.float32)
        scalar = {name: tf.TensorSpec((), dtype) for name, dtype in (("i", tf.int32), ("b", tf.bool), ("f", tf.float32))}
        cache[argmax] = tf.function(step, autograph=False, input_signature=[
            image, image, tf.TensorSpec((None, 2), tf.int64), scalar["i"], scalar["b"], scalar["f"], scalar["f"],
            scalar["f"], scalar["f"], scalar["i"]])
    return cache[argmax]
