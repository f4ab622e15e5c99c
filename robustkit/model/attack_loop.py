"""The compiled gradient-attack loop: FGSM and PGD for Linf and L2, and the input gradient of the attack loss.

One small base, :class:`GradientAttack`, holds the whole projected-gradient loop once, as a
``tf.function`` over a batch (a ``tf.while_loop`` over the steps, so the graph does not grow
with them); the Linf and L2 variants supply only ``_normalize`` (the step direction) and
``_project`` (back into the epsilon ball), the design of foolbox's ``gradient_descent_base``.
Epsilon and step size are per-sample tensors, so one trace serves every epsilon of a sweep:
the graph is compiled once per (model, norm, steps, loss, targeted), and the batch
dimension is left open.

The loop (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks"): start at ``x0`` or at a uniform random point of the ball (drawn for each sample
from its own seed, so that a sample's attack does not depend on its batch), then ``steps`` times
``x <- clip01(x0 + project(x + step * normalize(grad loss) - x0))``. Every iterate is
checked with the logits of the forward pass that also gives its gradient (no extra cost),
and the first adversarial iterate of a sample is what is returned; a last forward pass
checks the final iterate. Losses are always *maximised*: ``ce`` is the cross-entropy of the
label (untargeted) or minus that of the target (targeted) -- for a sigmoid head (output kind
``sigmoid``/``multilabel``) the binary cross-entropy of the one-hot label summed over the
outputs, the loss such heads are trained with; ``margin`` is the Carlini-Wagner
margin on the logits, ``max_{j != y} z_j - z_y`` (untargeted) or ``z_t - max_{j != t} z_j``
(targeted) (Carlini and Wagner 2017, "Towards Evaluating the Robustness of Neural Networks"),
which fits softmax and sigmoid heads alike (the sigmoid is monotonic).

Example:
    >>> attack = LinfPGD(steps=20, restarts=1)                          # doctest: +SKIP
    >>> out = attack(adapter, images, labels, epsilons=2 / 255)         # doctest: +SKIP
    >>> out.success.mean(), out.loss_trace.mean(axis=0)                 # doctest: +SKIP
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from robustkit._tf import tf
from robustkit.errors import check_choice, check_range, param_error
from robustkit.metrics.outputs import is_sigmoid
from robustkit.metrics.sweep import LOSSES
from robustkit.model.adapter import ModelAdapter

__all__ = ["FGM", "FGSM", "AttackResult", "GradientAttack", "L2PGD", "LinfPGD", "loss_gradient", "sample_seeds"]

# (adapter) -> {(loop, kind, steps, loss, targeted): compiled function}; dies with the adapter
_COMPILED: weakref.WeakKeyDictionary[ModelAdapter, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


@dataclass
class AttackResult:
    """What one attack call returns.

    Attributes:
        adv: adversarial images ``(N, H, W, C)`` in [0, 1] (the first adversarial iterate of a
            sample, else its last iterate).
        success: ``(N,)`` bool: misclassified (untargeted) or classified as the target.
        logits: logits ``(N, K)`` of ``adv``.
        loss_trace: ``(N, steps + 1)`` attack loss at every iterate of the last run of each
            sample (the loss is maximised, so it should rise and flatten).
        gradient_evals: per-sample input-gradient evaluations spent (sum over samples).
        evals: ``(N,)`` input-gradient evaluations spent on each sample.
        broken_by: ``(N,)`` int8, for an ensemble: which of its attacks broke the sample
            (1, 2, ... in the order they ran; 0: none); empty for a single attack.
    """

    adv: np.ndarray
    success: np.ndarray
    logits: np.ndarray
    loss_trace: np.ndarray
    gradient_evals: int
    evals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    broken_by: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    @property
    def pred(self) -> np.ndarray:
        """Predicted class ``(N,)`` of the adversarial images."""
        return self.logits.argmax(axis=1)


def _attack_loss(z: Any, labels: Any, loss: str, targeted: bool, sigmoid: bool = False) -> Any:
    """Per-sample loss ``(N,)`` to maximise, from logits ``(N, K)`` and classes ``(N,)``.

    ``sigmoid``: the head scores each output with its own sigmoid, so ``ce`` is the binary
    cross-entropy of the one-hot label, summed over the K outputs.
    """
    k = tf.shape(z)[1]
    onehot = tf.one_hot(labels, k, dtype=z.dtype)
    if loss == "ce":
        if sigmoid:
            ce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=z), axis=1)
        else:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z)
        return -ce if targeted else ce
    own = tf.reduce_sum(z * onehot, axis=1)
    other = tf.reduce_max(z - onehot * 1e9, axis=1)
    return own - other if targeted else other - own


def _is_adversarial(z: Any, labels: Any, targeted: bool) -> Any:
    pred = tf.argmax(z, axis=1, output_type=tf.int32)
    return tf.equal(pred, labels) if targeted else tf.not_equal(pred, labels)


def _bcast(v: Any) -> Any:
    """A per-sample vector ``(N,)`` shaped to broadcast against images ``(N, H, W, C)``."""
    return tf.reshape(v, (-1, 1, 1, 1))


class GradientAttack(ABC):
    """Projected gradient ascent on an attack loss, batched and compiled (the base of all).

    Args:
        steps: gradient steps per run (FGSM: 1).
        step_size_factor: the step is ``step_size_factor * epsilon / steps`` (2.5 is the
            common choice: the iterate can cross the ball and still settle); ignored when
            ``abs_stepsize`` is given.
        abs_stepsize: an absolute step size in pixel units (as foolbox's ``abs_stepsize``).
        random_start: start the first run at a uniform random point of the ball.
        restarts: runs per sample; a run after the first starts at a random point and
            attacks only the samples that earlier runs did not break.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini-Wagner margin on logits).
        targeted: push each sample to a given target class instead of away from its label.
    """

    norm: ClassVar[str] = ""

    def __init__(
        self,
        *,
        steps: int = 20,
        step_size_factor: float = 2.5,
        abs_stepsize: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        targeted: bool = False,
    ) -> None:
        check_range("steps", steps, low=1, integer=True)
        check_range("step_size_factor", step_size_factor, low=0, low_open=True)
        if abs_stepsize is not None:
            check_range("abs_stepsize", abs_stepsize, low=0, low_open=True)
        check_range("restarts", restarts, low=1, integer=True)
        check_choice("loss", loss, LOSSES)
        if not isinstance(random_start, bool) or not isinstance(targeted, bool):
            raise param_error("random_start/targeted", "true or false", (random_start, targeted))
        self.steps = steps
        self.step_size_factor = step_size_factor
        self.abs_stepsize = abs_stepsize
        self.random_start = random_start
        self.restarts = restarts
        self.loss = loss
        self.targeted = targeted

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    # -- what a variant supplies ------------------------------------------------------------
    @staticmethod
    @abstractmethod
    def _normalize(g: Any) -> Any:
        """The step direction ``(N, H, W, C)`` from the loss gradient."""

    @staticmethod
    @abstractmethod
    def _project(delta: Any, eps: Any) -> Any:
        """``delta`` ``(N, H, W, C)`` moved into the ball of per-sample radius ``eps`` ``(N,)``."""

    @staticmethod
    @abstractmethod
    def _random_start(shape: Any, eps: Any, seeds: Any) -> Any:
        """A uniform random point of the ball, ``(N, H, W, C)``, sample ``i`` drawn from the
        stateless seed ``seeds[i]`` (``seeds``: ``(N, 2)``), so a sample's start does not
        depend on the other samples of its batch."""

    # -- the loop, written once -------------------------------------------------------------
    def _objective(self, model: ModelAdapter) -> tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]:
        """What the loop maximises and what counts as success, as graph functions of the logits
        ``(N, K)`` and the run's labels (what ``__call__`` hands the loop): the per-sample loss
        ``(N,)`` and ``(N,)`` bool. Default: :func:`_attack_loss` and misclassification (or the
        target reached); an attack with another goal (flipping one finding's call) overrides it."""
        loss, targeted, sigmoid = self.loss, self.targeted, is_sigmoid(model.output_kind)
        return (lambda z, y: _attack_loss(z, y, loss, targeted, sigmoid),
                lambda z, y: _is_adversarial(z, y, targeted))

    def _cache_key(self, model: ModelAdapter) -> tuple[Any, ...]:
        """What the compiled loop depends on besides the adapter."""
        cls = type(self)
        return (cls._build, cls._objective, cls._normalize, cls._project, self.steps, self.loss, self.targeted)

    def _compiled(self, model: ModelAdapter) -> Callable[..., Any]:
        key = self._cache_key(model)
        cache = _COMPILED.setdefault(model, {})
        if key not in cache:
            cache[key] = self._build(model)
        return cache[key]

    def _build(self, model: ModelAdapter) -> Callable[..., Any]:
        steps = self.steps
        objective, hit = self._objective(model)
        normalize, project = self._normalize, self._project
        image = tf.TensorSpec((None, *model.input_shape), tf.float32)
        vec = tf.TensorSpec((None,), tf.float32)
        spec = [image, tf.TensorSpec((None,), tf.int32), vec, vec, image]

        def value_and_grad(x: Any, labels: Any) -> tuple[Any, Any, Any]:
            with tf.GradientTape() as tape:
                tape.watch(x)
                z = model.logits_graph(x)
                per_sample = objective(z, labels)
                total = tf.reduce_sum(per_sample)
            g = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return z, per_sample, g

        def run(x0: Any, labels: Any, eps: Any, alpha: Any, start: Any) -> tuple[Any, ...]:
            x = tf.clip_by_value(x0 + start, 0.0, 1.0)
            best = x0
            best_z = tf.zeros((tf.shape(x0)[0], model.num_classes), tf.float32)
            found = tf.zeros((tf.shape(x0)[0],), tf.bool)
            trace = tf.TensorArray(tf.float32, size=steps + 1)
            for i in (range(steps) if steps <= _UNROLL_STEPS else tf.range(steps)):
                z, per_sample, g = value_and_grad(x, labels)
                new = tf.logical_and(hit(z, labels), tf.logical_not(found))
                best = tf.where(_bcast(new), x, best)
                best_z = tf.where(new[:, None], z, best_z)
                found = tf.logical_or(found, new)
                trace = trace.write(i, per_sample)
                x = x + _bcast(alpha) * normalize(g)
                x = tf.clip_by_value(x0 + project(x - x0, eps), 0.0, 1.0)
            z = model.logits_graph(x)
            trace = trace.write(steps, objective(z, labels))
            new = tf.logical_not(found)  # unbroken samples return their last iterate
            best = tf.where(_bcast(new), x, best)
            best_z = tf.where(new[:, None], z, best_z)
            success = hit(best_z, labels)
            return best, best_z, success, tf.transpose(trace.stack())

        return tf.function(run, input_signature=spec)

    # -- the public call --------------------------------------------------------------------
    def _step_sizes(self, eps: np.ndarray) -> np.ndarray:
        if self.abs_stepsize is not None:
            return np.full_like(eps, self.abs_stepsize)
        return (self.step_size_factor * eps / self.steps).astype(np.float32)

    def __call__(
        self,
        model: ModelAdapter,
        x: np.ndarray,
        labels: np.ndarray,
        *,
        epsilons: float | np.ndarray,
        target: np.ndarray | None = None,
        seed: int | np.ndarray = 0,
    ) -> AttackResult:
        """Attack images ``x`` ``(N, H, W, C)`` with labels ``(N,)`` within ``epsilons``.

        Args:
            model: the adapter (its ``batch_size`` sets the chunks).
            x: pixel-space images in [0, 1].
            labels: true classes ``(N,)``.
            epsilons: the radius, a scalar or one per sample ``(N,)``, in pixel units.
            target: target classes ``(N,)``; required when the attack is targeted.
            seed: seed of the random starts (same seed, same result): one per sample ``(N,)``
                (a sample's result then depends only on its own seed, not on its batch or
                position), or a scalar (sample ``i`` gets a seed derived from it and ``i``).
        """
        x = _check_images(model, x)
        n = len(x)
        eps = np.broadcast_to(np.asarray(epsilons, dtype=np.float32), (n,)).copy()
        if np.any(~np.isfinite(eps)) or np.any(eps < 0):
            raise param_error("epsilons", "finite numbers >= 0", epsilons)
        if self.targeted and target is None:
            raise param_error("target", "target classes (N,) for a targeted attack", None)
        classes = np.asarray(target if self.targeted else labels, dtype=np.int32).reshape(-1)
        seeds = sample_seeds(seed, n)
        out = _empty_result(x, model.num_classes, self.steps)
        todo = np.arange(n)
        for r in range(self.restarts):
            if todo.size == 0:
                break
            rand = self.random_start or r > 0
            part = self._run_chunks(model, x[todo], classes[todo], eps[todo], rand, seeds[todo], r)
            out.gradient_evals += part.gradient_evals
            _merge(out, part, todo)
            todo = todo[~part.success]
        return out

    def _run_chunks(self, model: ModelAdapter, x: np.ndarray, classes: np.ndarray, eps: np.ndarray,
                    rand: bool, seeds: np.ndarray, run: int) -> AttackResult:
        fn = self._compiled(model)
        alpha = self._step_sizes(eps)
        out = _empty_result(x, model.num_classes, self.steps)
        pairs = np.stack([seeds % _SEED_MOD, np.full(len(seeds), run)], axis=1).astype(np.int32)
        for start in range(0, len(x), model.batch_size):
            sl = slice(start, min(len(x), start + model.batch_size))
            x0, e = tf.constant(x[sl]), tf.constant(eps[sl])
            random = rand or self.always_random_start
            offset = self._random_start(tf.shape(x0), e, tf.constant(pairs[sl])) if random else tf.zeros_like(x0)
            adv, z, ok, trace = fn(x0, tf.constant(classes[sl]), e, tf.constant(alpha[sl]), offset)
            model.calls += 1
            out.adv[sl], out.logits[sl], out.success[sl], out.loss_trace[sl] = adv, z, ok, trace
            out.gradient_evals += (sl.stop - sl.start) * self.gradient_evals_per_run
            out.evals[sl] = self.gradient_evals_per_run
        return out

    #: start every run at a random point of the ball, whatever ``random_start`` says (APGD)
    always_random_start = False

    @property
    def gradient_evals_per_run(self) -> int:
        """Input-gradient evaluations of one run of the loop on one sample."""
        return int(self.steps)


_SEED_MOD = 2**31 - 1


def sample_seeds(seed: int | np.ndarray, n: int) -> np.ndarray:
    """Per-sample seeds ``(n,)`` int64: ``seed`` itself if it has one per sample, else derived
    from the scalar ``seed`` and each position."""
    arr = np.asarray(seed, dtype=np.int64)
    if arr.ndim == 0:
        return (int(arr) % _SEED_MOD * 1_000_003 + np.arange(n, dtype=np.int64)) % _SEED_MOD
    if arr.shape != (n,):
        raise param_error("seed", f"an int or one int per sample ({n},)", arr.shape)
    return arr % _SEED_MOD


#: Loops up to this many steps are unrolled in the graph (no while-loop between the gradient
#: passes, which lets TensorFlow schedule them as one graph); longer ones stay a tf.while_loop
#: so that tracing stays fast.
_UNROLL_STEPS = 12


def _check_images(model: ModelAdapter, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(model.input_shape):
        raise param_error("x", f"images of shape (N, {', '.join(map(str, model.input_shape))})", x.shape)
    return x


def _empty_result(x: np.ndarray, k: int, steps: int) -> AttackResult:
    n = len(x)
    return AttackResult(adv=x.copy(), success=np.zeros(n, bool), logits=np.zeros((n, k), np.float32),
                        loss_trace=np.zeros((n, steps + 1), np.float32), gradient_evals=0,
                        evals=np.zeros(n, np.int64))


def _merge(out: AttackResult, part: AttackResult, where: np.ndarray) -> None:
    out.adv[where], out.logits[where] = part.adv, part.logits
    out.success[where], out.loss_trace[where] = part.success, part.loss_trace
    out.evals[where] += part.evals


def _per_sample(draw: Callable[[Any, Any], Any], shape: Any, seeds: Any) -> Any:
    """``draw(sample_shape, seed)`` once per sample, each with its own seed ``(2,)``: ``(N, ...)``
    (run eagerly, outside the compiled loop)."""
    return tf.stack([draw(shape[1:], seeds[i]) for i in range(int(shape[0]))])


class LinfPGD(GradientAttack):
    """PGD in the Linf ball: sign of the gradient, clip the perturbation to ``[-eps, eps]``."""

    norm = "linf"

    @staticmethod
    def _normalize(g: Any) -> Any:
        return tf.sign(g)

    @staticmethod
    def _project(delta: Any, eps: Any) -> Any:
        e = _bcast(eps)
        return tf.clip_by_value(delta, -e, e)

    @staticmethod
    def _random_start(shape: Any, eps: Any, seeds: Any) -> Any:
        noise = _per_sample(lambda sh, s: tf.random.stateless_uniform(sh, s, -1.0, 1.0), shape, seeds)
        return noise * _bcast(eps)


def _l2_norms(v: Any) -> Any:
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2, 3]))


class L2PGD(GradientAttack):
    """PGD in the L2 ball: unit-L2 gradient step, rescale a perturbation longer than ``eps``."""

    norm = "l2"

    @staticmethod
    def _normalize(g: Any) -> Any:
        return g / _bcast(tf.maximum(_l2_norms(g), 1e-12))

    @staticmethod
    def _project(delta: Any, eps: Any) -> Any:
        factor = tf.minimum(1.0, eps / tf.maximum(_l2_norms(delta), 1e-12))
        return delta * _bcast(factor)

    @staticmethod
    def _random_start(shape: Any, eps: Any, seeds: Any) -> Any:
        direction = _per_sample(tf.random.stateless_normal, shape, seeds)
        direction = direction / _bcast(tf.maximum(_l2_norms(direction), 1e-12))
        dims = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
        u = _per_sample(lambda sh, s: tf.random.stateless_uniform((), s), shape, seeds + 1)
        return direction * _bcast(eps * u ** (1.0 / dims))  # uniform in the ball


class FGSM(LinfPGD):
    """Fast gradient sign method (Goodfellow et al. 2015): one Linf step of size ``eps``."""

    def __init__(self, *, loss: str = "ce", targeted: bool = False) -> None:
        super().__init__(steps=1, step_size_factor=1.0, random_start=False, restarts=1, loss=loss,
                         targeted=targeted)


class FGM(L2PGD):
    """Fast gradient method in L2: one step of length ``eps`` along the normalised gradient."""

    def __init__(self, *, loss: str = "ce", targeted: bool = False) -> None:
        super().__init__(steps=1, step_size_factor=1.0, random_start=False, restarts=1, loss=loss,
                         targeted=targeted)


def loss_gradient(model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *, loss: str = "ce") -> np.ndarray:
    """Input gradient ``(N, H, W, C)`` of the untargeted attack loss at ``x`` (zero if unconnected).

    This is the direction the first step of an attack from the clean image follows; NaN,
    inf or all-zero gradients mean the attack cannot work as intended.
    """
    check_choice("loss", loss, LOSSES)
    x = _check_images(model, x)
    fn = _COMPILED.setdefault(model, {}).get(("grad", loss))
    if fn is None:
        spec = [tf.TensorSpec((None, *model.input_shape), tf.float32), tf.TensorSpec((None,), tf.int32)]
        sigmoid = is_sigmoid(model.output_kind)

        def grad(xb: Any, yb: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(xb)
                value = tf.reduce_sum(_attack_loss(model.logits_graph(xb), yb, loss, False, sigmoid))
            return tape.gradient(value, xb, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        fn = _COMPILED[model][("grad", loss)] = tf.function(grad, input_signature=spec)
    y = np.asarray(labels, dtype=np.int32).reshape(-1)
    out = np.empty_like(x)
    for start in range(0, len(x), model.batch_size):
        sl = slice(start, min(len(x), start + model.batch_size))
        out[sl] = fn(tf.constant(x[sl]), tf.constant(y[sl])).numpy()
        model.calls += 1
    return out
