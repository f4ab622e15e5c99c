"""APGD, Square and the ensemble: the paper's schedule, a NumPy reference, known answers, ART."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from robustkit.errors import ConfigError
from robustkit.model import apgd as P
from robustkit.model.adapter import ModelAdapter
from robustkit.model.ensemble import Ensemble
from robustkit.model.square import LinfSquare, p_selection


@pytest.fixture(scope="module")
def toy(toy_arrays: tuple[ModelAdapter, np.ndarray, np.ndarray]) -> tuple[ModelAdapter, np.ndarray, np.ndarray]:
    return toy_arrays


def _mlp(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, size: int = 4) -> ModelAdapter:
    """Pixels ``(size, size, 1)`` -> ``tanh(x W1 + b1) W2 + b2`` (logits; no softmax)."""
    from robustkit._tf import keras

    inp = keras.Input((size, size, 1))
    hidden = keras.layers.Dense(w1.shape[1], activation="tanh", name="h")(keras.layers.Flatten()(inp))
    out = keras.layers.Dense(w2.shape[1], name="out")(hidden)
    model = keras.Model(inp, out)
    model.get_layer("h").set_weights([w1.astype(np.float32), b1.astype(np.float32)])
    model.get_layer("out").set_weights([w2.astype(np.float32), b2.astype(np.float32)])
    return ModelAdapter(model, batch_size=8)


# ------------------------------------------------------------------------------ the schedule


def test_checkpoints_follow_the_papers_recursion_in_exact_arithmetic() -> None:
    for steps in (5, 10, 20, 37, 100, 250):
        p = [Fraction(0), Fraction(22, 100)]
        while p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)) <= 1:
            p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
        expected = sorted({math.ceil(q * steps) for q in p[1:]} - {0})
        assert P.checkpoints(steps) == expected, steps
    assert P.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # the paper's schedule, by hand


def _reference_apgd(w1, b1, w2, b2, x0, y, eps, steps, loss):
    """Croce and Hein 2020, Algorithm 1 (Linf), in float64 NumPy with hand-written gradients.

    Returns the best loss after each iterate ``(steps + 1,)``, the step size before each
    iteration ``(steps,)`` and whether every step changed the loss by 0 or by more than
    float32 noise (where a step raises the loss by 1e-15, float32 may see no rise and halve
    at a checkpoint where float64 does not)."""
    def value_grad(x):
        h = np.tanh(x @ w1 + b1)
        z = h @ w2 + b2
        if loss == "ce":
            p = np.exp(z - z.max())
            p /= p.sum()
            f, dz = -np.log(p[y]), p - np.eye(len(z))[y]
        else:
            order = np.argsort(-z)
            other = max((k for k in range(len(z)) if k != y), key=lambda k: z[k])
            d = z[order[0]] - z[order[2]] + 1e-12
            f = (z[other] - z[y]) / d
            dz = np.zeros_like(z)
            dz[other] += 1 / d
            dz[y] -= 1 / d
            dz[order[0]] -= f / d
            dz[order[2]] += f / d
        return f, ((dz @ w2.T) * (1 - h ** 2)) @ w1.T

    def proj(v):
        return np.clip(np.clip(v, x0 - eps, x0 + eps), 0, 1)

    ws = P.checkpoints(steps)
    eta, x = 2 * eps, x0.copy()
    f_x, g = value_grad(x)
    x_max, f_max, g_max, x_prev = x, f_x, g, x
    trace, etas, count, last_ck, f_max_ck, halved = [f_max], [], 0, 0, f_max, False
    clear = True
    for k in range(steps):
        etas.append(eta)
        a = 1.0 if k == 0 else 0.75
        z = proj(x + eta * np.sign(g))
        x_new = proj(x + a * (z - x) + (1 - a) * (x - x_prev))
        f_new, g_new = value_grad(x_new)
        count += f_new > f_x
        clear &= f_new == f_x or abs(f_new - f_x) > 1e-5 * max(1.0, abs(f_x))
        if f_new > f_max:
            x_max, f_max, g_max = x_new, f_new, g_new
        x_prev, x, f_x, g = x, x_new, f_new, g_new
        trace.append(f_max)
        if k + 1 in ws:
            halve = count < 0.75 * (k + 1 - last_ck) or (not halved and f_max <= f_max_ck)
            if halve:
                eta, x, f_x, g = eta / 2, x_max, f_max, g_max
            count, last_ck, f_max_ck, halved = 0, k + 1, f_max, halve
    return np.array(trace), np.array(etas), clear


@pytest.mark.parametrize(("loss", "eps"), [("ce", 0.05), ("dlr", 0.05), ("ce", 0.5)])
def test_apgd_follows_the_papers_algorithm_step_for_step(loss: str, eps: float) -> None:
    """The compiled loop's best-loss trace and its step size at every iteration equal a float64
    NumPy transcription of Algorithm 1, whose step size halves only at the paper's checkpoints
    (the step sizes on the samples where no step moved the loss by float noise only; at the
    large radius the loss keeps rising past some checkpoints, so both conditions decide)."""
    from robustkit._tf import tf

    rng = np.random.default_rng(1)
    w1, b1 = rng.standard_normal((16, 12)), 0.1 * rng.standard_normal(12)
    w2, b2 = rng.standard_normal((12, 4)), np.zeros(4)
    model = _mlp(w1, b1, w2, b2)
    x = rng.uniform(0.2, 0.8, (6, 4, 4, 1)).astype(np.float32)
    y = model.logits(x).argmax(axis=1).astype(np.int32)
    steps = 40
    attack = P.LinfAPGD(steps=steps, loss=loss)
    fn = P.step_size_recorder(attack, model)  # the start is zero here so that both runs begin at x0
    _, _, _, trace, steps_used, _ = fn(tf.constant(x), tf.constant(np.stack([y, y], 1)),
                                       tf.constant(np.full(6, eps, np.float32)),
                                       tf.constant(np.full(6, 2 * eps, np.float32)), tf.zeros_like(tf.constant(x)))
    halvings, kept, clear = 0, 0, 0
    for i in range(6):
        ref, etas, ok = _reference_apgd(w1, b1, w2, b2, x[i].reshape(-1).astype(np.float64), int(y[i]), eps, steps,
                                        loss)
        np.testing.assert_allclose(trace.numpy()[i], ref, rtol=2e-4, atol=2e-5)
        changed = {k for k in range(1, steps) if etas[k] != etas[k - 1]}
        assert changed <= set(P.checkpoints(steps)), changed
        if ok:
            np.testing.assert_allclose(steps_used.numpy()[i], etas, rtol=1e-6, err_msg=f"sample {i}")
            clear += 1
            halvings += len(changed)
            kept += len(set(P.checkpoints(steps)) - changed - {steps})
    assert clear >= 5 and halvings > 0  # the schedule was exercised
    assert kept > 0 or eps < 0.1  # and with large steps the loss kept rising past some checkpoints


def test_dlr_loss_equals_a_direct_computation() -> None:
    from robustkit._tf import tf

    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 6)).astype(np.float32) * 3
    y, t = rng.integers(0, 6, 50), rng.integers(0, 6, 50)
    untargeted = P.dlr_loss(tf.constant(z), tf.constant(y)).numpy()
    targeted = P.dlr_loss(tf.constant(z), tf.constant(y), tf.constant(t)).numpy()
    for i in range(50):
        s = sorted(z[i], reverse=True)
        other = max(z[i][k] for k in range(6) if k != y[i])
        assert untargeted[i] == pytest.approx(-(z[i][y[i]] - other) / (s[0] - s[2] + 1e-12), rel=1e-5)
        assert targeted[i] == pytest.approx(-(z[i][y[i]] - z[i][t[i]]) / (s[0] - (s[2] + s[3]) / 2 + 1e-12),
                                            rel=1e-5, abs=1e-6)


def test_dlr_needs_enough_classes_and_targeted_needs_dlr(toy) -> None:
    model, x, y = toy  # three classes: untargeted DLR yes, targeted DLR no
    P.LinfAPGD(steps=2, loss="dlr")(model, x[:2], y[:2], epsilons=0.01)
    with pytest.raises(ConfigError, match=">= 4 classes"):
        P.LinfAPGD(steps=2, loss="dlr", targeted=True)(model, x[:2], y[:2], epsilons=0.01)
    with pytest.raises(ConfigError, match="'dlr'"):
        P.LinfAPGD(steps=2, loss="ce", targeted=True)
    assert [name for name, _ in Ensemble().attacks(3)] == ["apgd_ce", "apgd_dlr", "fab_t", "square"]
    assert [name for name, _ in Ensemble(fab_steps=0, square_queries=0).attacks(2)] == ["apgd_ce"]
    assert Ensemble().attacks(10)[1][1].targeted and not Ensemble().attacks(3)[1][1].targeted


# ------------------------------------------------------------------------------ known answers


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_finds_the_known_minimal_perturbation_of_a_linear_model(norm: str, loss: str) -> None:
    """Logits ``(v.x + c, -v.x, -10)`` (``c = -sum(v)``: the classes meet at mid-grey): the smallest
    perturbation that flips ``x0`` between the first two classes is ``|2 v.x0 + c| / ||2 v||_dual`` (L1 for Linf, L2 for L2) while the box
    does not bind; APGD must find one within 1.05x of it, and nothing exists within 0.95x.
    (With three free classes cross-entropy may climb towards the wrong class: the third class
    is kept out of reach so that the minimal perturbation has a closed form for both losses.)"""
    from robustkit._tf import keras

    rng = np.random.default_rng(2)
    v = rng.standard_normal(16) * 0.5
    w, b = np.stack([v, -v, np.zeros(16)], axis=1), np.array([-v.sum(), 0.0, -10.0])
    inp = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(3, name="lin")
    net = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    dense.set_weights([w.astype(np.float32), b.astype(np.float32)])
    model = ModelAdapter(net, batch_size=8)
    x = (0.5 + rng.uniform(-0.05, 0.05, (6, 4, 4, 1))).astype(np.float32)
    y = model.logits(x).argmax(axis=1)
    assert set(y) == {0, 1}
    margin = np.abs(2 * x.reshape(6, -1).astype(np.float64) @ v - v.sum())
    minimal = margin / np.linalg.norm(2 * v, 1 if norm == "linf" else 2)
    assert np.all(minimal < (0.4 if norm == "linf" else 0.4 * 4))  # the box [0, 1] does not bind
    cls = P.LinfAPGD if norm == "linf" else P.L2APGD
    found = cls(steps=50, loss=loss)(model, x, y, epsilons=1.05 * minimal, seed=0)
    assert found.success.all()
    delta = (found.adv - x).reshape(6, -1)
    size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= 1.05 * minimal * (1 + 1e-4))
    assert not cls(steps=50, loss=loss)(model, x, y, epsilons=0.95 * minimal, seed=0).success.any()


def test_apgd_outcome_of_a_sample_does_not_depend_on_its_batch(toy) -> None:
    model, x, y = toy
    seeds = np.arange(12) * 17 + 5
    whole = P.LinfAPGD(steps=15)(model, x[:12], y[:12], epsilons=18 / 255, seed=seeds)
    part = P.LinfAPGD(steps=15)(model, x[4:9], y[4:9], epsilons=18 / 255, seed=seeds[4:9])
    np.testing.assert_array_equal(whole.success[4:9], part.success)
    np.testing.assert_allclose(whole.loss_trace[4:9], part.loss_trace, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ Square, ensemble


def test_square_schedule_and_success_on_a_small_model(toy) -> None:
    assert [p_selection(0.8, q, 10000) for q in (0, 10, 11, 50, 51, 8001)] == [0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 512]
    model, x, y = toy
    eps = 32 / 255
    out = LinfSquare(queries=300)(model, x, y, epsilons=eps, seed=np.arange(len(x)))
    assert np.abs(out.adv - x).max() <= eps + 1e-6 and out.adv.min() >= 0 and out.adv.max() <= 1
    np.testing.assert_array_equal(model.logits(out.adv).argmax(axis=1) != y, out.success)
    rng = np.random.default_rng(0)  # the same budget spent on one random corner of the ball breaks less
    noise = np.clip(x + eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1).astype(np.float32)
    assert out.success.mean() >= 0.9 > np.mean(model.logits(noise).argmax(axis=1) != y)
    assert np.all(out.evals[out.success] < 300)  # a broken sample stops querying


def test_ensemble_is_the_per_sample_worst_case_of_its_attacks(toy) -> None:
    model, x, y = toy
    seeds = np.arange(len(x)) + 100
    ens = Ensemble(steps=10, square_queries=100)(model, x, y, epsilons=18 / 255, seed=seeds)
    np.testing.assert_array_equal(ens.success, ens.broken_by > 0)
    ce = P.LinfAPGD(steps=10)(model, x, y, epsilons=18 / 255, seed=(seeds * 7919 + 1) % (2**31 - 1))
    np.testing.assert_array_equal(ens.broken_by == 1, ce.success)  # APGD-CE ran first, on everything
    assert ens.success.sum() >= ce.success.sum()
    np.testing.assert_array_equal(model.logits(ens.adv).argmax(axis=1) != y, ens.success)


# ------------------------------------------------------------------------------ IBM ART


@pytest.mark.slow
def test_apgd_ce_breaks_every_image_arts_apgd_breaks(toy) -> None:
    """Same images, Linf 18/255, 100 iterations, one run, CE loss: ART 1.20's
    AutoProjectedGradientDescent (eager TensorFlow) against robustkit's compiled APGD-CE."""
    pytest.importorskip("art")
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    from robustkit._tf import tf

    model, x, y = toy
    eps = 18 / 255  # between the radius where nothing breaks (16) and where everything does (20)
    clf = TensorFlowV2Classifier(model=lambda t, training=False: model.logits_graph(t), nb_classes=model.num_classes,
                                 input_shape=model.input_shape, clip_values=(0.0, 1.0),
                                 loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        art = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100, nb_random_init=1,
                                           batch_size=len(x), loss_type="cross_entropy", verbose=False)
        ref = model.logits(art.generate(x=x, y=y)).argmax(axis=1) != y
    ours = P.LinfAPGD(steps=100)(model, x, y, epsilons=eps, seed=0)
    assert 0 < ref.sum() < len(x)  # a radius where the comparison means something
    assert not np.any(ref & ~ours.success), np.flatnonzero(ref & ~ours.success)
