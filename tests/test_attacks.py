"""Compiled gradient attacks: known answers on linear models, foolbox agreement, sweep properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from robustkit.errors import ConfigError
from robustkit.model import attacks as A
from robustkit.model.adapter import ModelAdapter


def _linear_adapter(weights: np.ndarray, bias: np.ndarray, size: int = 4) -> ModelAdapter:
    """Pixel space -> logits ``W x + b`` (no softmax), so every gradient is known in closed form."""
    from robustkit._tf import keras

    inp = keras.Input((size, size, 1))
    out = keras.layers.Dense(weights.shape[1], name="linear")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    model.get_layer("linear").set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return ModelAdapter(model, batch_size=8)


@pytest.fixture(scope="module")
def toy(toy_arrays: tuple[ModelAdapter, np.ndarray, np.ndarray]) -> tuple[ModelAdapter, np.ndarray, np.ndarray]:
    return toy_arrays


def test_fgsm_on_a_linear_model_equals_the_analytic_answer() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((16, 2)), np.zeros(2)
    model = _linear_adapter(w, b)
    x = rng.uniform(0, 1, (10, 4, 4, 1)).astype(np.float32)
    y = np.asarray(model.logits(x).argmax(axis=1))
    eps = 0.1
    out = A.FGSM()(model, x, y, epsilons=eps)
    # cross-entropy gradient of a two-class linear model points along w_other - w_label
    direction = np.sign(w[:, 1 - y] - w[:, y]).T.reshape(x.shape)
    expected = np.clip(x + eps * direction, 0, 1)
    np.testing.assert_allclose(out.adv[~out.success], expected[~out.success], atol=1e-6)
    broken = out.success
    np.testing.assert_array_equal(model.logits(expected).argmax(axis=1) != y, broken)


@pytest.mark.parametrize("attack_cls,eps", [(A.LinfPGD, 8 / 255), (A.L2PGD, 0.3)])
def test_projection_keeps_the_perturbation_in_the_ball_and_images_in_range(toy, attack_cls, eps) -> None:
    model, x, y = toy
    out = attack_cls(steps=8, random_start=True, restarts=2)(model, x[:12], y[:12], epsilons=eps, seed=3)
    delta = (out.adv - x[:12]).reshape(12, -1)
    norms = np.abs(delta).max(axis=1) if attack_cls is A.LinfPGD else np.linalg.norm(delta, axis=1)
    assert np.all(norms <= eps * (1 + 1e-5) + 1e-6)
    assert out.adv.min() >= 0 and out.adv.max() <= 1
    assert out.loss_trace.shape == (12, 9)


def test_targeted_attack_reaches_the_target_on_an_easy_model() -> None:
    rng = np.random.default_rng(1)
    model = _linear_adapter(rng.standard_normal((16, 3)), np.zeros(3))
    x = rng.uniform(0.3, 0.7, (9, 4, 4, 1)).astype(np.float32)
    y = model.logits(x).argmax(axis=1)
    target = (y + 1) % 3
    for attack in (A.LinfPGD(steps=20, targeted=True), A.LinfPGD(steps=20, targeted=True, loss="margin")):
        out = attack(model, x, y, epsilons=0.3, target=target)
        assert np.all(out.success)
        np.testing.assert_array_equal(out.pred, target)


def test_linf_pgd_agrees_with_foolbox(toy) -> None:
    model, x, y = toy
    eps, steps = 20 / 255, 10
    step = 2.5 * eps / steps
    ours = A.LinfPGD(steps=steps, abs_stepsize=step, random_start=False)(model, x, y, epsilons=eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox as fb
    from robustkit._tf import tf

    attack = fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=False)
    _, clipped, _ = attack(A.foolbox_model(model), tf.constant(x), tf.constant(y.astype(np.int64)), epsilons=eps)
    theirs = model.logits(np.asarray(clipped)).argmax(axis=1)
    robust_ours, robust_theirs = np.mean(ours.pred == y), np.mean(theirs == y)
    assert 0.05 < robust_theirs < 0.95  # a budget where the comparison means something
    assert abs(robust_ours - robust_theirs) <= 0.02


def test_sweep_is_monotone_consistent_and_cheaper_than_independent_runs(toy) -> None:
    model, x, y = toy
    grid = [4 / 255, 12 / 255, 20 / 255, 28 / 255]
    attack = A.LinfPGD(steps=6, random_start=False)
    sweep = A.epsilon_sweep(attack, model, x, y, grid)
    assert np.all(np.diff(sweep.correct.astype(int), axis=1) <= 0)
    for k, eps in enumerate(sweep.epsilons):
        np.testing.assert_array_equal(sweep.correct[:, k], sweep.min_eps > eps)
    broken = np.flatnonzero(np.isfinite(sweep.min_eps) & (sweep.min_eps > 0))
    assert broken.size > 0
    fresh = attack(model, x[broken], y[broken], epsilons=sweep.min_eps[broken])
    assert np.mean(fresh.success) >= 0.95  # batch composition may move a borderline sample
    independent = sum(attack(model, x, y, epsilons=e).gradient_evals for e in grid)
    assert sweep.gradient_evals < independent
    traces = [f.experimental_get_tracing_count() for f in A._COMPILED[model].values()]
    assert traces == [1] * len(traces)  # one compile for every radius and batch size


def test_sweep_loss_trace_follows_the_images_the_attack_failed_to_break(toy) -> None:
    model, x, y = toy
    attack = A.LinfPGD(steps=4, random_start=False)
    sweep = A.epsilon_sweep(attack, model, x, y, [0.5 / 255, 1.0])
    assert sweep.correct[:, 0].any() and np.all(np.isfinite(sweep.loss_traces[0]))
    assert not sweep.correct[:, 1].any()  # a budget of the whole range breaks everything
    assert np.all(np.isnan(sweep.loss_traces[1]))  # so there is no failed optimisation to judge


def test_loss_gradient_is_zero_through_a_rounding_input() -> None:
    from robustkit._tf import keras

    inp = keras.Input((4, 4, 1))
    rounded = keras.layers.Lambda(lambda t: keras.ops.round(t * 4) / 4)(inp)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(rounded))
    model = ModelAdapter(keras.Model(inp, out))
    x = np.random.default_rng(0).uniform(0, 1, (5, 4, 4, 1)).astype(np.float32)
    g = A.loss_gradient(model, x, np.zeros(5, int))
    assert np.all(g == 0)


def test_bad_arguments_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="steps"):
        A.LinfPGD(steps=0)
    with pytest.raises(ConfigError, match="loss"):
        A.L2PGD(loss="hinge")
    model = _linear_adapter(np.ones((16, 2)), np.zeros(2))
    x = np.zeros((2, 4, 4, 1), np.float32)
    with pytest.raises(ConfigError, match="epsilons"):
        A.LinfPGD()(model, x, np.zeros(2, int), epsilons=-0.1)
    with pytest.raises(ConfigError, match="target"):
        A.LinfPGD(targeted=True)(model, x, np.zeros(2, int), epsilons=0.1)
