"""The adversarial study on multi-label models: per finding, the budget that flips its call.

Known answers from a linear sigmoid model (the minimal Linf budget that moves ``z_f`` to
``logit(t_f)`` is ``|z_f - logit(t_f)| / ||w_f||_1`` when the box does not bind), batch
independence, and the fixtures audited end to end with the report section per finding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robustkit.data.loader import load_dataset
from robustkit.model.adapter import ModelAdapter
from robustkit.model.finding_attack import LinfFlipPGD, flip_attack, flip_sweep
from robustkit.report.render import render_report
from robustkit.runner import audit
from robustkit.studies import AuditContext
from robustkit.studies.adversarial import AdversarialStudy

NAMES = ["Consolidation", "Nodule", "Opacity"]
THRESHOLDS = np.array([0.5, 0.6, 0.35])


def _linear_adapter(w: np.ndarray, b: np.ndarray) -> ModelAdapter:
    """``sigmoid(flatten(x) @ w + b)`` on 32x32 grey images, as a multi-label adapter."""
    from robustkit._tf import keras

    inp = keras.Input((32, 32, 1))
    dense = keras.layers.Dense(len(b), activation="sigmoid")
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    dense.set_weights([w.astype(np.float32), b.astype(np.float32)])
    return ModelAdapter(model, class_names=NAMES, output="multilabel", thresholds=THRESHOLDS, batch_size=4)


def _weights(seed: int = 0) -> np.ndarray:
    """``(1024, 3)``: random signs and sizes, a different scale per finding."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], (1024, 3)) * rng.uniform(0.5, 1.5, (1024, 3)) * np.array([0.004, 0.008, 0.002])


def test_linear_model_flips_at_the_analytic_budget() -> None:
    rng = np.random.default_rng(1)
    w = _weights()
    x = (0.5 + 0.03 * rng.standard_normal((6, 32, 32, 1))).astype(np.float32)  # mid-grey: the box cannot bind
    cut = np.log(THRESHOLDS / (1 - THRESHOLDS))
    b = cut - np.median(x.reshape(6, -1) @ w, axis=0)  # about half the calls present, half absent
    adapter = _linear_adapter(w, b)
    z = x.reshape(6, -1).astype(np.float64) @ w + b
    called = 1 / (1 + np.exp(-z)) >= THRESHOLDS
    assert called.any(axis=0).all() and (~called).any(axis=0).all()  # both directions for every finding
    budget = np.abs(z - cut) / np.abs(w).sum(axis=0)  # (N, K), pixel units
    grid = np.arange(1, 25) * 0.5 / 255
    s = flip_sweep(flip_attack("linf", "pgd", steps=10), adapter, x, called, grid,
                   seeds=np.arange(18).reshape(6, 3))
    expected = np.array([grid[np.searchsorted(grid, v)] if v < grid[-1] else np.inf for v in budget.ravel()])
    near = np.min(np.abs(budget.ravel()[:, None] - grid[None, :]), axis=1) < 1e-3 * budget.ravel()
    assert near.sum() < 3, "choose another seed: budgets on grid points"
    found = s.min_eps.ravel()
    assert np.array_equal(found[~near], expected[~near]), (found * 255, budget.ravel() * 255)
    assert np.all(found >= budget.ravel() * (1 - 1e-3))  # never below the analytic budget
    assert np.isfinite(found).sum() >= 10
    # the flip goes the way the call says: present findings off, absent ones on
    flipped = np.isfinite(s.min_eps)
    assert np.all(s.adv_prob[flipped & called] < np.broadcast_to(THRESHOLDS, called.shape)[flipped & called])
    assert np.all(s.adv_prob[flipped & ~called] >= np.broadcast_to(THRESHOLDS, called.shape)[flipped & ~called])
    # non-decreasing flips along the radii, consistent with min_eps
    assert np.all(np.diff(s.flipped.astype(int), axis=2) >= 0)
    assert np.array_equal(s.flipped[:, :, -1], flipped)


@pytest.mark.parametrize(("norm", "kind"), [("linf", "apgd"), ("l2", "pgd")])
def test_other_norms_and_apgd_flip_at_the_analytic_budget(norm: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    w = _weights(1)
    x = (0.5 + 0.03 * rng.standard_normal((4, 32, 32, 1))).astype(np.float32)
    cut = np.log(THRESHOLDS / (1 - THRESHOLDS))
    b = cut - np.median(x.reshape(4, -1) @ w, axis=0)
    z = x.reshape(4, -1).astype(np.float64) @ w + b
    called = 1 / (1 + np.exp(-z)) >= THRESHOLDS
    dual = np.abs(w).sum(axis=0) if norm == "linf" else np.linalg.norm(w, axis=0)  # the dual norm of w_f
    budget = np.abs(z - cut) / dual
    grid = np.geomspace(budget.min() / 1.5, budget.max() * 1.5, 8)
    s = flip_sweep(flip_attack(norm, kind, steps=10), _linear_adapter(w, b), x, called, grid,
                   seeds=np.arange(12).reshape(4, 3))
    expected = grid[np.searchsorted(grid, budget)]
    tight = budget > expected / 1.02  # within 2% under a grid point: 10 steps need not reach the ball's edge
    assert tight.sum() <= 2
    assert np.array_equal(s.min_eps[~tight], expected[~tight]), (s.min_eps, budget)
    assert np.all(s.min_eps >= budget * (1 - 1e-3))  # never below the analytic budget


def test_flip_attacks_keep_the_base_contract() -> None:
    attack = LinfFlipPGD(steps=3)
    assert "loss='flip_margin'" in repr(attack)
    with pytest.raises(Exception, match="norm/kind"):
        flip_attack("l1", "pgd")


@pytest.fixture(scope="module")
def toy_linear(toy_multilabel: Path) -> tuple[ModelAdapter, object]:
    data = load_dataset(toy_multilabel)
    w = _weights(2) * 0.5
    x = data.load_images(range(len(data)), size=(32, 32), channels=1)
    b = np.log(THRESHOLDS / (1 - THRESHOLDS)) - np.median(x.reshape(len(x), -1) @ w, axis=0)
    return _linear_adapter(w, b), data


def test_batch_size_does_not_change_records(toy_linear) -> None:
    adapter, data = toy_linear
    overrides = {"epsilons_linf": [2 / 255, 8 / 255], "steps": 5, "max_samples": 14, "n_bootstrap": 20}
    runs = []
    for bs in (1, 7):
        study = AdversarialStudy.configure("quick", overrides)
        runs.append(study.execute(adapter, data, AuditContext(seed=4), batch_size=bs))
    a, b = runs
    assert set(a.records) == set(b.records) and "flipped_linf" in a.records
    for key in a.records:  # decisions and budgets exactly; probabilities up to float32 rounding of the batch shape
        if key == "flip_prob_linf":
            assert np.allclose(a.records[key], b.records[key], rtol=0, atol=1e-6, equal_nan=True)
        else:
            assert np.array_equal(a.records[key], b.records[key]), key
    assert a.metrics.keys() == b.metrics.keys()
    assert all(a.metrics[k] == b.metrics[k] or (np.isnan(a.metrics[k]) and np.isnan(b.metrics[k])) for k in a.metrics)
    assert a.records["flipped_linf"].any()  # the budgets flip some calls on this model


def test_audit_renders_the_findings_section(toy_multilabel: Path, toy_multilabel_model: Path, tmp_path: Path) -> None:
    result = audit(toy_multilabel_model, toy_multilabel, studies=["clean", "adversarial"], profile="quick",
                   out=tmp_path, config={"adversarial": {"max_samples": 16, "n_bootstrap": 50,
                                            "epsilons_linf": [2 / 255, 4 / 255, 32 / 255]}})
    s = result.studies["adversarial"]
    assert s.status == "ok", s.error
    for name in NAMES:
        for d in ("off", "on"):
            assert f"flip_{d}_rate.linf.2.{name}" in s.metrics
            assert f"min_budget_{d}.linf.median.{name}" in s.metrics
    assert s.direction("flip_off_rate.linf.2.macro") == "lower"
    assert s.direction("min_budget_on.linf.median") == "higher"
    assert "flip_on_rate.linf.4.macro" in s.intervals
    assert {c.name for c in s.checks} == {"flips nearly every call at a large epsilon", "FGSM vs PGD",
                                         "margin rises and flattens"}
    assert "robust_accuracy.linf.2" not in s.metrics  # no accuracy over an arg-max
    html = render_report(tmp_path).read_text()
    section = html[html.index('id="study-adversarial"'):]
    section = section[: section.index("</section>")]
    assert "Turning present findings off" in section and "Minimal flipping budgets" in section
    for name in NAMES:
        assert name in section
    with np.load(tmp_path / "records.npz") as rec:
        flipped, called = rec["adversarial/flipped_linf"], rec["adversarial/called"]
        min_eps = rec["adversarial/flip_min_eps_linf"].astype(np.float64) * 255
    assert flipped.shape == (16, 3, 3) and called.shape == (16, 3)
    _assert_rates_match_a_direct_count(s, flipped, called, min_eps)


def _assert_rates_match_a_direct_count(s, flipped: np.ndarray, called: np.ndarray, min_eps: np.ndarray) -> None:
    """Flip rates, their Wilson intervals, the macro means and the median budgets of the study
    against a count over the stored per-pair records (grid: 2, 4, 32 /255)."""
    z = 1.959964
    for j, eps in enumerate((2, 4, 32)):
        for d, among in (("off", called), ("on", ~called)):
            rates = []
            for f, name in enumerate(NAMES):
                n, k = int(among[:, f].sum()), int(flipped[among[:, f], f, j].sum())
                key = f"flip_{d}_rate.linf.{eps}.{name}"
                if n == 0:
                    assert np.isnan(s.metrics[key]) and key not in s.intervals
                    continue
                rates.append(k / n)
                assert s.metrics[key] == pytest.approx(k / n)
                centre, half = (k + z * z / 2) / (n + z * z), z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
                assert s.intervals[key] == pytest.approx([centre - half, centre + half], abs=1e-6)
            assert s.metrics[f"flip_{d}_rate.linf.{eps}.macro"] == pytest.approx(np.mean(rates))
    for d, among in (("off", called), ("on", ~called)):
        for f, name in enumerate(NAMES):
            values = np.sort(min_eps[among[:, f], f])
            expected = values[(len(values) - 1) // 2] if len(values) else np.nan  # the lower median
            assert s.metrics[f"min_budget_{d}.linf.median.{name}"] == pytest.approx(expected, nan_ok=True)
    assert 0 < called.sum() < called.size and flipped.any()  # both directions measured, some calls flipped
