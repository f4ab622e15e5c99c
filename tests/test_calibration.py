"""Calibration metrics against independent computations, and the calibration study end to end."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import robustkit.data
from robustkit.errors import ConfigError
from robustkit.metrics import calibration as CM
from robustkit.metrics import selective as SEL
from robustkit.metrics.temperature import fit_temperature
from robustkit.results import AuditResult
from robustkit.studies import AuditContext, get_study
from robustkit.studies.calibration import CalibrationStudy
from robustkit.task import Task

SCHEMA = json.loads((Path(robustkit.__file__).parent / "schema" / "results.schema.json").read_text())


# ---------------------------------------------------------------- slow reference loops


def _slow_equal_width(conf: list[float], hit: list[float], n_bins: int) -> tuple[float, float]:
    """ECE and MCE by looping over bins (e_m, e_{m+1}], the first bin closed at 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total, worst = 0.0, 0.0
    for m in range(n_bins):
        members = [i for i, c in enumerate(conf)
                   if edges[m] < c <= edges[m + 1] or (m == 0 and c == 0.0)]
        if not members:
            continue
        acc = sum(hit[i] for i in members) / len(members)
        mean_conf = sum(conf[i] for i in members) / len(members)
        total += len(members) / len(conf) * abs(acc - mean_conf)
        worst = max(worst, abs(acc - mean_conf))
    return total, worst


def _slow_equal_mass(conf: list[float], hit: list[float], n_bins: int) -> float:
    order = sorted(range(len(conf)), key=lambda i: (conf[i], i))
    total, start = 0.0, 0
    for b in range(n_bins):
        size = len(conf) // n_bins + (1 if b < len(conf) % n_bins else 0)
        members = order[start : start + size]
        start += size
        if members:
            gap = sum(hit[i] for i in members) / len(members) - sum(conf[i] for i in members) / len(members)
            total += len(members) / len(conf) * abs(gap)
    return total


def _binary(conf: list[float], correct: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Two-class probabilities whose top label is class 0 with confidence ``conf``."""
    c = np.asarray(conf, dtype=np.float64)
    return np.stack([c, 1 - c], axis=1), np.where(np.asarray(correct) == 1, 0, 1)


# ---------------------------------------------------------------- binned calibration errors


def test_ece_and_mce_known_answer_with_confidence_one_an_edge_and_empty_bins() -> None:
    # 5 bins; 1.0 goes in the last bin, 0.6 (an inner edge) in (0.4, 0.6]; bins 0, 1, 3 are empty.
    probs, y = _binary([1.0, 1.0, 0.6, 0.6, 0.55], [1, 0, 1, 0, 0])
    assert CM.ece(probs, y, n_bins=5) == pytest.approx(0.4 * 0.5 + 0.6 * abs(1 / 3 - 1.75 / 3))
    assert CM.ece(probs, y, n_bins=5) == pytest.approx(0.35)
    assert CM.mce(probs, y, n_bins=5) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
def test_ece_and_mce_match_a_slow_loop(seed: int, n_bins: int) -> None:
    rng = np.random.default_rng(seed)
    conf = np.round(rng.uniform(0.5, 1.0, 60), 2)  # rounding puts many on bin edges
    conf[:3] = [1.0, 0.5, 0.6]
    correct = (rng.uniform(size=60) < conf).astype(int)
    probs, y = _binary(conf.tolist(), correct.tolist())
    slow_ece, slow_mce = _slow_equal_width(conf.tolist(), correct.tolist(), n_bins)
    assert CM.ece(probs, y, n_bins=n_bins) == pytest.approx(slow_ece, abs=1e-12)
    assert CM.mce(probs, y, n_bins=n_bins) == pytest.approx(slow_mce, abs=1e-12)
    assert CM.ece_equal_mass(probs, y, n_bins=n_bins) == pytest.approx(
        _slow_equal_mass(conf.tolist(), correct.tolist(), n_bins), abs=1e-12)


def test_bin_assignment_of_zero_edges_and_one() -> None:
    edges = np.linspace(0, 1, 16)
    conf = np.array([0.0, edges[1], edges[1] + 1e-12, edges[7], 1.0])
    assert CM.equal_width_bins(conf, 15).tolist() == [0, 0, 1, 6, 14]
    assert CM.equal_mass_bins(np.array([0.3, 0.1, 0.2, 0.9, 0.5]), 2).tolist() == [0, 0, 0, 1, 1]  # sizes 3, 2
    assert CM.equal_mass_bins(np.array([0.3, 0.1]), 4).tolist() == [1, 0]  # more bins than samples


def test_classwise_ece_matches_a_loop_with_zero_and_one_probabilities() -> None:
    rng = np.random.default_rng(3)
    p = rng.dirichlet([1, 1, 1], size=80)
    p[0], p[1] = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]  # exact zeros land in the first bin
    y = rng.integers(0, 3, size=80)
    sce = np.mean([_slow_equal_width(p[:, k].tolist(), (y == k).astype(float).tolist(), 10)[0] for k in range(3)])
    ace = np.mean([_slow_equal_mass(p[:, k].tolist(), (y == k).astype(float).tolist(), 10) for k in range(3)])
    assert CM.classwise_ece(p, y, n_bins=10) == pytest.approx(sce, abs=1e-12)
    assert CM.classwise_ece_adaptive(p, y, n_bins=10) == pytest.approx(ace, abs=1e-12)


def test_debiased_l2_matches_its_formula_and_removes_the_bias_on_calibrated_data() -> None:
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.5, 1.0, 3000)
    correct = (rng.uniform(size=3000) < conf).astype(int)  # calibrated by construction
    probs, y = _binary(conf.tolist(), correct.tolist())
    order = np.argsort(conf, kind="mergesort")
    plug, debiased = 0.0, 0.0
    for part in np.array_split(order, 15):
        a, c = correct[part].mean(), conf[part].mean()
        plug += len(part) / 3000 * (a - c) ** 2
        debiased += len(part) / 3000 * ((a - c) ** 2 - a * (1 - a) / (len(part) - 1))
    assert CM.debiased_l2_ce(probs, y, n_bins=15) == pytest.approx(np.sqrt(max(debiased, 0.0)), abs=1e-12)
    assert CM.debiased_l2_ce(probs, y, n_bins=15) < np.sqrt(plug)  # the plug-in is biased upward
    overconfident, _ = _binary(np.minimum(conf + 0.15, 1.0).tolist(), correct.tolist())
    assert CM.debiased_l2_ce(overconfident, y, n_bins=15) > 0.1


# ---------------------------------------------------------------- proper scores


def test_brier_and_nll_match_scikit_learn() -> None:
    from sklearn.metrics import brier_score_loss, log_loss

    rng = np.random.default_rng(5)
    p = rng.dirichlet([2, 2, 2], size=50)
    y = rng.integers(0, 3, size=50)
    per_class = sum(brier_score_loss(y == k, p[:, k]) for k in range(3))
    assert CM.brier(p, y) == pytest.approx(per_class, abs=1e-12)
    assert CM.nll(p, y) == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), abs=1e-12)
    assert CM.brier(np.eye(3)[(y + 1) % 3], y) == pytest.approx(2.0)  # all wrong and certain
    logits = rng.normal(size=(50, 3))
    assert CM.sample_nll(logits, y).mean() == pytest.approx(log_loss(y, CM.softmax(logits), labels=[0, 1, 2]))


# ---------------------------------------------------------------- temperature scaling


@pytest.mark.parametrize("true_t", [2.5, 0.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(6)
    z = rng.normal(scale=2.0, size=(20000, 3))
    p = CM.softmax(z)
    y = (rng.uniform(size=(20000, 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # labels ~ softmax(z): calibrated
    fit = fit_temperature(z * true_t, y)  # logits made over- (T > 1) or under-confident (T < 1)
    assert fit.temperature == pytest.approx(true_t, rel=0.04)
    assert abs(fit.grad_log_t) < 1e-6 and not fit.at_bound
    assert fit.nll_after < fit.nll_before
    eps = 1e-4  # the gradient is the derivative of the NLL in log T
    up = CM.sample_nll(z * true_t, y, fit.temperature * np.exp(eps)).mean()
    down = CM.sample_nll(z * true_t, y, fit.temperature * np.exp(-eps)).mean()
    assert (up - down) / (2 * eps) == pytest.approx(fit.grad_log_t, abs=1e-6)


def test_temperature_on_separable_data_shrinks_towards_zero() -> None:
    z = np.array([[3.0, 0.0], [0.0, 3.0]])  # every sample right: the NLL falls as T shrinks
    fit = fit_temperature(z, np.array([0, 1]))
    assert fit.temperature < 0.05 and fit.nll_after < 1e-12 < fit.nll_before


# ---------------------------------------------------------------- selective prediction


def test_aurc_and_e_aurc_match_a_direct_computation() -> None:
    rng = np.random.default_rng(7)
    conf = rng.uniform(size=200)
    correct = rng.uniform(size=200) < conf
    order = np.argsort(-conf)
    risks = [np.mean(~correct[order[: k + 1]]) for k in range(200)]
    assert SEL.aurc(conf, correct) == pytest.approx(np.mean(risks), abs=1e-12)
    ideal = np.r_[np.zeros(correct.sum()), np.ones((~correct).sum())]  # errors ranked last
    optimal = np.mean([ideal[: k + 1].mean() for k in range(200)])
    assert SEL.e_aurc(conf, correct) == pytest.approx(np.mean(risks) - optimal, abs=1e-12)
    r = 1 - correct.mean()
    assert optimal == pytest.approx(r + (1 - r) * np.log(1 - r), abs=0.01)  # Geifman's closed form


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2, 1.0])
def test_coverage_at_risk_and_sensitivity_match_a_loop(target: float) -> None:
    rng = np.random.default_rng(8)
    conf = np.round(rng.uniform(0.3, 1.0, 150), 1)  # many ties: kept or referred together
    y = rng.integers(0, 3, size=150)
    pred = np.where(rng.uniform(size=150) < conf, y, (y + 1) % 3)
    correct = pred == y
    best, best_t = 0.0, np.inf
    for t in np.unique(conf):
        kept = conf >= t
        if np.mean(~correct[kept]) <= target and kept.mean() > best:
            best, best_t = kept.mean(), t
    cov, thr = SEL.coverage_at_risk(conf, correct, target)
    assert cov == pytest.approx(best) and thr == best_t
    kept_pos = (conf >= best_t) & (y == 0)
    expected = np.mean(pred[kept_pos] == 0) if kept_pos.any() else np.nan
    np.testing.assert_equal(SEL.selective_sensitivity(conf, y, pred, 0, thr), expected)


def test_referral_keeps_the_most_confident() -> None:
    conf = np.array([0.9, 0.5, 0.8, 0.6, 0.99])
    y = np.array([0, 0, 1, 0, 0])
    pred = np.array([0, 1, 1, 1, 0])
    out = SEL.referral(conf, y, pred, 0, 0.4)  # refer 2: the 0.5 and the 0.6
    assert out["n_referred"] == 2 and out["n_kept"] == 3
    assert out["error"] == 0.0 and out["sensitivity"] == 1.0 and out["threshold"] == 0.8


def test_wilson_interval_known_value() -> None:
    lo, hi = CM.wilson_interval(np.array([8, 0]), np.array([10, 0]))
    assert lo[0] == pytest.approx(0.4902, abs=1e-4) and hi[0] == pytest.approx(0.9433, abs=1e-4)
    assert np.isnan(lo[1])


# ---------------------------------------------------------------- the study


def _adapter_and_data(toy_model: Path, toy_data: Path):
    from robustkit.data.loader import load_dataset
    from robustkit.model.adapter import load_model

    model = load_model(toy_model)
    return model, load_dataset(toy_data).with_class_order(model.class_names)


@pytest.fixture(scope="module")
def toy(toy_model: Path, toy_data: Path):
    return _adapter_and_data(toy_model, toy_data)


def _run(toy, seed: int = 0, critical: str | None = "COVID-19", **overrides):
    model, data = toy
    study = CalibrationStudy.configure("quick", {"n_bootstrap": 50, **overrides})
    task = Task(names=tuple(data.class_names), critical=critical)
    return study.execute(model, data, AuditContext(seed=seed, task=task))


@pytest.fixture(scope="module")
def result(toy):
    return _run(toy)


def test_study_metric_schema_and_estimators(result) -> None:
    m = result.metrics
    for name in ("ece", "ece_equal_mass", "mce", "classwise_ece", "classwise_ece_adaptive", "debiased_l2_ce",
                 "brier", "nll"):
        assert name in m and name + "_ts" in m and name in result.intervals
        assert result.data["estimators"][name]["n_bins"] in (15, None)
        assert set(result.data["estimators"][name]) == {"estimator", "n_bins", "binning", "reference"}
    for name in ("temperature", "accuracy", "aurc", "e_aurc", "coverage_at_risk.0.01", "coverage_at_risk.0.05",
                 "sensitivity_at_risk.COVID-19.0.05", "n_calibration", "n_evaluation"):
        assert name in m
    for t in ("gaussian", "gaussian_blur"):
        for s in (1, 3, 5):
            for k in ("ece", "ece_ts", "brier", "accuracy"):
                assert f"{k}.{t}.{s}" in m
    assert result.direction("ece_ts.gaussian.3") == "lower"
    assert result.direction("coverage_at_risk.0.05") == "higher"
    assert 0 <= m["brier"] <= 2 and m["temperature"] > 0
    export = result.data["temperature_export"]
    assert export["temperature"] == m["temperature"] and export["applies_to"] == "logits"
    assert export["fitted_on"] == m["n_calibration"]
    assert {c.name for c in result.checks} >= {"temperature fit", "ECE precision", "temperature scaling helps",
                                                 "over-confidence under shift"}
    stored = json.loads(json.dumps(result.to_json(), allow_nan=False))
    jsonschema.validate(stored, {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/study"})


def test_study_split_is_disjoint_stratified_and_metrics_use_only_evaluation(result, toy) -> None:
    model, data = toy
    split = result.records["split"]
    y = np.asarray(data.labels)[result.records["index"]]
    assert set(np.unique(split)) == {0, 1}
    assert result.metrics["n_calibration"] == (split == 0).sum()
    assert result.metrics["n_evaluation"] == (split == 1).sum()
    for k in range(3):
        assert abs((split[y == k] == 0).sum() - (split[y == k] == 1).sum()) <= 1  # fraction 0.5, per class
    ev = split == 1
    probs = result.records["probs"][ev].astype(np.float64)
    assert result.metrics["ece"] == pytest.approx(CM.ece(probs, y[ev]), abs=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(np.mean(result.records["correct"][ev, 0]))
    assert result.metrics["accuracy_all"] == pytest.approx(np.mean(result.records["correct"][:, 0]))
    assert result.data["correct_metrics"] == ["accuracy_all"]
    t = result.metrics["temperature"]
    logits = np.log(np.maximum(result.records["probs"][~ev].astype(np.float64), 1e-30))
    assert fit_temperature(logits, y[~ev]).temperature == pytest.approx(t, rel=0.05)


def test_study_same_seed_same_numbers(result, toy) -> None:
    again = _run(toy)
    assert again.metrics == result.metrics
    assert again.intervals == result.intervals
    other = _run(toy, seed=1)
    assert not np.array_equal(other.records["split"], result.records["split"])


def test_split_depends_on_sample_ids_and_seed_not_on_their_order() -> None:
    from robustkit.studies.calibration import _split, _split_keys

    ids = np.array([f"img{i:03d}" for i in range(41)])
    y = np.arange(41) % 3
    ctx = AuditContext(seed=3)
    cal, ev = _split(y, 0.5, _split_keys(ids, ctx))
    perm = np.random.default_rng(0).permutation(41)
    cal_p, ev_p = _split(y[perm], 0.5, _split_keys(ids[perm], ctx))
    assert set(ids[cal]) == set(ids[perm][cal_p]) and set(ids[ev]) == set(ids[perm][ev_p])
    for k in range(3):
        assert abs(np.sum(y[cal] == k) - np.sum(y[ev] == k)) <= 1
    other, _ = _split(y, 0.5, _split_keys(ids, AuditContext(seed=4)))
    assert set(ids[other]) != set(ids[cal])


def test_study_without_transforms_skips_shift_with_a_check(toy, monkeypatch) -> None:
    fake = types.ModuleType("robustkit.data.transforms")
    fake.TRANSFORMS = {}
    fake.get_transform = lambda name: None
    monkeypatch.setitem(sys.modules, "robustkit.data.transforms", fake)
    monkeypatch.setattr(robustkit.data, "transforms", fake, raising=False)
    res = _run(toy)
    assert not any(k.count(".") == 2 and k.startswith("ece.") for k in res.metrics)
    check = next(c for c in res.checks if c.name == "calibration under shift")
    assert check.status == "warn" and "not measured" in check.detail


@pytest.mark.parametrize("overrides", [
    {"n_bins": 0}, {"calibration_fraction": 1.5}, {"calibration_fraction": 1.0}, {"target_risks": [-0.01]},
    {"shift_severities": [7]}, {"shift_severities": [0]}, {"n_bootstrap": 2}, {"referral_fractions": [1.0]}, {"bogus": 1},
])
def test_bad_config_raises(overrides) -> None:
    with pytest.raises(ConfigError):
        get_study("calibration").configure("standard", overrides)


def test_the_per_study_positive_class_is_gone_and_no_critical_class_is_said(toy) -> None:
    with pytest.raises(ConfigError, match="positive_class"):  # the audit's critical_class replaced it
        _run(toy, positive_class="NORMAL")
    res = _run(toy, critical=None)
    assert not [m for m in res.metrics if m.startswith("sensitivity_at_risk")]
    assert all("sensitivity" not in p for p in res.data["operating_points"])
    assert all(not any(k.startswith("sensitivity") for k in row) for row in res.tables["referral"])
    check = next(c for c in res.checks if c.name == "critical class")
    assert check.status == "warn" and "--critical-class" in check.detail
    # the other numbers do not depend on it
    full = _run(toy)
    np.testing.assert_equal({k: v for k, v in full.metrics.items() if not k.startswith("sensitivity_at_risk")},
                            res.metrics)


def test_report_section_renders_figures(result) -> None:
    from robustkit.report import report_html
    from tests.conftest import CLASSES

    result.name = "calibration"
    audit = AuditResult(model={"name": "toy", "fingerprint": "0" * 64, "class_names": list(CLASSES),
                               "input_shape": [32, 32, 1]},
                        dataset={"fingerprint": "1" * 64, "n_samples": 36, "class_names": list(CLASSES)},
                        config={"seed": 0, "profile": "quick", "studies": {}}, environment={},
                        ids=np.array([f"s{i}" for i in range(36)]), labels=np.zeros(36, dtype=np.int64),
                        class_names=list(CLASSES), studies={"calibration": result})
    html = report_html(audit)
    section = html[html.index('id="study-calibration"'):]
    assert "could not be built" not in section
    assert section.count("<svg") >= 4
    for text in ("Reliability diagrams", "Risk-coverage curve", "Calibration under shift", "Estimators",
                 "Exported temperature", "debiased_l2_ce"):
        assert text in section


# ---------------------------------------------------------------- one path: single-label is one-hot multi-label


def _reduce_on(z: np.ndarray, y: np.ndarray, *, kind: str, multilabel: bool):
    """The calibration reduce on fixed logits ``z`` ``(N, 3)``, no model: the labels ``y`` as a
    single-label set, or as one-hot findings of a multi-label set."""
    from robustkit.data.dataset import Dataset, Sample

    names = ("COVID-19", "NORMAL", "Viral Pneumonia")
    samples = [Sample(f"s/{i:03d}", Path(f"s/{i:03d}"), int(k), findings=(int(k),) if multilabel else None)
               for i, k in enumerate(y)]
    ctx = AuditContext(seed=5, model_info={"output_kind": kind}, task=Task(names=names, exclusive=not multilabel))
    study = CalibrationStudy.configure("quick", {"n_bootstrap": 20, "shift_severities": (1,)})
    records = {"logits": z.astype(np.float32), "shift_logits": np.zeros((len(y), 0 if multilabel else 2, 3), np.float32)}
    return study.reduce(records, Dataset(Path("toy"), list(names), samples), ctx)


def _one_hot_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 120)
    return rng.normal(0.0, 1.0, (120, 3)) + 2.0 * np.eye(3)[y], y


def test_single_label_per_output_ece_and_brier_are_the_one_hot_multilabel_ones() -> None:
    """Known answers: ECE per output is the binary reliability form of p_k against y == k (a slow
    loop, and the multi-label function on one-hot targets); its macro mean is Nixon's classwise
    ECE, and K times the macro Brier is the multi-class Brier."""
    from robustkit.metrics import multilabel as ML
    from robustkit.metrics.outputs import probabilities

    z, y = _one_hot_case()
    res = _reduce_on(z, y, kind="softmax", multilabel=False)
    m, ev = res.metrics, res.records["split"] == 1
    p = probabilities(z[ev].astype(np.float32).astype(np.float64), "softmax")
    onehot = np.eye(3, dtype=bool)[y[ev]]
    per_output = ML.per_finding_ece(onehot, p, n_bins=15)
    for k, name in enumerate(("COVID-19", "NORMAL", "Viral Pneumonia")):
        slow, _ = _slow_equal_width(p[:, k].tolist(), onehot[:, k].astype(float).tolist(), 15)
        assert m[f"ece.{name}"] == pytest.approx(slow, abs=1e-12)
        assert m[f"ece.{name}"] == pytest.approx(per_output[k], abs=1e-12)
        assert m[f"prevalence.{name}"] == pytest.approx(np.mean(y[ev] == k))
    assert m["ece.macro"] == pytest.approx(m["classwise_ece"], abs=1e-12)
    assert m["ece_ts.macro"] == pytest.approx(m["classwise_ece_ts"], abs=1e-12)
    assert 3 * m["brier.macro"] == pytest.approx(m["brier"], abs=1e-12)
    assert {"ece.macro", "brier.macro", "ece.COVID-19"} <= set(res.intervals)


def test_an_exclusive_sigmoid_task_and_its_one_hot_multilabel_twin_share_the_per_output_block() -> None:
    z, y = _one_hot_case(1)
    one = _reduce_on(z, y, kind="sigmoid", multilabel=False)
    many = _reduce_on(z, y, kind="multilabel", multilabel=True)
    np.testing.assert_array_equal(one.records["split"], many.records["split"])
    shared = set(many.metrics)
    assert shared < set(one.metrics) and "ece" in one.metrics and "ece" not in many.metrics
    for name in shared:
        assert one.metrics[name] == many.metrics[name], name
        assert one.intervals.get(name) == many.intervals.get(name), name
    names = {c.name for c in many.checks}
    assert "top-label and shift calibration" in names and "over-confidence under shift" not in names
    assert "over-confidence under shift" in {c.name for c in one.checks}
