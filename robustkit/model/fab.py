"""FAB-T: the targeted Fast Adaptive Boundary attack, Linf and L2, a minimum-norm attack.

Croce and Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
attack" (ICML), in the targeted form AutoAttack runs (Croce and Hein 2020, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks").
Per sample and target class ``t`` (the 2nd, 3rd ... most likely class of the clean image):

* linearise the difference logit ``f = z_t - z_y`` at the iterate ``x``: one input gradient
  per iteration, from a compiled ``tf.function`` around the adapter's ``logits_graph``;
* project ``x`` and the original ``x0`` onto the hyperplane ``{v : f(x) + grad f(x).(v - x) = 0}``
  intersected with the box [0, 1] (:func:`hyperplane_projection`, the smallest step in the
  attack's norm), giving ``d1`` and ``d2``;
* step ``x <- clip01((1 - a)(x + eta d1) + a (x0 + eta d2))`` with the bias towards the
  original point ``a = min(|d1| / (|d1| + |d2|), alpha_max)`` and the overshoot ``eta``;
* when the new iterate is misclassified, keep it if it is the closest to ``x0`` found so far,
  and move back towards the original point: ``x <- x0 + beta (x - x0)``.

The first run per target starts at ``x0``; a further run (``restarts`` > 1) starts at a random
point at distance ``min(eps, best found) / 2`` (uniform in the Linf sphere's cube, a Gaussian
direction for L2; the sample's own seed). At a fixed radius ``eps`` a sample counts as broken
when the smallest adversarial perturbation found has norm ``<= eps`` (as AutoAttack counts
it), and it leaves the search then; :meth:`FAB.minimal_perturbation` runs every iteration
and returns the smallest perturbation.

Where this differs from the paper's code (and why): the logits and gradient at a new iterate
come from one pass, which also says whether the iterate is adversarial (the reference spends
an extra forward pass per iteration); a sample whose iterate was adversarial pays one more
gradient pass at the point moved back. Where the box cannot reach the hyperplane, the step is
the unconstrained projection (as the reference), clipped to the box by the update.
Success is misclassification (AutoAttack's FAB-T: the target only steers the search).

Example:
    >>> out = LinfFAB(steps=100)(adapter, images, labels, epsilons=4 / 255, seed=ids)     # doctest: +SKIP
    >>> found = L2FAB(steps=100).minimal_perturbation(adapter, images, labels, epsilons=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from robustkit._tf import tf
from robustkit.errors import check_range, param_error
from robustkit.model.adapter import ModelAdapter
from robustkit.model.apgd import likely_classes
from robustkit.model.attack_loop import (
    _COMPILED,
    AttackResult,
    _check_images,
    sample_seeds,
)
from robustkit.model.foolbox_bridge import MinimalPerturbation

__all__ = ["FAB", "L2FAB", "LinfFAB", "hyperplane_projection"]


# ------------------------------------------------------------------------------ projections


def _level(v: np.ndarray, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smallest ``mu >= 0`` with ``sum_i v_i min(mu, r_i) = c`` per row, and whether it exists.

    ``v``, ``r`` ``(N, D)`` >= 0, ``c`` ``(N,)`` >= 0. The sum is piecewise linear and
    non-decreasing in ``mu`` with kinks at the ``r_i``: sort them, find the first kink where
    the sum reaches ``c`` and solve the linear piece before it.
    """
    order = np.argsort(r, axis=1, kind="stable")
    rs, vs = np.take_along_axis(r, order, axis=1), np.take_along_axis(v, order, axis=1)
    below = np.cumsum(vs * rs, axis=1) - vs * rs  # sum_{j < k} v_j r_j
    rest = np.cumsum(vs[:, ::-1], axis=1)[:, ::-1]  # sum_{j >= k} v_j
    k = np.sum(below + rs * rest < c[:, None], axis=1)
    feasible = k < r.shape[1]
    rows, kk = np.arange(len(c)), np.minimum(k, r.shape[1] - 1)
    num, den = c - below[rows, kk], rest[rows, kk]
    mu = np.divide(num, den, out=np.zeros_like(c), where=feasible & (den > 0))
    total = v.sum(axis=1)
    free = np.divide(c, total, out=np.zeros_like(c), where=~feasible & (total > 0))
    return np.where(feasible, mu, free), feasible


def hyperplane_projection(t: np.ndarray, w: np.ndarray, b: np.ndarray, *, norm: str) -> np.ndarray:
    """The smallest step ``d`` ``(N, D)`` in ``norm`` with ``w.(t + d) = b`` and ``t + d`` in ``[0, 1]^D``.

    ``t`` ``(N, D)`` points in the box, ``w`` ``(N, D)`` and ``b`` ``(N,)`` one hyperplane per
    row. Each coordinate may move towards the bound that brings ``w.x`` to ``b`` by at most its
    distance to that bound, ``reach_i``; the step is ``-s_i min(mu, reach_i)`` (Linf) or
    ``-s_i |w_i| min(mu, reach_i / |w_i|)`` (L2, the KKT point of the box-constrained least
    norm problem), ``s = sign(w) sign(w.t - b)``, with the smallest ``mu`` that reaches the
    hyperplane. Rows where the box cannot reach it get the unconstrained projection.

    >>> hyperplane_projection(np.array([[0.5, 0.9]]), np.array([[1.0, 1.0]]), np.array([1.8]), norm="linf")
    array([[0.3, 0.1]])
    """
    t, w = np.asarray(t, np.float64), np.asarray(w, np.float64)
    excess = np.sum(w * t, axis=1) - np.asarray(b, np.float64)
    w = w * np.where(excess >= 0, 1.0, -1.0)[:, None]  # now w.x must fall by |excess|
    reach = np.where(w > 0, t, 1.0 - t)
    aw = np.abs(w)
    if norm == "linf":
        v, r = aw, reach
    else:
        v, r = aw**2, np.divide(reach, aw, out=np.zeros_like(reach), where=aw > 0)
    mu, feasible = _level(v, r, np.abs(excess))
    size = np.where(feasible[:, None], np.minimum(mu[:, None], r), mu[:, None])
    return -np.sign(w) * size * (1.0 if norm == "linf" else aw)


# ------------------------------------------------------------------------------ the attack


def _difference_gradient(model: ModelAdapter) -> Any:
    """The compiled ``(x, y, t) -> (logits, grad_x (z_t - z_y))`` of ``model`` (cached with the adapter)."""
    fn = _COMPILED.setdefault(model, {}).get(("fab",))
    if fn is None:
        image = tf.TensorSpec((None, *model.input_shape), tf.float32)
        label = tf.TensorSpec((None,), tf.int32)

        def run(x: Any, y: Any, t: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                tape.watch(x)
                z = model.logits_graph(x)
                diff = tf.gather(z, t, axis=1, batch_dims=1) - tf.gather(z, y, axis=1, batch_dims=1)
                total = tf.reduce_sum(diff)
            return z, tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        fn = _COMPILED[model][("fab",)] = tf.function(run, input_signature=[image, label, label])
    return fn


@dataclass
class _Search:
    """What the search keeps per sample: the closest adversarial point and its size."""

    adv: np.ndarray
    size: np.ndarray
    logits: np.ndarray
    trace: np.ndarray
    evals: np.ndarray
    clean_logits: np.ndarray


class FAB:
    """FAB-T (targeted FAB, Croce and Hein 2020); the norm comes from :class:`LinfFAB` / :class:`L2FAB`.

    Args:
        steps: iterations per run (the paper and AutoAttack: 100).
        restarts: runs per target class; the first starts at the image, later ones at a
            random point (AutoAttack's standard version: 1).
        n_target_classes: target classes, the most likely other classes (AutoAttack: 9).
        alpha_max: the largest bias towards the original point (the paper: 0.1).
        eta: the overshoot of the projection step (the paper: 1.05).
        beta: the backward step after an adversarial iterate (the paper: 0.9).
    """

    norm: ClassVar[str] = ""

    def __init__(self, *, steps: int = 100, restarts: int = 1, n_target_classes: int = 9, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9) -> None:
        check_range("steps", steps, low=1, integer=True)
        check_range("restarts", restarts, low=1, integer=True)
        check_range("n_target_classes", n_target_classes, low=1, integer=True)
        check_range("alpha_max", alpha_max, low=0, high=1)
        check_range("eta", eta, low=1)
        check_range("beta", beta, low=0, high=1, low_open=True)
        self.steps, self.restarts, self.n_target_classes = steps, restarts, n_target_classes
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def _size(self, d: np.ndarray) -> np.ndarray:
        """The norm of each row of ``d`` ``(N, ...)``: ``(N,)``."""
        flat = d.reshape(len(d), int(np.prod(d.shape[1:]))).astype(np.float64)
        return np.abs(flat).max(axis=1, initial=0.0) if self.norm == "linf" else np.linalg.norm(flat, axis=1)

    def _direction(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """A random direction of norm 1 (Linf: uniform in the cube, scaled; L2: Gaussian)."""
        d = rng.uniform(-1.0, 1.0, shape) if self.norm == "linf" else rng.standard_normal(shape)
        return d / max(float(self._size(d[None])[0]), 1e-12)

    # -- the public calls -------------------------------------------------------------------
    def __call__(self, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *, epsilons: float | np.ndarray,
                 target: np.ndarray | None = None, seed: int | np.ndarray = 0) -> AttackResult:
        """Attack ``x`` ``(N, H, W, C)`` with labels ``(N,)``; broken: a perturbation of norm ``<= epsilons``.

        ``epsilons``: a scalar or ``(N,)``; a sample leaves the search once broken. ``target``
        must be None (the targets are the clean image's most likely other classes);
        ``seed``: one per sample or a scalar (it seeds the random restarts).
        """
        if target is not None:
            raise param_error("target", "None (FAB-T picks its own targets)", "target classes")
        found, eps = self._search(model, x, labels, epsilons, seed, stop=True)
        success = found.size <= eps  # an unbroken sample returns its image (its closest find lies outside)
        adv = np.where(success[:, None, None, None], found.adv, np.asarray(x, np.float32))
        return AttackResult(adv=adv, success=success, logits=np.where(success[:, None], found.logits, found.clean_logits),
                            loss_trace=found.trace, gradient_evals=int(found.evals.sum()), evals=found.evals)

    def minimal_perturbation(self, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, *,
                             epsilons: float | np.ndarray = np.inf, seed: int | np.ndarray = 0) -> MinimalPerturbation:
        """The smallest adversarial perturbation found in every iteration of every run and target.

        ``epsilons`` only bounds the radius of the random restarts (``min(eps, best) / 2``).
        """
        found, _ = self._search(model, x, labels, epsilons, seed, stop=False)
        delta = (found.adv - np.asarray(x, np.float32)).reshape(len(found.adv), -1).astype(np.float64)
        ok = np.isfinite(found.size)
        return MinimalPerturbation(adv=found.adv, success=ok, l2=np.where(ok, np.linalg.norm(delta, axis=1), np.inf),
                                   linf=np.where(ok, np.abs(delta).max(axis=1, initial=0.0), np.inf))

    # -- the search -------------------------------------------------------------------------
    def _search(self, model: ModelAdapter, x: np.ndarray, labels: np.ndarray, epsilons: float | np.ndarray,
                seed: int | np.ndarray, *, stop: bool) -> tuple[_Search, np.ndarray]:
        """Every target and run on the samples not yet broken at ``eps`` (all of them unless ``stop``)."""
        x = _check_images(model, x)
        n, y = len(x), np.asarray(labels, dtype=np.int32).reshape(-1)
        eps = np.broadcast_to(np.asarray(epsilons, dtype=np.float64), (n,)).copy()
        if np.any(np.isnan(eps)) or np.any(eps < 0):
            raise param_error("epsilons", "numbers >= 0", epsilons)
        seeds = sample_seeds(seed, n)
        clean = model.logits(x)
        found = _Search(adv=x.copy(), size=np.full(n, np.inf), logits=clean.copy(),
                        trace=np.zeros((n, self.steps + 1), np.float32), evals=np.zeros(n, np.int64),
                        clean_logits=clean)
        for run, t in enumerate(np.repeat(likely_classes(clean, self.n_target_classes), self.restarts, axis=0)):
            todo = np.flatnonzero(found.size > eps) if stop else np.arange(n)
            if todo.size:
                rngs = [np.random.default_rng((int(seeds[i]), run)) for i in todo] if run % self.restarts else None
                self._run(model, x[todo], y[todo], t[todo], eps[todo], rngs, found, todo, stop)
        return found, eps

    def _run(self, model: ModelAdapter, x0: np.ndarray, y: np.ndarray, t: np.ndarray, eps: np.ndarray,
             rngs: list[np.random.Generator] | None, found: _Search, where: np.ndarray, stop: bool) -> None:
        """One run towards targets ``t`` from ``x0`` ``(M, H, W, C)`` (or a random point given
        ``rngs``); keeps the closest adversarial points in ``found[where]``."""
        x = x0.copy() if rngs is None else self._random_start(x0, np.minimum(eps, found.size[where]), rngs)
        z, g = self._gradients(model, x, y, t)
        found.evals[where] += 1
        self._record(x0, x, z, y, found, where, np.arange(len(x)))
        trace = np.full((len(x), self.steps + 1), np.nan, np.float32)
        trace[:, 0] = z[np.arange(len(x)), t] - z[np.arange(len(x)), y]
        for it in range(1, self.steps + 1):
            active = np.flatnonzero(found.size[where] > eps) if stop else np.arange(len(x))
            if active.size == 0:
                break
            diff = z[active, t[active]] - z[active, y[active]]
            x[active] = self._step(x0[active], x[active], diff, g[active])
            z[active], g[active] = self._gradients(model, x[active], y[active], t[active])
            found.evals[where[active]] += 1
            adv = active[z[active].argmax(axis=1) != y[active]]
            self._record(x0, x, z, y, found, where, adv)
            back = adv[found.size[where[adv]] > eps[adv]] if stop else adv  # the done ones stop here
            if back.size:  # step back towards the original point (the paper's beta)
                x[back] = (x0[back] + self.beta * (x[back] - x0[back])).astype(np.float32)
                z[back], g[back] = self._gradients(model, x[back], y[back], t[back])
                found.evals[where[back]] += 1
            trace[active, it] = z[active, t[active]] - z[active, y[active]]
        found.trace[where] = _forward_fill(trace)

    def _random_start(self, x0: np.ndarray, limit: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
        """``x0`` plus a random step of norm ``limit / 2`` (0 where ``limit`` is infinite), in [0, 1]."""
        radius = np.where(np.isfinite(limit), 0.5 * limit, 0.0)
        step = np.stack([r * self._direction(rng, x0.shape[1:]) for r, rng in zip(radius, rngs)])
        return np.clip(x0 + step, 0.0, 1.0).astype(np.float32)

    def _record(self, x0: np.ndarray, x: np.ndarray, z: np.ndarray, y: np.ndarray, found: _Search,
                where: np.ndarray, rows: np.ndarray) -> None:
        """Keep the misclassified ``x[rows]`` that are closer to ``x0`` than the best found so far."""
        rows = rows[z[rows].argmax(axis=1) != y[rows]]
        size = self._size(x[rows] - x0[rows])
        closer = size < found.size[where[rows]]
        rows, at = rows[closer], where[rows[closer]]
        found.adv[at], found.size[at], found.logits[at] = x[rows], size[closer], z[rows]

    def _step(self, x0: np.ndarray, x: np.ndarray, diff: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The biased projection step from ``x`` ``(M, H, W, C)`` given ``z_t - z_y`` ``(M,)`` and its gradient."""
        m = len(x)
        w = g.reshape(m, -1).astype(np.float64)
        b = np.sum(w * x.reshape(m, -1), axis=1) - diff  # the linearised boundary: w.v = b
        d1 = hyperplane_projection(x.reshape(m, -1), w, b, norm=self.norm).reshape(x.shape)
        d2 = hyperplane_projection(x0.reshape(m, -1), w, b, norm=self.norm).reshape(x.shape)
        a1, a2 = np.maximum(self._size(d1), 1e-8), np.maximum(self._size(d2), 1e-8)
        alpha = np.minimum(a1 / (a1 + a2), self.alpha_max).reshape(-1, 1, 1, 1)
        new = (1.0 - alpha) * (x + self.eta * d1) + alpha * (x0 + self.eta * d2)
        return np.clip(new, 0.0, 1.0).astype(np.float32)

    @staticmethod
    def _gradients(model: ModelAdapter, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(M, K)`` and ``grad_x (z_t - z_y)`` ``(M, H, W, C)``, one compiled pass per chunk."""
        fn = _difference_gradient(model)
        z, g = np.empty((len(x), model.num_classes), np.float32), np.empty_like(x)
        for start in range(0, len(x), model.batch_size):
            sl = slice(start, min(len(x), start + model.batch_size))
            zs, gs = fn(tf.constant(x[sl]), tf.constant(y[sl]), tf.constant(t[sl]))
            z[sl], g[sl] = zs.numpy(), gs.numpy()
            model.calls += 1
        return z, g


def _forward_fill(trace: np.ndarray) -> np.ndarray:
    """``trace`` ``(M, S)`` with each NaN replaced by the last value before it in its row."""
    idx = np.where(np.isnan(trace), 0, np.arange(trace.shape[1]))
    return trace[np.arange(len(trace))[:, None], np.maximum.accumulate(idx, axis=1)]


class LinfFAB(FAB):
    """FAB-T minimising the Linf norm of the perturbation."""

    norm = "linf"


class L2FAB(FAB):
    """FAB-T minimising the L2 norm of the perturbation."""

    norm = "l2"
