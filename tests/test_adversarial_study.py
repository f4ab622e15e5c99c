"""The adversarial study on the toy fixtures: names, records, determinism, config, checks, report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robustkit.data.loader import load_dataset
from robustkit.errors import ConfigError
from robustkit.model.adapter import ModelAdapter, load_model
from robustkit.runner import audit
from robustkit.studies import AuditContext
from robustkit.studies.adversarial import AdversarialConfig, AdversarialStudy, eps_name

OVERRIDES = {
    "epsilons_linf": [24 / 255, 8 / 255, 16 / 255],  # unsorted on purpose
    "epsilons_l2": [1.0, 2.0],
    "steps": 6,
    "apgd_steps": 6,
    "fab_steps": 5,
    "square_queries": 30,
    "max_samples": 24,
    "n_bootstrap": 50,
    "check_samples": 8,
}


@pytest.fixture(scope="module")
def result(toy_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("adv")
    return audit(toy_model, toy_data, studies=["adversarial"], seed=3, out=out,
                 config={"critical_class": "COVID-19", "adversarial": OVERRIDES})


def test_metric_names_and_directions(result) -> None:
    s = result.studies["adversarial"]
    assert s.status == "ok", s.error
    for e in ("8", "16", "24"):
        assert f"robust_accuracy.linf.{e}" in s.metrics
        assert f"attack_success_rate.linf.{e}" in s.metrics
        assert f"critical_miss_rate.linf.{e}" in s.metrics
        assert f"robust_accuracy.linf.{e}" in s.intervals
    for e in ("1", "2"):
        assert f"robust_accuracy.l2.{e}" in s.metrics
    for q in ("median", "q25", "q75", "median.COVID-19"):
        assert f"min_perturbation.linf.{q}" in s.metrics
    assert s.direction("robust_accuracy.linf.8") == "higher"
    assert s.direction("attack_success_rate.l2.1") == "lower"
    assert s.direction("min_perturbation.linf.median") == "higher"
    assert {c.name for c in s.checks} >= {"near zero at a large epsilon", "steps and restarts",
                                         "loss rises and flattens", "gradients finite and non-zero",
                                         "deterministic predictions", "FGSM vs PGD",
                                         "ensemble not above any single attack",
                                         "Square breaks nothing the gradient attacks could not"}
    for name in ("apgd_ce.linf.8", "apgd_dlr.linf.24", "fab_t.linf.16", "square.linf.16", "apgd_ce.l2.1",
                 "apgd_dlr.l2.2", "fab_t.l2.1", "square.l2.2"):
        assert f"robust_accuracy.{name}" in s.metrics
        assert s.direction(f"robust_accuracy.{name}") == "higher"
    assert s.direction("square_only_rate.linf") == s.direction("square_only_rate.l2") == "lower"
    every = ["APGD-CE", "APGD-DLR", "FAB-T", "Square"]
    assert s.data["attack"]["attacks"] == {"linf": every, "l2": every}
    assert s.data["attack"]["fab_steps"] == 5


def test_ensemble_metrics_are_the_running_worst_case(result) -> None:
    s = result.studies["adversarial"]
    correct, names = s.records["correct"], s.data["correct_metrics"]
    attacks = ("apgd_ce.", "apgd_dlr.", "fab_t.", "square.", "")
    for norm, grid in (("linf", ("8", "16", "24")), ("l2", ("1", "2"))):
        by = s.records[f"broken_by_{norm}"]
        min_eps = s.records[f"min_eps_{norm}"]
        for e in grid:
            cols = [correct[:, names.index(f"robust_accuracy.{a}{norm}.{e}")] for a in attacks]
            within = min_eps <= float(e) / (255 if norm == "linf" else 1) * (1 + 1e-6)
            for code, (before, after) in enumerate(zip(cols, cols[1:4]), start=2):  # codes: 1 APGD-CE ... 4 Square
                assert np.all(after <= before)  # each attack only removes images
                np.testing.assert_array_equal(before & ~after, (by == code) & within)
            np.testing.assert_array_equal(cols[3], cols[4])  # after Square: the ensemble itself
        clean_ok = min_eps > 0
        np.testing.assert_array_equal(by > 0, clean_ok & np.isfinite(min_eps))
        assert s.metrics[f"square_only_rate.{norm}"] == pytest.approx(np.mean(by[clean_ok] == 4))


def test_records_agree_with_metrics(result) -> None:
    s = result.studies["adversarial"]
    rec = s.records
    correct, names = rec["correct"], s.data["correct_metrics"]
    assert correct.dtype == bool and correct.shape == (24, len(names))
    for j, name in enumerate(names):
        assert s.metrics[name] == pytest.approx(correct[:, j].mean())
    linf = [names.index(f"robust_accuracy.linf.{e}") for e in ("8", "16", "24")]
    assert np.all(np.diff(correct[:, linf].astype(int), axis=1) <= 0)  # non-increasing in epsilon
    clean_ok = rec["min_eps_linf"] > 0
    assert np.all(correct[:, linf[0]] <= clean_ok)  # robust accuracy <= clean accuracy
    for j, eps in zip(linf, (8 / 255, 16 / 255, 24 / 255)):
        np.testing.assert_array_equal(correct[:, j], rec["min_eps_linf"] > eps * (1 + 1e-6))
    median = np.quantile(rec["min_eps_linf"] * 255, 0.5, method="lower")
    assert s.metrics["min_perturbation.linf.median"] == pytest.approx(median, rel=1e-5)
    assert rec["adv_pred_linf"].shape == (24, 3)


def test_same_seed_same_numbers(result, toy_model: Path, toy_data: Path) -> None:
    again = audit(toy_model, toy_data, studies=["adversarial"], seed=3, config={"adversarial": OVERRIDES},
                  critical_class="COVID-19")
    a, b = result.studies["adversarial"], again.studies["adversarial"]
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.records["correct"], b.records["correct"])


def test_report_section_renders(result) -> None:
    from robustkit.report.views import build_view

    ctx, error = build_view(result.studies["adversarial"], result)
    assert error is None
    assert len(ctx["figures"]) == 4  # Linf and L2 curves, Linf and L2 histograms
    assert all(f["svg"].startswith("<svg") for f in ctx["figures"])
    assert ctx["attack"].startswith("Attack: the AutoAttack-style ensemble (Linf: APGD-CE -> APGD-DLR -> FAB-T -> "
                                    "Square; L2: APGD-CE -> APGD-DLR -> FAB-T -> Square)")
    assert "FAB-T 5 iterations per target class" in ctx["attack"]
    for norm in ("linf", "l2"):
        curve = result.studies["adversarial"].data["curves"][norm]
        assert curve["label"] == "ensemble" and list(curve["attacks"]) == ["APGD-CE", "APGD-DLR", "FAB-T", "Square"]
        assert curve["attacks"]["Square"] == curve["pgd"]  # the last attack's running value is the ensemble's
    assert "'+ FAB-T'" in ctx["figures"][0]["caption"] and "adds Square" in ctx["figures"][0]["caption"]


def test_curve_figure_draws_each_attack(monkeypatch) -> None:
    from robustkit.report import view_adversarial

    drawn = {}
    monkeypatch.setattr(view_adversarial.figures, "line_chart_svg",
                        lambda series, **kw: drawn.update(series) or "<svg/>")
    curve = {"epsilons": [1, 2], "pgd": [0.3, 0.1], "low": [0.2, 0.0], "high": [0.4, 0.2], "label": "ensemble",
             "attacks": {"APGD-CE": [0.5, 0.3], "APGD-DLR": [0.4, 0.2], "FAB-T": [0.35, 0.1], "Square": [0.3, 0.1]},
             "fgsm": [0.6, 0.5]}
    view_adversarial._curve_figure("linf", curve, 0.9)
    assert list(drawn) == ["ensemble (worst case)", "after APGD-CE", "+ APGD-DLR", "+ FAB-T", "FGSM"]
    assert drawn["+ FAB-T"][1] == [0.9, 0.35, 0.1]
    assert drawn["after APGD-CE"][1] == [0.9, 0.5, 0.3]


def test_config_validation() -> None:
    cfg = AdversarialConfig(epsilons_linf=2 / 255)
    assert cfg.epsilons_linf == (2 / 255,)
    for bad in ({"epsilons_linf": [-1 / 255]}, {"epsilons_l2": 0}, {"norms": ["l1"]}, {"loss": "hinge"},
                {"target_class": "NORMAL"}, {"steps": 0}, {"foolbox_attacks": ["fgsm"]}, {"epsilons_linf": "8/255"},
                {"attack": "autoattack"}, {"targeted": True}, {"apgd_steps": 0}, {"square_queries": -1},
                {"fab_steps": -1}, {"fab_steps": 2.5}):
        with pytest.raises(ConfigError):
            AdversarialStudy.configure("standard", bad)
    assert eps_name("linf", 0.5 / 255) == "0.5" and eps_name("linf", 8 / 255) == "8" and eps_name("l2", 0.25) == "0.25"


def _masking_model():
    """A model that rounds its input to 4 grey levels first: every input gradient is zero."""
    from robustkit._tf import keras
    from tests.conftest import build_toy_model

    trunk = build_toy_model()
    inp = keras.Input((32, 32, 1))
    rounded = keras.layers.Lambda(lambda t: keras.ops.round(t * 4) / 4)(inp)
    return keras.Model(inp, trunk(rounded))


def test_gradient_masking_fires_the_checks(toy_data: Path) -> None:
    model = ModelAdapter(_masking_model(), class_names=["COVID-19", "NORMAL", "Viral Pneumonia"])
    data = load_dataset(toy_data)
    study = AdversarialStudy.configure("quick", {"max_samples": 12, "n_bootstrap": 20, "check_samples": 6})
    res = study.execute(model, data, AuditContext(seed=0))
    checks = {c.name: c for c in res.checks}
    assert checks["gradients finite and non-zero"].status == "warn"  # finite, but all zero: masking
    assert "masking" in checks["gradients finite and non-zero"].detail
    assert checks["near zero at a large epsilon"].status == "fail"


def test_square_finds_what_masked_gradients_hide(toy_data: Path) -> None:
    """On the rounding model every input gradient is zero, so APGD cannot move; the gradient-free
    Square attack still breaks images, and the check says so."""
    model = ModelAdapter(_masking_model(), class_names=["COVID-19", "NORMAL", "Viral Pneumonia"])
    data = load_dataset(toy_data)
    study = AdversarialStudy.configure("standard", {
        "max_samples": 12, "n_bootstrap": 20, "check_samples": 4, "norms": ["linf"], "fgsm": False,
        "epsilons_linf": [24 / 255, 48 / 255], "apgd_steps": 5, "square_queries": 100})
    res = study.execute(model, data, AuditContext(seed=0))
    checks = {c.name: c for c in res.checks}
    assert res.metrics["square_only_rate.linf"] > 0
    assert checks["Square breaks nothing the gradient attacks could not"].status == "warn"
    assert "masking" in checks["Square breaks nothing the gradient attacks could not"].detail
    assert res.metrics["robust_accuracy.linf.48"] < res.metrics["robust_accuracy.apgd_dlr.linf.48"]
    # FAB-T linearises a zero gradient: it cannot move either
    assert res.metrics["robust_accuracy.fab_t.linf.48"] == res.metrics["robust_accuracy.apgd_dlr.linf.48"]


def test_foolbox_attacks_and_black_box_check(toy_model: Path, toy_data: Path) -> None:
    model, data = load_model(toy_model), load_dataset(toy_data)
    study = AdversarialStudy.configure("quick", {
        "max_samples": 12, "n_bootstrap": 20, "check_samples": 4, "epsilons_linf": [16 / 255, 24 / 255],
        "foolbox_attacks": ["deepfool", "hop_skip_jump"], "foolbox_samples": 4,
    })
    res = study.execute(model, data, AuditContext(seed=0))
    for name in ("deepfool", "hop_skip_jump"):
        assert 0 < res.metrics[f"foolbox.{name}.median_l2"] < np.inf
        assert res.direction(f"foolbox.{name}.success_rate") == "lower"
    assert {c.name for c in res.checks} >= {"black-box never beats white-box", "minimum-norm attacks vs PGD"}
    assert [r["attack"] for r in res.tables["foolbox"]][:2] == ["deepfool", "hop_skip_jump"]
