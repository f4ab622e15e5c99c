"""Multi-label calibration per finding, and the clean, calibration and card views of a
multi-label audit (the toy multi-label fixtures, studies clean + calibration)."""

from __future__ import annotations

import json
from html import unescape
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import brier_score_loss, roc_auc_score

import robustkit
from robustkit.card import build_card
from robustkit.card_export import card_html, write_card
from robustkit.data.loader import load_dataset
from robustkit.metrics import multilabel as ML
from robustkit.metrics import outputs as OUT
from robustkit.metrics.temperature import fit_temperature
from robustkit.report.views import fmt
from robustkit.results import AuditResult, load_results
from robustkit.runner import audit

SCHEMA = json.loads((Path(robustkit.__file__).parent / "schema" / "results.schema.json").read_text())


# ---------------------------------------------------------------- pure metrics


def _slow_ece(p: list[float], t: list[int], n_bins: int) -> float:
    """Equal-width bins (e_b, e_b+1], 0 in the first; sum_b n_b/N |freq_b - conf_b|, by loops."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, v in enumerate(p) if (lo < v <= hi) or (b == 0 and v == 0.0)]
        if members:
            conf = sum(p[i] for i in members) / len(members)
            freq = sum(t[i] for i in members) / len(members)
            total += len(members) / len(p) * abs(freq - conf)
    return total


def _draw(seed: int, n: int = 200, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.random((n, k))
    probs[:5] = np.array([0.0, 1.0, 0.5, 0.2, 1 / 3])[:, None]  # exact 0, 1 and bin edges
    targets = rng.random((n, k)) < probs ** 0.7
    return targets, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [5, 15])
def test_per_finding_ece_and_brier_match_slow_loops_and_sklearn(seed: int, n_bins: int) -> None:
    targets, probs = _draw(seed)
    ece = ML.per_finding_ece(targets, probs, n_bins=n_bins)
    brier = ML.per_finding_brier(targets, probs)
    for k in range(probs.shape[1]):
        p, t = probs[:, k].tolist(), targets[:, k].astype(int).tolist()
        assert ece[k] == pytest.approx(_slow_ece(p, t, n_bins), abs=1e-12)
        assert brier[k] == pytest.approx(sum((a - b) ** 2 for a, b in zip(p, t)) / len(p), abs=1e-12)
        assert brier[k] == pytest.approx(brier_score_loss(targets[:, k], probs[:, k]), abs=1e-12)


def test_temperature_recovers_a_known_T_from_finding_targets() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 2.0, size=(20000, 3))
    targets = rng.random(true_logits.shape) < expit(true_logits)
    fit = fit_temperature(true_logits * 2.5, targets, "multilabel")  # an over-confident model, T = 2.5
    assert fit.temperature == pytest.approx(2.5, rel=0.05)
    assert abs(fit.grad_log_t) < 1e-4 and not fit.at_bound


def test_one_hot_targets_give_the_class_index_fit_exactly() -> None:
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(300, 3)) * 3, rng.integers(0, 3, 300)
    onehot = np.eye(3, dtype=bool)[y]
    assert fit_temperature(z, onehot, "sigmoid") == fit_temperature(z, y, "sigmoid")
    np.testing.assert_array_equal(OUT.sample_nll(z, onehot, "sigmoid", 1.7), OUT.sample_nll(z, y, "sigmoid", 1.7))


# ---------------------------------------------------------------- an audit of the toy fixtures


@pytest.fixture(scope="module")
def ml_audit(tmp_path_factory: pytest.TempPathFactory, toy_multilabel: Path, toy_multilabel_model: Path) -> Path:
    out = tmp_path_factory.mktemp("mlcal") / "audit"
    audit(toy_multilabel_model, toy_multilabel, studies=["clean", "calibration"], profile="quick", out=out,
          quiet=True)
    return out


@pytest.fixture(scope="module")
def predicted(ml_audit: Path, toy_multilabel: Path, toy_multilabel_model: Path) -> tuple[AuditResult, np.ndarray]:
    """The audit and ``model.predict`` on its images, in the audit's sample order."""
    from robustkit._tf import keras

    result = load_results(ml_audit)
    data = load_dataset(toy_multilabel)
    pos = {str(s): i for i, s in enumerate(data.ids)}
    model = keras.saving.load_model(toy_multilabel_model, compile=False)
    _, h, w, c = model.input_shape
    x = data.load_images([pos[str(s)] for s in result.ids], size=(h, w), channels=c)
    return result, np.asarray(model.predict(x, verbose=0), dtype=np.float64)


def test_audit_is_multilabel_and_schema_valid(ml_audit: Path) -> None:
    obj = json.loads((ml_audit / "results.json").read_text())
    jsonschema.validate(obj, SCHEMA)
    assert obj["model"]["output_kind"] == "multilabel"
    cal = obj["studies"]["calibration"]
    assert cal["status"] == "ok" and cal["data"]["multilabel"] is True
    assert "binary reliability form" in cal["data"]["calibration_form"]
    assert cal["data"]["temperature_export"]["fitted_by"] == "binary NLL summed over findings"


def test_clean_auroc_equals_sklearn_and_probs_equal_model_predict(predicted) -> None:
    result, probs = predicted
    clean = result.studies["clean"]
    stored = np.asarray(clean.records["probs"], dtype=np.float64)[np.argsort(clean.records["index"])]
    np.testing.assert_allclose(stored, probs, rtol=1e-6, atol=1e-7)
    targets = np.asarray(result.targets, dtype=bool)
    for k, name in enumerate(result.class_names):
        assert clean.metrics[f"auroc.{name}"] == pytest.approx(roc_auc_score(targets[:, k], probs[:, k]), abs=1e-12)


def test_calibration_numbers_equal_a_recomputation_from_the_records(predicted) -> None:
    result, probs = predicted
    cal = result.studies["calibration"]
    order = np.argsort(cal.records["index"])
    stored = np.asarray(cal.records["probs"], dtype=np.float64)[order]
    np.testing.assert_allclose(stored, probs, rtol=1e-6, atol=1e-7)
    ev = np.asarray(cal.records["split"])[order] == 1
    targets = np.asarray(result.targets, dtype=bool)
    assert cal.metrics["n_evaluation"] == ev.sum()
    for k, name in enumerate(result.class_names):
        t, p = targets[ev, k].astype(int).tolist(), probs[ev, k].tolist()
        assert cal.metrics[f"ece.{name}"] == pytest.approx(_slow_ece(p, t, 15), abs=1e-6)
        assert cal.metrics[f"brier.{name}"] == pytest.approx(brier_score_loss(t, p), abs=1e-6)
        assert cal.direction(f"ece.{name}") == "lower" and cal.direction(f"ece_ts.{name}") == "lower"
    macro = np.mean([cal.metrics[f"ece.{n}"] for n in result.class_names])
    assert cal.metrics["ece.macro"] == pytest.approx(macro, abs=1e-12)


def _section(html: str, study: str) -> str:
    return unescape(html.split(f'id="study-{study}"', 1)[1].split('id="study-', 1)[0])


def test_report_sections_show_every_finding(ml_audit: Path) -> None:
    from robustkit.report.render import render_report

    result = load_results(ml_audit)
    html = render_report(ml_audit).read_text()
    clean, cal = _section(html, "clean"), _section(html, "calibration")
    assert "ROC curve per finding" in clean and "prevalence" in clean.lower() and "Youden" in clean
    assert "Reliability per finding" in cal
    for name in result.class_names:
        assert name in clean and fmt(result.studies["clean"].metrics[f"auroc.{name}"]) in clean
        assert name in cal and fmt(result.studies["calibration"].metrics[f"ece.{name}"]) in cal
    assert "Traceback" not in html and "Error:" not in html


def test_card_shows_per_finding_auroc(ml_audit: Path) -> None:
    result = load_results(ml_audit)
    card = build_card(ml_audit)
    metrics = [n.metric for n in card.sections["performance"]]
    assert "clean.auroc.macro" in metrics and "clean.accuracy" not in metrics
    for name in result.class_names:
        assert {f"clean.auroc.{name}", f"clean.sensitivity.{name}", f"clean.specificity.{name}"} <= set(metrics)
    assert [n.metric for n in card.sections["calibration"]][:2] == ["calibration.ece.macro", "calibration.ece_ts.macro"]
    html = unescape(card_html(card))
    for name in result.class_names:
        assert name in html
    paths = write_card(ml_audit)
    assert all(Path(p).is_file() for p in paths.values())
