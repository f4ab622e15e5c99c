"""Perturbation and noise studies on a multi-label model: per-finding AUROC, drops and flip rates
against an independent computation (scikit-learn on ``model.predict``), batch-size invariance,
the report's per-finding sections."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustkit.data.loader import load_dataset
from robustkit.data.transforms import get_transform
from robustkit.metrics.ranking import auroc as auroc_columns
from robustkit.model.adapter import load_model
from robustkit.runner import audit
from robustkit.studies import AuditContext
from robustkit.studies.conditions import _one_channel
from tests.conftest import FINDINGS, SIZE

CONFIG = {
    "perturbation": {"transforms": ["rotation", "marker", "inversion"], "severities": [1, 5], "n_bootstrap": 20},
    "noise": {"transforms": ["gaussian"], "severities": [2, 5], "n_bootstrap": 20},
    "clean": {"n_bootstrap": 20},
}


def _audit(model: Path, data: Path, out: Path, batch_size: int):
    return audit(load_model(model, batch_size=batch_size), data, studies=["clean", "perturbation", "noise"],
                 profile="quick", config=CONFIG, out=out, seed=0)


@pytest.fixture(scope="module")
def audits(toy_multilabel_model: Path, toy_multilabel: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("mlcond")
    return _audit(toy_multilabel_model, toy_multilabel, out / "b7", 7), _audit(
        toy_multilabel_model, toy_multilabel, out / "b1", 1), out


def _transformed(study: str, transform: str, severity: int, data, seed: int = 0) -> np.ndarray:
    """The study's transform applied here, image by image with the study's generator for random ones."""
    x = _one_channel(data.load_images(np.arange(len(data)), size=(SIZE, SIZE), channels=1))
    t = get_transform(transform)
    if not t.random:
        return t(x, severity)
    ctx = AuditContext(seed=seed)
    return np.concatenate([t(x[i:i + 1], severity, rng=ctx.rng(study, transform, severity, str(data.ids[i])))
                           for i in range(len(x))])


def test_per_finding_auroc_and_flip_rates_match_sklearn_on_model_predict(audits, toy_multilabel_model: Path,
                                                                         toy_multilabel: Path) -> None:
    result = audits[0]
    data = load_dataset(toy_multilabel)
    assert list(result.ids) == list(data.ids)
    keras_model = load_model(toy_multilabel_model).model
    thresholds = np.array([result.model["thresholds"][f] for f in FINDINGS])
    x_clean = data.load_images(np.arange(len(data)), size=(SIZE, SIZE), channels=1)
    p_clean = keras_model.predict(x_clean, verbose=0)
    clean_called = p_clean >= thresholds
    thresholded = result.studies["perturbation"].records["thresholded"]
    for study, cfg in (("perturbation", CONFIG["perturbation"]), ("noise", CONFIG["noise"])):
        m = result.studies[study].metrics
        assert result.studies[study].status == "ok"
        for t in cfg["transforms"]:
            for s in cfg["severities"]:
                p = keras_model.predict(_transformed(study, t, s, data), verbose=0)
                called = p >= thresholds
                for k, f in enumerate(FINDINGS):
                    want = roc_auc_score(data.targets[:, k], p[:, k])
                    assert m[f"auroc.{f}.{t}.{s}"] == pytest.approx(want, abs=1e-9), (study, t, s, f)
                    drop = roc_auc_score(data.targets[:, k], p_clean[:, k]) - want
                    assert m[f"auroc_drop.{f}.{t}.{s}"] == pytest.approx(drop, abs=1e-9)
                    flips = np.sum(called[thresholded, k] != clean_called[thresholded, k]) / thresholded.sum()
                    assert m[f"flip_rate.{f}.{t}.{s}"] == pytest.approx(flips, abs=1e-12)
                assert m[f"auroc.macro.{t}.{s}"] == pytest.approx(
                    np.mean([m[f"auroc.{f}.{t}.{s}"] for f in FINDINGS]), abs=1e-12)
                assert m[f"flip_rate.{t}.{s}"] == pytest.approx(
                    np.mean(called[thresholded] != clean_called[thresholded]), abs=1e-12)
                lo, hi = result.studies[study].intervals[f"auroc.macro.{t}.{s}"]
                assert lo <= hi


def test_batch_sizes_one_and_seven_give_the_same_numbers(audits) -> None:
    a, b, _ = audits
    for study in ("perturbation", "noise"):
        assert a.studies[study].metrics == b.studies[study].metrics
        assert a.studies[study].intervals == b.studies[study].intervals
        np.testing.assert_array_equal(a.studies[study].records["flipped"], b.studies[study].records["flipped"])


def test_records_summary_and_checks_of_a_multilabel_audit(audits) -> None:
    result = audits[0]
    pert = result.studies["perturbation"]
    n, c, k = pert.records["probs"].shape
    assert (n, c, k) == (len(result.ids), 3 * 2, len(FINDINGS)) and pert.records["probs"].dtype == np.float32
    names = pert.data["conditions"]
    assert pert.metrics["mean_auroc"] == pytest.approx(np.mean([pert.metrics[f"auroc.macro.{c}"] for c in names]))
    assert pert.metrics["worst_auroc"] == min(pert.metrics[f"auroc.macro.{c}"] for c in names)
    assert pert.metrics["mean_auroc_drop"] == pytest.approx(
        pert.data["clean_auroc"]["macro"] - pert.metrics["mean_auroc"])
    # inversion is the same at every severity, so its two columns are the same forward pass
    np.testing.assert_array_equal(pert.records["probs"][:, names.index("inversion.1")],
                                  pert.records["probs"][:, names.index("inversion.5")])
    checks = {ch.name for ch in pert.checks}
    assert {"macro AUROC falls with severity", "marker alone flips finding calls"} <= checks
    assert "accuracy.rotation.1" not in pert.metrics and pert.data["multilabel"] is True
    assert {"clean", "perturbation", "noise"} == set(result.studies)


def test_report_sections_name_every_finding(audits) -> None:
    html = (audits[2] / "b7" / "report.html").read_text()
    for study in ("perturbation", "noise"):
        start = html.index(f'id="study-{study}"')
        section = html[start:html.find('id="study-', start + 20)]
        assert "AUROC per finding under every condition" in section and "Flip rate of thresholded findings" in section
        for f in FINDINGS:
            assert f"AUROC {f}" in section and f"Flip rate {f}" in section and f"{f}: AUROC against severity" in section
        assert "Accuracy by transform" not in re.sub(r"<svg.*?</svg>", "", section, flags=re.S)


def test_auroc_columns_equals_sklearn_with_ties_and_undefined_findings() -> None:
    rng = np.random.default_rng(0)
    targets = rng.random((40, 3)) < 0.4
    targets[:, 2] = True  # every image has it: undefined
    scores = np.round(rng.random((40, 5, 3)), 1)  # many ties
    got = auroc_columns(targets, scores)
    for c in range(5):
        for k in range(2):
            assert got[c, k] == pytest.approx(roc_auc_score(targets[:, k], scores[:, c, k]), abs=1e-12)
    assert np.isnan(got[:, 2]).all()


class _Findings:
    """The data side ``_lung_conditions`` reads: findings, targets, ids."""

    class_names = list(FINDINGS)

    def __init__(self, targets: np.ndarray) -> None:
        self.targets = targets
        self.ids = np.array([f"s{i}" for i in range(len(targets))])

    def __len__(self) -> int:
        return len(self.targets)


def test_lung_conditions_per_finding_warn_for_a_model_that_reads_outside_the_lungs() -> None:
    from robustkit.results import StudyResult
    from robustkit.studies.perturbation import _lung_conditions
    from robustkit.task import Task

    rng = np.random.default_rng(1)
    targets = rng.random((30, 3)) < 0.5
    clean = np.where(targets, 0.9, 0.1).astype(np.float32)
    lung = np.stack([clean, np.full_like(clean, 0.5)], axis=1)  # lungs blanked: unchanged; outside: flat
    lung[0] = np.nan  # an image without a lung mask
    ctx = AuditContext(model_info={"thresholds": dict.fromkeys(FINDINGS, 0.5), "threshold_source": "given"},
                       task=Task(names=tuple(FINDINGS), exclusive=False))
    result = StudyResult(name="perturbation")
    _lung_conditions(lung, clean, _Findings(targets), ctx, result)
    m = result.metrics
    assert m["lung_n_samples"] == 29 and m["lung_auroc.macro.lungs_blanked"] == 1.0
    assert m["lung_auroc.macro.outside_blanked"] == 0.5 and m["lung_auroc.Nodule.outside_blanked"] == 0.5
    assert m["lung_flip_rate.lungs_blanked"] == 0.0
    assert m["lung_flip_rate.outside_blanked"] == pytest.approx(np.mean(~targets[1:]))  # absent calls turn present
    assert [c.status for c in result.checks] == ["warn"]  # holds up without its lungs, falls without the rest
    reads_lungs = StudyResult(name="perturbation")
    _lung_conditions(lung[:, ::-1].copy(), clean, _Findings(targets), ctx, reads_lungs)
    assert [c.status for c in reads_lungs.checks] == ["pass"] and "macro AUROC" in reads_lungs.checks[0].detail
