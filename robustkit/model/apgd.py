"""APGD: Auto-PGD with the cross-entropy and DLR losses, Linf and L2, in one compiled loop.

Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (ICML), Algorithm 1. Per sample and run:

* start at ``x0`` plus a uniform random point of the ball (the sample's own seed) and take
  the first step ``x1 = P(x0 + eta * s(grad))`` with ``eta = 2 * eps`` (``s``: sign for Linf,
  unit L2 direction for L2; ``P``: projection into the ball, then into [0, 1]);
* then ``z = P(x_k + eta_k s(grad f(x_k)))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))``
  with momentum ``a = 0.75``;
* the best point (highest loss) is kept; at the checkpoints ``w_j = ceil(p_j N)``
  (``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) the step is
  halved and the iterate restarts from the best point when (a) fewer than ``rho = 0.75`` of
  the steps since the last checkpoint raised the loss or (b) the step was not halved at the
  last checkpoint and the best loss has not risen since.

Where this differs from the paper (and why): condition (a) counts the steps whose loss
rose over the ``w_j - w_{j-1}`` steps *ending* at the checkpoint (the paper's index runs one
step earlier; the reference code counts as here), and condition (b) compares the step size
before the halving decision at the two checkpoints, as the reference code does. The loop
keeps the first adversarial iterate (any one will do) and, for a sample it did not break,
returns its best point. The loss trace is the best loss so far (non-decreasing), so the
study's convergence check reads whether it flattened. Success is always misclassification,
also for the targeted DLR loss (AutoAttack's APGD-T: the target only steers the search).

Losses (all maximised): ``ce`` the cross-entropy of the label (binary cross-entropy summed
over outputs for sigmoid heads, as :mod:`robustkit.model.attack_loop`); ``dlr`` the
difference-of-logits ratio ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` (``pi``: the
logits sorted in decreasing order; needs >= 3 classes); with ``targeted=True``
``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (needs >= 4 classes), run once per
target class ``t`` among the ``n_target_classes`` most likely other classes of the clean image.

Example:
    >>> attack = LinfAPGD(steps=100, loss="dlr")                      # doctest: +SKIP
    >>> out = attack(adapter, images, labels, epsilons=4 / 255, seed=ids)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robustkit._tf import tf
from robustkit.errors import check_choice, check_range, param_error
from robustkit.metrics.outputs import is_sigmoid
from robustkit.model.adapter import ModelAdapter
from robustkit.model.attack_loop import (
    L2PGD,
    AttackResult,
    GradientAttack,
    LinfPGD,
    _attack_loss,
    _bcast,
    _check_images,
    _empty_result,
    _merge,
    sample_seeds,
)

__all__ = ["APGD", "APGD_LOSSES", "L2APGD", "LinfAPGD", "checkpoints", "dlr_loss", "likely_classes"]

APGD_LOSSES = ("ce", "dlr")
RHO = 0.75  # share of loss-raising steps below which the step is halved
MOMENTUM = 0.75
P1, DECAY, MIN_GAP = 0.22, 0.03, 0.06  # the checkpoint schedule's constants


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` (``j >= 1``, ``p_j <= 1``) where APGD may halve its step.

    >>> checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    """
    check_range("steps", steps, low=1, integer=True)
    p = [0.0, P1]
    while (nxt := p[-1] + max(p[-1] - p[-2] - DECAY, MIN_GAP)) <= 1.0 + 1e-9:
        p.append(nxt)
    # round first: 0.22 + 0.19 is 0.41000000000000003 in floating point, and ceil would give 42
    return sorted({w for q in p[1:] if 1 <= (w := math.ceil(round(q * steps, 9))) <= steps})


def likely_classes(logits: np.ndarray, n: int) -> np.ndarray:
    """The targets of a targeted run ``(min(n, K - 1), N)``: row ``j`` is each sample's
    ``(j + 2)``-th most likely class (AutoAttack's APGD-T and FAB-T).

    >>> likely_classes(np.array([[0.1, 3.0, 2.0, -1.0]]), 2).tolist()
    [[2], [0]]
    """
    order = np.argsort(-np.asarray(logits), axis=1, kind="stable")
    return order[:, 1:1 + min(n, order.shape[1] - 1)].T.astype(np.int32)


def dlr_loss(z: Any, labels: Any, target: Any = None) -> Any:
    """DLR loss ``(N,)`` to maximise from logits ``(N, K)`` and labels ``(N,)`` (target ``(N,)`` or None).

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (Croce and Hein 2020, eqs. 6 and 7).
    """
    k = tf.shape(z)[1]
    top = tf.sort(z, axis=1, direction="DESCENDING")
    onehot = tf.one_hot(labels, k, dtype=z.dtype)
    z_y = tf.reduce_sum(z * onehot, axis=1)
    if target is None:
        other = tf.reduce_max(tf.where(onehot > 0, tf.constant(-np.inf, z.dtype), z), axis=1)
        return (other - z_y) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = tf.reduce_sum(z * tf.one_hot(target, k, dtype=z.dtype), axis=1)
    return (z_t - z_y) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


class APGD(GradientAttack):
    """Auto-PGD (Croce and Hein 2020), compiled; the norm comes from the Linf/L2 mix-in.

    Args:
        steps: iterations per run (``N_iter``; the paper: 100); ``steps + 1`` gradient passes.
        restarts: runs per sample (per target class when targeted); a later run starts at a
            new random point and attacks only the samples earlier runs did not break.
        loss: ``"ce"`` or ``"dlr"``.
        targeted: the targeted DLR loss (``loss="dlr"``, models with >= 4 classes).
        n_target_classes: target classes of a targeted run: the most likely other classes.
    """

    def __init__(self, *, steps: int = 100, restarts: int = 1, loss: str = "ce", targeted: bool = False,
                 n_target_classes: int = 9) -> None:
        check_choice("loss", loss, APGD_LOSSES)
        if targeted and loss != "dlr":
            raise param_error("loss", "'dlr' for a targeted APGD (AutoAttack's APGD-T)", loss)
        check_range("n_target_classes", n_target_classes, low=1, integer=True)
        super().__init__(steps=steps, restarts=restarts, random_start=True, targeted=targeted)
        self.loss = loss
        self.n_target_classes = n_target_classes

    def _step_sizes(self, eps: np.ndarray) -> np.ndarray:
        return (2.0 * eps).astype(np.float32)  # eta^(0) = 2 eps (the paper, Linf and L2)

    def _build(self, model: ModelAdapter) -> Any:
        return tf.function(_apgd_loop(self, model), input_signature=_spec(model))

    def _objective(self, model: ModelAdapter) -> tuple[Any, Any]:
        """The CE or DLR loss of ``[label, target]`` rows ``(N, 2)``; success is misclassification."""
        loss, targeted, sigmoid = self.loss, self.targeted, is_sigmoid(model.output_kind)

        def value(z: Any, yt: Any) -> Any:
            if loss == "ce":
                return _attack_loss(z, yt[:, 0], "ce", False, sigmoid)
            return dlr_loss(z, yt[:, 0], yt[:, 1] if targeted else None)

        return value, lambda z, yt: tf.not_equal(tf.argmax(z, axis=1, output_type=tf.int32), yt[:, 0])

    def __call__(self, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *, epsilons: float | np.ndarray,
                 target: np.ndarray | None = None, seed: int | np.ndarray = 0) -> AttackResult:
        """Attack ``x`` ``(N, H, W, C)`` with labels ``(N,)`` within ``epsilons`` (scalar or ``(N,)``).

        ``target`` is ignored (a targeted APGD picks its targets from the clean logits);
        ``seed``: one per sample ``(N,)`` or a scalar (:func:`~robustkit.model.attack_loop.sample_seeds`).
        """
        x = _check_images(model, x)
        n, y = len(x), np.asarray(labels, dtype=np.int32).reshape(-1)
        eps = np.broadcast_to(np.asarray(epsilons, dtype=np.float32), (n,)).copy()
        if np.any(~np.isfinite(eps)) or np.any(eps < 0):
            raise param_error("epsilons", "finite numbers >= 0", epsilons)
        seeds, targets = sample_seeds(seed, n), self._targets(model, x, y)
        out = _empty_result(x, model.num_classes, self.steps)
        todo, run = np.arange(n), 0
        for t in targets:
            for _ in range(self.restarts):
                if todo.size == 0:
                    return out
                part = self._run_chunks(model, x[todo], np.stack([y[todo], t[todo]], axis=1), eps[todo], True,
                                        seeds[todo], run)
                out.gradient_evals += part.gradient_evals
                _merge(out, part, todo)
                todo, run = todo[~part.success], run + 1
        return out

    def _targets(self, model: ModelAdapter, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        """One ``(N,)`` array per run group: the label itself (untargeted), else the 2nd, 3rd ... most likely class."""
        k = model.num_classes
        need = 4 if self.targeted else 3
        if self.loss == "dlr" and k < need:
            raise param_error("loss", f"a model with >= {need} classes for the {'targeted ' * self.targeted}DLR loss",
                              f"{k} classes")
        if not self.targeted:
            return [y]
        return list(likely_classes(model.logits(x), self.n_target_classes))

    always_random_start = True  # Algorithm 1 starts from a random point of the ball

    @property
    def gradient_evals_per_run(self) -> int:
        """The first gradient at the start plus one per iteration."""
        return int(self.steps) + 1


def _spec(model: ModelAdapter) -> list[Any]:
    image = tf.TensorSpec((None, *model.input_shape), tf.float32)
    vec = tf.TensorSpec((None,), tf.float32)
    return [image, tf.TensorSpec((None, 2), tf.int32), vec, vec, image]


def _schedule(steps: int) -> tuple[Any, Any]:
    """``(steps + 1,)`` bool: iterate ``k`` is a checkpoint; ``(steps + 1,)`` float: steps since the last one."""
    ws = checkpoints(steps)
    is_ck, gap = np.zeros(steps + 1, bool), np.ones(steps + 1, np.float32)
    for prev, w in zip([0, *ws], ws):
        is_ck[w], gap[w] = True, w - prev
    return tf.constant(is_ck), tf.constant(gap)


def step_size_recorder(attack: APGD, model: ModelAdapter) -> Any:
    """The compiled APGD run that also returns the step size and the loss of every iteration.

    The same loop as the attack's (a test seam: the attack itself never records); two more
    outputs ``(N, steps)``: column ``k`` of the fifth is the ``eta`` that iteration ``k`` (0-based)
    stepped with, so a halving at checkpoint ``w`` shows from column ``w`` on; of the sixth, the
    loss at the iterate ``x_{k+1}`` it reached (before any restart from the best point).
    """
    return tf.function(_apgd_loop(attack, model, record_steps=True), input_signature=_spec(model))


def _apgd_loop(attack: APGD, model: ModelAdapter, *, record_steps: bool = False) -> Any:
    """The compiled APGD run: ``(x0, [label, target], eps, eta0, start) -> (adv, logits, success, trace)``,
    plus the step sizes and losses ``(N, steps)`` with ``record_steps`` (decided when tracing: no cost when off)."""
    steps = attack.steps
    objective, hit = attack._objective(model)
    normalize, project = attack._normalize, attack._project
    is_ck, gap = _schedule(steps)

    def value_and_grad(x: Any, yt: Any) -> tuple[Any, Any, Any]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = model.logits_graph(x)
            f = objective(z, yt)
            total = tf.reduce_sum(f)  # inside the tape, or the gradient is zero
        g = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return z, f, g

    def into_ball(x0: Any, v: Any, eps: Any) -> Any:
        return tf.clip_by_value(x0 + project(v - x0, eps), 0.0, 1.0)

    def run(x0: Any, yt: Any, eps: Any, eta: Any, start: Any) -> tuple[Any, ...]:
        x = into_ball(x0, x0 + start, eps)
        z, f, g = value_and_grad(x, yt)
        found = hit(z, yt)
        adv, adv_z = x, z
        x_max, z_max, f_max, g_max, x_prev = x, z, f, g, x
        count = tf.zeros_like(f)
        f_max_ck, halved = f_max, tf.zeros_like(found)
        trace = tf.TensorArray(tf.float32, size=steps + 1).write(0, f_max)
        etas = tf.TensorArray(tf.float32, size=steps if record_steps else 0)
        losses = tf.TensorArray(tf.float32, size=steps if record_steps else 0)
        for i in tf.range(steps):
            if record_steps:
                etas = etas.write(i, eta)
            a = tf.where(i == 0, 1.0, MOMENTUM)
            step = into_ball(x0, x + _bcast(eta) * normalize(g), eps)
            x_new = into_ball(x0, x + a * (step - x) + (1.0 - a) * (x - x_prev), eps)
            z, f_new, g_new = value_and_grad(x_new, yt)
            new = tf.logical_and(hit(z, yt), tf.logical_not(found))
            adv, adv_z, found = tf.where(_bcast(new), x_new, adv), tf.where(new[:, None], z, adv_z), found | new
            count += tf.cast(f_new > f, tf.float32)
            better = f_new > f_max
            x_max, g_max = tf.where(_bcast(better), x_new, x_max), tf.where(_bcast(better), g_new, g_max)
            z_max = tf.where(better[:, None], z, z_max)
            f_max = tf.maximum(f_max, f_new)
            x_prev, x, f, g = x, x_new, f_new, g_new
            if record_steps:
                losses = losses.write(i, f_new)
            trace = trace.write(i + 1, f_max)
            ck = is_ck[i + 1]
            stalled = tf.logical_and(tf.logical_not(halved), f_max <= f_max_ck)
            halve = tf.logical_and(ck, tf.logical_or(count < RHO * gap[i + 1], stalled))
            eta = tf.where(halve, eta / 2.0, eta)
            x, f, g = tf.where(_bcast(halve), x_max, x), tf.where(halve, f_max, f), tf.where(_bcast(halve), g_max, g)
            count = tf.where(ck, tf.zeros_like(count), count)
            f_max_ck, halved = tf.where(ck, f_max, f_max_ck), tf.where(ck, halve, halved)
        adv = tf.where(_bcast(found), adv, x_max)  # unbroken samples return their best point
        adv_z = tf.where(found[:, None], adv_z, z_max)
        if record_steps:
            return adv, adv_z, found, tf.transpose(trace.stack()), tf.transpose(etas.stack()), tf.transpose(losses.stack())
        return adv, adv_z, found, tf.transpose(trace.stack())

    return run


class LinfAPGD(APGD, LinfPGD):
    """APGD in the Linf ball (sign steps, clipping)."""


class L2APGD(APGD, L2PGD):
    """APGD in the L2 ball (unit-L2 steps, rescaling)."""
