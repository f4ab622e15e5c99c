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

SIZE, CLASSES = 4, 4


def _dense(weights: np.ndarray, bias: np.ndarray, *, size: int = SIZE, hidden: tuple[np.ndarray, np.ndarray] | None = None,
           channels: int = 1) -> ModelAdapter:
    """Pixels ``(size, size, channels)`` -> ``[tanh(x W1 + b1)] W + b`` (logits, no softmax)."""
    from robustkit._tf import keras

    inp = keras.Input((size, size, channels))
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


def _edge_images(rng: np.random.Generator, n: int, size: int = SIZE, channels: int = 1) -> np.ndarray:
    """``(n, size, size, channels)`` in [0, 1] with about a quarter of the pixels exactly 0, a
    quarter exactly 1, some within 0.02 of a face and the rest uniform."""
    x = rng.uniform(0.0, 1.0, (n, size, size, channels))
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

