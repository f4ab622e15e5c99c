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
    """The compiled loop's outputs plus its step sizes ``(N, steps)``, started at ``x`` itself."""
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
    _, _, success, trace, etas = _record_steps(cls(steps=steps), model, x, np.zeros(3, np.int32), eps)
    ws = _paper_checkpoints(steps)
    halvings = np.array([sum(w <= k for w in ws) for k in range(steps)])
    expected = 2 * eps[:, None] / 2.0 ** halvings[None, :]
    assert etas.shape == (3, steps)
    np.testing.assert_allclose(etas, expected, rtol=1e-6)
    assert not success.any() and np.ptp(trace) < 1e-6  # the premise: the loss never moved



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


@pytest.mark.parametrize("cls", [LinfSquare, L2Square])
def test_square_outputs_stay_in_the_box_and_within_eps_at_the_edges(mlp, cls: type[SquareAttack]) -> None:
    """The same property for the Square attack (Linf and L2), whose moves clip to the box."""
    rng = np.random.default_rng(3)
    x = _edge_images(rng, 16)
    y = mlp.logits(x).argmax(axis=1)
    eps = _radii(rng, 16, cls.norm)
    out = cls(queries=40)(mlp, x, y, epsilons=eps, seed=np.arange(16))
    _assert_in_box_and_ball(out.adv, x, eps, cls.norm)
    np.testing.assert_array_equal(mlp.logits(out.adv).argmax(axis=1) != y, out.success)
    assert np.any(out.adv != x)


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
