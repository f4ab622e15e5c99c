"""Tests that bite, round two (issue #28): APGD's compiled step-size schedule, the box and the
ball of FAB-T, Square and APGD outputs, and the Square window schedule as the search uses it.

Each test checks the code against an independent value: the paper's checkpoint recursion in
exact arithmetic, the box ``[0, 1]`` and the radius ``eps`` (properties over random images
with pixels exactly at 0 and 1), and the window side the schedule gives for each query.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from robustkit.model import apgd as P
from robustkit.model.adapter import ModelAdapter
from robustkit.model.fab import FAB, L2FAB, LinfFAB
from robustkit.model.square import L2Square, LinfSquare, SquareAttack, p_selection

SIZE, CLASSES = 4, 4


def _dense(weights: np.ndarray, bias: np.ndarray, *, size: int = SIZE,
           hidden: tuple[np.ndarray, np.ndarray] | None = None) -> ModelAdapter:
    """Pixels ``(size, size, 1)`` -> ``[tanh(x W1 + b1)] W + b`` (logits, no softmax)."""
    from robustkit._tf import keras

    inp = keras.Input((size, size, 1))
    x = keras.layers.Flatten()(inp)
    layers = []
    if hidden is not None:
        layers.append((keras.layers.Dense(hidden[0].shape[1], activation="tanh"), hidden))
        x = layers[-1][0](x)
    layers.append((keras.layers.Dense(weights.shape[1]), (weights, bias)))
    net = keras.Model(inp, layers[-1][0](x))
    for layer, (w, b) in layers:
        layer.set_weights([w.astype(np.float32), b.astype(np.float32)])
    return ModelAdapter(net, batch_size=8)


@pytest.fixture(scope="module")
def mlp() -> ModelAdapter:
    """A random two-layer tanh network on 4 x 4 x 1 images with four classes."""
    rng = np.random.default_rng(11)
    d = SIZE * SIZE
    hidden = (rng.standard_normal((d, 10)) * 1.5, 0.2 * rng.standard_normal(10))
    return _dense(rng.standard_normal((10, CLASSES)) * 2, np.zeros(CLASSES), hidden=hidden)


def _edge_images(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    """``(n, size, size, 1)`` in [0, 1] with about a quarter of the pixels exactly 0, a
    quarter exactly 1, some within 0.02 of a face and the rest uniform."""
    x = rng.uniform(0.0, 1.0, (n, size, size, 1))
    u = rng.uniform(size=x.shape)
    x[u < 0.25] = 0.0
    x[(u >= 0.25) & (u < 0.5)] = 1.0
    x[(u >= 0.5) & (u < 0.6)] = rng.choice([0.01, 0.99], size=int(np.sum((u >= 0.5) & (u < 0.6))))
    x[0], x[1] = 0.0, 1.0  # whole images at the box's corners
    return x.astype(np.float32)


def _size(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return np.abs(flat).max(axis=1) if norm == "linf" else np.linalg.norm(flat, axis=1)


def _assert_in_box_and_ball(adv: np.ndarray, x: np.ndarray, eps: np.ndarray, norm: str) -> None:
    assert adv.dtype == np.float32 and adv.shape == x.shape
    assert adv.min() >= 0.0 and adv.max() <= 1.0, (adv.min(), adv.max())
    size = _size(adv - x, norm)
    assert np.all(size <= eps * (1 + 1e-5) + 1e-6), np.max(size - eps)


# ------------------------------------------------------------------------------ APGD: step sizes


def _paper_checkpoints(steps: int) -> list[int]:
    """Croce and Hein 2020: ``w_j = ceil(p_j N)``, ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, in exact arithmetic."""
    p = [Fraction(0), Fraction(22, 100)]
    while (nxt := p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))) <= 1:
        p.append(nxt)
    return sorted({-(-q.numerator * steps // q.denominator) for q in p[1:]} - {0})


def _record_steps(attack: P.APGD, model: ModelAdapter, x: np.ndarray, labels: np.ndarray,
                  eps: np.ndarray) -> tuple[Any, ...]:
    """The compiled loop's outputs plus its step sizes and losses ``(N, steps)``, started at ``x`` itself."""
    from robustkit._tf import tf

    fn = P.step_size_recorder(attack, model)
    yt = np.stack([labels, labels], axis=1).astype(np.int32)
    out = fn(tf.constant(x), tf.constant(yt), tf.constant(eps.astype(np.float32)),
             tf.constant(attack._step_sizes(eps.astype(np.float32))), tf.zeros_like(tf.constant(x)))
    return tuple(t.numpy() for t in out)


@pytest.mark.parametrize("cls", [P.LinfAPGD, P.L2APGD])
@pytest.mark.parametrize("steps", [10, 37, 100])
def test_apgd_compiled_step_halves_at_every_paper_checkpoint_when_the_loss_never_rises(cls, steps: int) -> None:
    """A model with constant logits: no step raises the loss, so condition (a) holds at every
    checkpoint and the compiled loop's step must be ``2 eps / 2^j`` after the ``j``-th one."""
    model = _dense(np.zeros((SIZE * SIZE, 3)), np.array([2.0, 0.5, 0.0]))
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (3, SIZE, SIZE, 1)).astype(np.float32)
    eps = np.array([0.05, 0.1, 0.3])
    _, _, success, trace, etas, _ = _record_steps(cls(steps=steps), model, x, np.zeros(3, np.int32), eps)
    ws = _paper_checkpoints(steps)
    halvings = np.array([sum(w <= k for w in ws) for k in range(steps)])
    expected = 2 * eps[:, None] / 2.0 ** halvings[None, :]
    assert etas.shape == (3, steps)
    np.testing.assert_allclose(etas, expected, rtol=1e-6)
    assert not success.any() and np.ptp(trace) < 1e-6  # the premise: the loss never moved


def _check_halvings(trace: np.ndarray, losses: np.ndarray, etas: np.ndarray) -> dict[str, int]:
    """Replay the paper's halving rule over the compiled loop's own per-step losses ``(N, steps)``
    and best-loss trace ``(N, steps + 1)``: at checkpoint ``w`` the step must halve iff (a) fewer
    than 0.75 of the steps since the last checkpoint raised the loss or (b) the last checkpoint
    kept the step and the best loss has not risen since. Returns how often each case decided."""
    steps = losses.shape[1]
    ws = _paper_checkpoints(steps)
    f, count, last = trace[:, 0], np.zeros(len(trace)), 0
    halved = np.zeros(len(trace), bool)
    cases = {"a only": 0, "b only": 0, "kept": 0}
    for k in range(steps):
        count, f = count + (losses[:, k] > f), losses[:, k]
        if k + 1 not in ws:
            continue
        w = k + 1
        a, b = count < 0.75 * (w - last), ~halved & (trace[:, w] <= trace[:, last])
        halve = a | b
        if w < steps:
            np.testing.assert_array_equal(etas[:, w], np.where(halve, etas[:, k] / 2, etas[:, k]), err_msg=f"w={w}")
        f, count, last, halved = np.where(halve, trace[:, w], f), np.zeros(len(trace)), w, halve
        cases["a only"] += int(np.sum(a & ~b))
        cases["b only"] += int(np.sum(b & ~a))
        cases["kept"] += int(np.sum(~halve))
    return cases


@pytest.mark.parametrize(("cls", "loss", "low", "high"), [(P.LinfAPGD, "ce", 0.3, 1.0), (P.L2APGD, "dlr", 0.5, 2.0)])
def test_apgd_compiled_halvings_follow_both_conditions_of_the_paper(mlp, cls: type[P.APGD], loss: str, low: float,
                                                                     high: float) -> None:
    """On a random network, at every checkpoint of every sample the compiled step halves exactly
    when condition (a) or (b) holds, replayed in NumPy from the loop's own losses (the same
    float32 numbers, so no tie can go either way); cases where each condition alone decides and
    where the step is kept all occur."""
    rng = np.random.default_rng(7)
    x = rng.uniform(0.1, 0.9, (64, SIZE, SIZE, 1)).astype(np.float32)
    y = mlp.logits(x).argmax(axis=1).astype(np.int32)
    eps = np.exp(rng.uniform(np.log(low), np.log(high), 64))  # radii where the loss often keeps rising
    _, _, _, trace, etas, losses = _record_steps(cls(steps=40, loss=loss), mlp, x, y, eps)
    np.testing.assert_allclose(etas[:, 0], 2 * eps, rtol=1e-6)
    cases = _check_halvings(trace, losses, etas)
    assert min(cases.values()) > 0, cases


# ------------------------------------------------------------------------------ the box and the ball


def _radii(rng: np.random.Generator, n: int, norm: str) -> np.ndarray:
    """Per-sample radii, log-uniform from below the network's smallest adversarial perturbations
    to where the box binds (Linf 0.003 ... 0.6, L2 0.01 ... 3)."""
    low, high = (0.003, 0.6) if norm == "linf" else (0.01, 3.0)
    return np.exp(rng.uniform(np.log(low), np.log(high), n))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cls", [LinfFAB, L2FAB])
def test_fab_outputs_stay_in_the_box_and_within_eps_at_the_edges(mlp, cls: type[FAB], seed: int) -> None:
    """Random images with pixels exactly 0 and 1 and random radii: FAB-T's points lie in [0, 1],
    a broken sample's within ``eps``, an unbroken one is its image, and the minimal
    perturbation's points lie in [0, 1] with the norms it reports."""
    rng = np.random.default_rng(seed)
    x = _edge_images(rng, 16)
    y = mlp.logits(x).argmax(axis=1)
    eps = _radii(rng, 16, cls.norm)
    attack = cls(steps=8, restarts=2, n_target_classes=2)
    out = attack(mlp, x, y, epsilons=eps, seed=np.arange(16))
    _assert_in_box_and_ball(out.adv, x, eps, cls.norm)
    np.testing.assert_array_equal(out.adv[~out.success], x[~out.success])
    np.testing.assert_array_equal(mlp.logits(out.adv).argmax(axis=1) != y, out.success)
    assert 0 < out.success.sum() < 16  # radii where both outcomes occur
    found = attack.minimal_perturbation(mlp, x, y, seed=np.arange(16))
    assert found.success.sum() >= 8
    adv = found.adv[found.success]
    assert adv.min() >= 0.0 and adv.max() <= 1.0, (adv.min(), adv.max())
    reported = found.linf if cls.norm == "linf" else found.l2
    np.testing.assert_allclose(reported[found.success], _size(adv - x[found.success], cls.norm), rtol=1e-6)


def _box_minimum(w: np.ndarray, c: float, x0: np.ndarray, norm: str) -> float:
    """The smallest ``||d||`` with ``w.d = c`` and ``x0 + d`` in [0, 1] (a linear program for
    Linf, SLSQP for L2); infinite where the box cannot reach the hyperplane."""
    k = len(x0)
    bounds = list(zip(-x0, 1 - x0))
    if norm == "linf":  # min t s.t. -t <= d_i <= t
        a_ub = np.block([[np.eye(k), -np.ones((k, 1))], [-np.eye(k), -np.ones((k, 1))]])
        lp = linprog(np.r_[np.zeros(k), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * k), A_eq=np.r_[w, 0.0][None], b_eq=[c],
                     bounds=[*bounds, (0, None)], method="highs")
        return float(lp.fun) if lp.status == 0 else np.inf
    ref = minimize(lambda d: d @ d, np.zeros(k), jac=lambda d: 2 * d, method="SLSQP", bounds=bounds,
                   options={"ftol": 1e-15, "maxiter": 500},
                   constraints=[{"type": "eq", "fun": lambda d: w @ d - c, "jac": lambda d: w}])
    assert ref.success
    return float(np.sqrt(ref.fun))


@pytest.mark.parametrize("cls", [LinfFAB, L2FAB])
def test_fab_minimal_perturbation_at_the_edges_is_the_box_constrained_minimum(cls: type[FAB]) -> None:
    """Logits ``(v.x - sum(v) / 2, -v.x, -10)`` flip between the first two classes on the
    hyperplane ``2 v.x = sum(v)``; on images with pixels at 0 and 1 the box binds, and the
    smallest flip is a small convex program solved here by scipy. FAB-T's smallest perturbation
    is never below it and, after its backward steps, within 1 % of it (its first crossing
    overshoots by the paper's 5 %)."""
    rng = np.random.default_rng(2)
    v = rng.standard_normal(SIZE * SIZE) * 0.5
    model = _dense(np.stack([v, -v, np.zeros_like(v)], axis=1), np.array([-v.sum(), 0.0, -10.0]))
    x = _edge_images(np.random.default_rng(5), 12)
    y = model.logits(x).argmax(axis=1)
    flat = x.reshape(12, -1).astype(np.float64)
    minimum = np.array([_box_minimum(2 * v, v.sum() - 2 * v @ f, f, cls.norm) for f in flat])
    found = cls(steps=10, n_target_classes=1).minimal_perturbation(model, x, y)
    size = found.linf if cls.norm == "linf" else found.l2
    assert np.all(np.isfinite(minimum)) and found.success.all()
    assert np.all(size >= minimum * (1 - 1e-4)) and np.all(size <= 1.01 * minimum), size / minimum
    free = np.abs(v.sum() - flat @ (2 * v)) / np.linalg.norm(2 * v, 1 if cls.norm == "linf" else 2)
    assert np.sum(minimum > 1.05 * free) >= 3  # the premise: the box binds (the closed form without it is smaller)


@pytest.mark.parametrize("cls", [LinfFAB, L2FAB])
def test_fab_random_restart_points_lie_in_the_box_at_half_the_limit(cls: type[FAB]) -> None:
    """A later run's start: ``x0`` plus a random step of norm ``limit / 2`` (none for an infinite
    limit), clipped into [0, 1], so never farther than ``limit / 2``; exactly that far for
    images away from the faces."""
    rng = np.random.default_rng(8)
    for x0, exact in ((_edge_images(rng, 12), False), (rng.uniform(0.4, 0.6, (12, SIZE, SIZE, 1)), True)):
        x0 = x0.astype(np.float32)
        limit = np.r_[np.exp(rng.uniform(np.log(0.01), np.log(4.0), 11)), np.inf]
        start = cls()._random_start(x0, limit, [np.random.default_rng(i) for i in range(12)])
        assert start.dtype == np.float32 and start.min() >= 0.0 and start.max() <= 1.0
        size = _size(start - x0, cls.norm)
        half = np.where(np.isfinite(limit), limit / 2, 0.0)
        assert np.all(size <= half * (1 + 1e-5) + 1e-6)
        if exact:
            small = half < 0.1
            np.testing.assert_allclose(size[small], half[small], rtol=1e-5)


@pytest.mark.parametrize("cls", [LinfSquare, L2Square])
def test_square_outputs_stay_in_the_box_and_within_eps_at_the_edges(mlp, cls: type[SquareAttack]) -> None:
    """The same property for the Square attack (Linf and L2), whose moves clip to the box; and a
    random search keeps only improvements: the margin ``z_y - max_{i != y} z_i`` of the point it
    returns, recomputed from the model, is at most the margin of its start."""
    rng = np.random.default_rng(3)
    x = _edge_images(rng, 16)
    y = mlp.logits(x).argmax(axis=1)
    eps = _radii(rng, 16, cls.norm)
    out = cls(queries=40)(mlp, x, y, epsilons=eps, seed=np.arange(16))
    _assert_in_box_and_ball(out.adv, x, eps, cls.norm)
    z = mlp.logits(out.adv).astype(np.float64)
    np.testing.assert_array_equal(z.argmax(axis=1) != y, out.success)
    margin = z[np.arange(16), y] - np.where(np.eye(CLASSES, dtype=bool)[y], -np.inf, z).max(axis=1)
    np.testing.assert_allclose(-out.loss_trace[:, 1], margin, rtol=1e-4, atol=1e-5)
    assert np.all(out.loss_trace[:, 1] >= out.loss_trace[:, 0])
    assert np.any(out.loss_trace[:, 1] > out.loss_trace[:, 0]) and np.any(out.adv != x)


@pytest.mark.parametrize("cls", [P.LinfAPGD, P.L2APGD])
def test_apgd_outputs_stay_in_the_box_and_within_eps_at_the_edges(mlp, cls: type[P.APGD]) -> None:
    """The same property for APGD, whose every iterate is projected into the ball and the box."""
    rng = np.random.default_rng(4)
    x = _edge_images(rng, 16)
    y = mlp.logits(x).argmax(axis=1)
    eps = _radii(rng, 16, "linf" if cls is P.LinfAPGD else "l2")
    out = cls(steps=10)(mlp, x, y, epsilons=eps, seed=np.arange(16))
    _assert_in_box_and_ball(out.adv, x, eps, "linf" if cls is P.LinfAPGD else "l2")
    np.testing.assert_array_equal(mlp.logits(out.adv).argmax(axis=1) != y, out.success)


# ------------------------------------------------------------------------------ Square: the window schedule in use


def _recording(cls: type[SquareAttack]) -> tuple[type[SquareAttack], list[int]]:
    """A subclass of ``cls`` that records the window side of every proposal, in order."""
    sides: list[int] = []
    propose = cls._propose

    class Recording(cls):  # type: ignore[valid-type, misc]
        @staticmethod
        def _propose(rng: np.random.Generator, x0: np.ndarray, best: np.ndarray, eps: float, side: int) -> np.ndarray:
            sides.append(side)
            return propose(rng, x0, best, eps, side)

    return Recording, sides


@pytest.mark.parametrize("cls", [LinfSquare, L2Square])
@pytest.mark.parametrize("queries", [200, 1000])
def test_square_uses_the_window_schedule_of_each_query(cls: type[SquareAttack], queries: int) -> None:
    """One sample the attack cannot break (constant logits) makes one proposal per query after
    the first: the proposal at loop query ``q`` (1 ... queries - 1) uses the window of the
    paper's iteration ``q - 1``, the side ``p_selection(p_init, q - 1, queries)`` gives."""
    size = 16
    model = _dense(np.zeros((size * size, 3)), np.array([5.0, 0.0, 0.0]), size=size)
    x = np.random.default_rng(0).uniform(0.2, 0.8, (1, size, size, 1)).astype(np.float32)
    attack_cls, sides = _recording(cls)
    attack = attack_cls(queries=queries, p_init=0.8)
    out = attack(model, x, np.zeros(1), epsilons=0.1 if cls is LinfSquare else 1.0, seed=0)
    expected = [cls._side(p_selection(0.8, k, queries), size, size) for k in range(queries - 1)]
    assert sides == expected
    assert len(set(expected)) >= 4 and not out.success.any() and out.evals[0] == queries
