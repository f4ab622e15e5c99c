"""FAB-T and the L2 Square attack: projections against scipy, known minimal perturbations, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from robustkit.errors import ConfigError
from robustkit.model.adapter import ModelAdapter
from robustkit.model.ensemble import ENSEMBLE_ATTACKS, Ensemble
from robustkit.model.fab import FAB, L2FAB, LinfFAB, hyperplane_projection
from robustkit.model.square import L2Square, square_pattern


@pytest.fixture(scope="module")
def toy(toy_arrays: tuple[ModelAdapter, np.ndarray, np.ndarray]) -> tuple[ModelAdapter, np.ndarray, np.ndarray]:
    return toy_arrays


def _linear(v: np.ndarray, size: int = 4) -> ModelAdapter:
    """Logits ``(v.x - sum(v) / 2 ... )``: classes 0 and 1 meet at mid-grey, class 2 out of reach."""
    from robustkit._tf import keras

    w, b = np.stack([v, -v, np.zeros_like(v)], axis=1), np.array([-v.sum(), 0.0, -10.0])
    inp = keras.Input((size, size, 1))
    dense = keras.layers.Dense(3, name="lin")
    net = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    dense.set_weights([w.astype(np.float32), b.astype(np.float32)])
    return ModelAdapter(net, batch_size=8)


# ------------------------------------------------------------------------------ projections


def _cases(seed: int, n: int = 12, d: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points in the box (some on its faces), hyperplanes (some weights zero) the box can reach."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (n, d))
    t[rng.uniform(size=(n, d)) < 0.15] = 0.0
    t[rng.uniform(size=(n, d)) < 0.15] = 1.0
    w = rng.standard_normal((n, d))
    w[rng.uniform(size=(n, d)) < 0.15] = 0.0
    b = np.sum(w * rng.uniform(0, 1, (n, d)), axis=1)  # through a point of the box: feasible
    return t, w, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linf_projection_equals_a_linear_program(seed: int) -> None:
    t, w, b = _cases(seed)
    d = hyperplane_projection(t, w, b, norm="linf")
    np.testing.assert_allclose(np.sum(w * (t + d), axis=1), b, atol=1e-9)
    assert np.all(t + d >= -1e-12) and np.all(t + d <= 1 + 1e-12)
    for i in range(len(t)):  # min lam s.t. |d_j| <= lam, w.d = b - w.t, -t <= d <= 1 - t
        k = t.shape[1]
        a_ub = np.block([[np.eye(k), -np.ones((k, 1))], [-np.eye(k), -np.ones((k, 1))]])
        lp = linprog(np.r_[np.zeros(k), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * k), A_eq=np.r_[w[i], 0.0][None],
                     b_eq=[b[i] - w[i] @ t[i]], bounds=[*zip(-t[i], 1 - t[i]), (0, None)], method="highs")
        assert lp.status == 0
        assert np.abs(d[i]).max() == pytest.approx(lp.fun, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l2_projection_equals_a_constrained_least_squares_solve(seed: int) -> None:
    t, w, b = _cases(seed)
    d = hyperplane_projection(t, w, b, norm="l2")
    for i in range(len(t)):
        ref = minimize(lambda v: v @ v, np.zeros(t.shape[1]), jac=lambda v: 2 * v, method="SLSQP",
                       bounds=list(zip(-t[i], 1 - t[i])), options={"ftol": 1e-15, "maxiter": 500},
                       constraints=[{"type": "eq", "fun": lambda v, i=i: w[i] @ (t[i] + v) - b[i],
                                     "jac": lambda v, i=i: w[i]}])
        assert ref.success
        np.testing.assert_allclose(d[i], ref.x, atol=1e-6)  # the minimiser is unique (strictly convex)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_without_a_binding_box_is_the_closed_form_and_unreachable_planes_are_unconstrained(
        norm: str) -> None:
    rng = np.random.default_rng(3)
    t, w = np.full((5, 8), 0.5), rng.standard_normal((5, 8))
    b = np.sum(w * t, axis=1) + 0.05 * rng.choice([-1, 1], 5)
    dual = np.abs(w).sum(axis=1) if norm == "linf" else np.sum(w**2, axis=1)
    direction = np.sign(w) if norm == "linf" else w
    closed = direction * ((b - np.sum(w * t, axis=1)) / dual)[:, None]
    np.testing.assert_allclose(hyperplane_projection(t, w, b, norm=norm), closed, atol=1e-12)
    far = np.sum(w * t, axis=1) + 100.0  # beyond any corner of the box
    d = hyperplane_projection(t, w, far, norm=norm)
    np.testing.assert_allclose(d, direction * (100.0 / dual)[:, None], rtol=1e-12)


# ------------------------------------------------------------------------------ FAB-T


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_known_minimal_perturbation_of_a_linear_model(norm: str) -> None:
    """The smallest perturbation flipping ``x0`` between the first two classes is
    ``|2 v.x0 - sum(v)| / ||2 v||_dual`` while the box does not bind (as the APGD test):
    FAB-T's smallest one lies within 1.05x of it; at a fixed radius it breaks every sample at
    1.05x the minimum and none at 0.95x."""
    rng = np.random.default_rng(2)
    v = rng.standard_normal(16) * 0.5
    model = _linear(v)
    x = (0.5 + rng.uniform(-0.05, 0.05, (6, 4, 4, 1))).astype(np.float32)
    y = model.logits(x).argmax(axis=1)
    minimal = np.abs(2 * x.reshape(6, -1).astype(np.float64) @ v - v.sum()) / np.linalg.norm(
        2 * v, 1 if norm == "linf" else 2)
    cls = LinfFAB if norm == "linf" else L2FAB
    found = cls(steps=10).minimal_perturbation(model, x, y)
    size = found.linf if norm == "linf" else found.l2
    assert found.success.all()
    assert np.all(size <= 1.05 * minimal) and np.all(size >= minimal * (1 - 1e-4)), size / minimal
    np.testing.assert_array_equal(model.logits(found.adv).argmax(axis=1) != y, True)
    assert cls(steps=10)(model, x, y, epsilons=1.05 * minimal, seed=0).success.all()
    assert not cls(steps=10)(model, x, y, epsilons=0.95 * minimal, seed=0).success.any()


def test_fab_outcome_of_a_sample_does_not_depend_on_its_batch(toy) -> None:
    model, x, y = toy
    seeds = np.arange(12) * 13 + 1
    attack = L2FAB(steps=8, restarts=2, n_target_classes=2)
    whole = attack(model, x[:12], y[:12], epsilons=1.55, seed=seeds)
    part = attack(model, x[3:8], y[3:8], epsilons=1.55, seed=seeds[3:8])
    np.testing.assert_array_equal(whole.success[3:8], part.success)
    np.testing.assert_allclose(whole.adv[3:8], part.adv, atol=1e-5)
    np.testing.assert_array_equal(whole.evals[3:8], part.evals)
    assert 0 < whole.success.sum() < 12  # a radius where the comparison means something


def test_fab_counts_a_sample_broken_only_within_the_radius(toy) -> None:
    model, x, y = toy
    out = LinfFAB(steps=10, n_target_classes=2)(model, x[:12], y[:12], epsilons=19 / 255, seed=0)
    delta = np.abs(out.adv - x[:12]).reshape(12, -1).max(axis=1)
    pred = model.logits(out.adv).argmax(axis=1)
    np.testing.assert_array_equal(out.success, pred != y[:12])
    assert np.all(delta <= 19 / 255 + 1e-6)  # an unbroken sample returns its image, not a find outside the ball
    assert 0 < out.success.sum() < 12 and out.adv.min() >= 0 and out.adv.max() <= 1
    assert out.gradient_evals == out.evals.sum() > 0


def test_fab_options_are_checked() -> None:
    for bad in ({"steps": 0}, {"restarts": 0}, {"eta": 0.5}, {"beta": 0}, {"alpha_max": 2}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            LinfFAB(**bad)
    assert repr(L2FAB(steps=3)).startswith("L2FAB(steps=3, restarts=1")
    assert issubclass(LinfFAB, FAB)


# ------------------------------------------------------------------------------ Square L2


def test_square_pattern_is_two_opposite_ring_halves_of_unit_norm() -> None:
    p = square_pattern(7)
    assert np.linalg.norm(p) == pytest.approx(1.0)
    assert np.all(p[:3] > 0) and np.all(p[3:] < 0)
    assert p[1, 3] > p[0, 3] and p[1, 3] > p[1, 0]  # heaviest at the centre of its half
    np.testing.assert_allclose(square_pattern(7, transpose=True), p.T)


def test_l2_square_breaks_samples_within_the_l2_ball(toy) -> None:
    model, x, y = toy
    eps = 4.0  # about 2.6x the smallest L2 perturbations FAB-T and APGD find on it (~1.5)
    out = L2Square(queries=200)(model, x, y, epsilons=eps, seed=np.arange(len(x)))
    size = np.linalg.norm((out.adv - x).reshape(len(x), -1).astype(np.float64), axis=1)
    assert np.all(size <= eps + 1e-5) and out.adv.min() >= 0 and out.adv.max() <= 1
    np.testing.assert_array_equal(model.logits(out.adv).argmax(axis=1) != y, out.success)
    rng = np.random.default_rng(0)  # the same budget spent on one random direction breaks less
    noise = rng.standard_normal(x.shape)
    noise = np.clip(x + eps * noise / np.linalg.norm(noise.reshape(len(x), -1), axis=1)[:, None, None, None], 0, 1)
    assert out.success.mean() > 0.9 > 0.1 > np.mean(model.logits(noise.astype(np.float32)).argmax(axis=1) != y)


def test_l2_square_outcome_of_a_sample_does_not_depend_on_its_batch(toy) -> None:
    model, x, y = toy
    seeds = np.arange(12) * 7 + 3
    whole = L2Square(queries=60)(model, x[:12], y[:12], epsilons=1.0, seed=seeds)
    part = L2Square(queries=60)(model, x[5:9], y[5:9], epsilons=1.0, seed=seeds[5:9])
    np.testing.assert_array_equal(whole.adv[5:9], part.adv)
    np.testing.assert_array_equal(whole.evals[5:9], part.evals)


# ------------------------------------------------------------------------------ the ensemble


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ensemble_with_fab_and_square_is_the_per_sample_worst_case(toy, norm: str) -> None:
    """Each attack runs on the survivors of the earlier ones, with the seeds the ensemble
    derives; run by hand in that order, they break exactly what the ensemble says each broke."""
    model, x, y = toy
    eps = 20 / 255 if norm == "linf" else 1.6  # one APGD step leaves work for FAB-T and Square
    seeds = np.arange(len(x)) + 100
    ensemble = Ensemble(norm=norm, steps=1, fab_steps=10, square_queries=40)
    out = ensemble(model, x, y, epsilons=eps, seed=seeds)
    names = [name for name, _ in ensemble.attacks(model.num_classes)]
    assert names == ["apgd_ce", "apgd_dlr", "fab_t", "square"]
    todo = np.arange(len(x))
    for name, attack in ensemble.attacks(model.num_classes):
        code = ENSEMBLE_ATTACKS.index(name) + 1
        res = attack(model, x[todo], y[todo], epsilons=eps, seed=(seeds[todo] * 7919 + code) % (2**31 - 1))
        np.testing.assert_array_equal(out.broken_by[todo] == code, res.success, err_msg=name)
        todo = todo[~res.success]
    np.testing.assert_array_equal(out.success, out.broken_by > 0)
    assert np.all(out.broken_by[todo] == 0) and todo.size > 0 and np.any(out.broken_by == 3)  # FAB-T broke some
    size = np.abs(out.adv - x).reshape(len(x), -1).max(axis=1) if norm == "linf" else np.linalg.norm(
        (out.adv - x).reshape(len(x), -1), axis=1)
    assert np.all(size[out.success] <= eps * (1 + 1e-5))
    np.testing.assert_array_equal(model.logits(out.adv).argmax(axis=1) != y, out.success)


@pytest.mark.parametrize(("k", "fab_steps", "square", "expected"), [
    (2, 10, 100, ["apgd_ce", "fab_t", "square"]),  # APGD-DLR needs three classes
    (3, 10, 0, ["apgd_ce", "apgd_dlr", "fab_t"]),
    (4, 0, 100, ["apgd_ce", "apgd_dlr", "square"]),
    (10, 100, 5000, ["apgd_ce", "apgd_dlr", "fab_t", "square"]),  # AutoAttack's standard order
])
def test_the_ensemble_plan_the_reduce_reads_is_what_runs(k: int, fab_steps: int, square: int,
                                                         expected: list[str]) -> None:
    """The pure plan (read by the study's reduce, which never builds an attack) names the attacks
    the ensemble builds, in AutoAttack's order."""
    from robustkit.metrics.sweep import ensemble_plan

    assert ensemble_plan(k, fab_steps=fab_steps, square_queries=square) == expected
    ran = [name for name, _ in Ensemble(norm="linf", fab_steps=fab_steps, square_queries=square).attacks(k)]
    assert ran == expected
