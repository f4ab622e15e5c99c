"""Tests that bite (issue #13), attacks: per-sample agreement with foolbox's PGD (Linf and
L2) on the same images and settings, and the L2 projection into the ball, not onto its
sphere."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from robustkit.model import attacks as A
from robustkit.model.adapter import ModelAdapter


@pytest.fixture(scope="module")
def toy(toy_arrays: tuple[ModelAdapter, np.ndarray, np.ndarray]) -> tuple[ModelAdapter, np.ndarray, np.ndarray]:
    return toy_arrays


def _foolbox_pgd(name: str, model: ModelAdapter, x: np.ndarray, y: np.ndarray, eps: float, step: float,
                 steps: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox as fb
    from robustkit._tf import tf

    attack = getattr(fb.attacks, name)(abs_stepsize=step, steps=steps, random_start=False)
    _, clipped, _ = attack(A.foolbox_model(model), tf.constant(x), tf.constant(y.astype(np.int64)), epsilons=eps)
    return np.asarray(clipped)


@pytest.mark.parametrize(("ours", "theirs", "eps"), [(A.LinfPGD, "LinfPGD", 20 / 255), (A.L2PGD, "L2PGD", 1.6)])
def test_pgd_breaks_what_foolbox_breaks_sample_by_sample(toy, ours, theirs, eps) -> None:
    model, x, y = toy
    steps = 10
    step = 2.5 * eps / steps
    res = ours(steps=steps, abs_stepsize=step, random_start=False)(model, x, y, epsilons=eps)
    adv_fb = _foolbox_pgd(theirs, model, x, y, eps, step, steps)
    broken_fb = model.logits(adv_fb).argmax(axis=1) != y
    assert 0.05 < broken_fb.mean() < 0.95, broken_fb.mean()  # a budget where agreement means something
    np.testing.assert_array_equal(res.success[broken_fb], True)  # everything foolbox breaks, we break
    # on the images neither attack broke, both ran the same ten steps: the same final image
    both_unbroken = ~res.success & ~broken_fb
    assert both_unbroken.sum() >= 3
    np.testing.assert_allclose(res.adv[both_unbroken], adv_fb[both_unbroken], atol=2e-4)
    assert np.sum(res.success & ~broken_fb) <= 1  # at most one image broken mid-way and lost again by foolbox


def test_l2_step_inside_the_ball_is_not_pushed_to_the_sphere(toy) -> None:
    model, x, y = toy
    eps, step = 2.0, 0.1
    res = A.L2PGD(steps=1, abs_stepsize=step, random_start=False)(model, x, y, epsilons=eps)
    norms = np.linalg.norm((res.adv - x).reshape(len(x), -1), axis=1)
    assert np.all(norms <= step + 1e-5)  # one unit step of length 0.1 (clipping only shortens it)
    assert np.median(norms) > 0.5 * step
