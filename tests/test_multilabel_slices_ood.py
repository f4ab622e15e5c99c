"""The slices and OOD studies on a multi-label model: per-finding AUROC per slice against
scikit-learn, the macro gap test, and OOD scores that fit a sigmoid head end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustkit.metrics.ood import joint_energy
from robustkit.metrics.slices import slice_aurocs
from robustkit.studies.ood_reduce import finding_groups

FINDINGS = ("Consolidation", "Nodule", "Opacity")


@pytest.fixture(scope="module")
def ml_audit(tmp_path_factory: pytest.TempPathFactory, toy_multilabel: Path, toy_multilabel_model: Path):
    from robustkit.runner import audit

    out = tmp_path_factory.mktemp("mlslices")
    result = audit(toy_multilabel_model, toy_multilabel, studies=["slices", "ood"], profile="quick", out=out,
                   seed=0, quiet=True,
                   config={"slices": {"min_size": 10}, "ood": {"n_per_set": 6, "n_bootstrap": 20,
                                                                "sets": ["ct", "natural", "inverted"]}})
    return result, out


def test_slice_auroc_equals_sklearn_on_each_slice(ml_audit) -> None:
    result, out = ml_audit
    sl = result.studies["slices"]
    assert sl.status == "ok", sl.error
    rec = np.load(out / "records.npz")
    probs, targets = rec["slices/probs"], rec["targets"][rec["slices/index"]]
    site = rec["metadata/site"][rec["slices/index"]]
    for value in ("A", "B"):
        m = site == value
        for k, f in enumerate(FINDINGS):
            assert sl.metrics[f"auroc.site={value}.{f}"] == pytest.approx(roc_auc_score(targets[m, k], probs[m, k]))
        assert sl.metrics[f"auroc.site={value}.macro"] == pytest.approx(
            np.mean([roc_auc_score(targets[m, k], probs[m, k]) for k in range(3)]))
        assert len(sl.intervals[f"auroc.site={value}.macro"]) == 2
    assert {"worst.auroc", "worst.gap", "worst.q", "n_flagged"} <= set(sl.metrics)
    assert "accuracy" not in sl.metrics and sl.data["multilabel"]


def test_slice_aurocs_on_noisy_scores_against_sklearn_and_the_gap_test() -> None:
    rng = np.random.default_rng(0)
    n, k = 240, 3
    t = rng.random((n, k)) < 0.4
    mask = np.arange(n) % 3 == 0
    noise = np.where(mask[:, None], 2.5, 0.6)  # the slice's scores are much noisier: a worse slice
    p = t + noise * rng.standard_normal((n, k))
    r = slice_aurocs(t, p, mask, np.zeros(n, int), n_boot=200, seed=1)
    ref = [roc_auc_score(t[mask, j], p[mask, j]) for j in range(k)]
    np.testing.assert_allclose(r["auroc"], ref)
    rest = np.mean([roc_auc_score(t[~mask, j], p[~mask, j]) for j in range(k)])
    assert r["gap"] == pytest.approx(np.mean(ref) - rest) and r["gap"] < -0.1
    assert r["p"] < 0.05 and r["macro_interval"][0] < r["macro"] < r["macro_interval"][1]
    same = slice_aurocs(t, t + 0.6 * rng.standard_normal((n, k)), mask, np.zeros(n, int), n_boot=200, seed=1)
    assert same["p"] > 0.05


def test_ood_runs_end_to_end_with_sigmoid_scores(ml_audit, toy_multilabel: Path, toy_multilabel_model: Path) -> None:
    """The ID side against the model's own logits (JointEnergy, MSP, the threshold at 95% ID
    TPR, the finding-call rates by a direct count) and each set's AUROC against the area under
    its stored ROC curve (trapezoids over every point)."""
    from robustkit.data.loader import load_dataset
    from robustkit.model.adapter import load_model

    result, out = ml_audit
    ood = result.studies["ood"]
    assert ood.status == "ok", ood.error
    assert ood.data["multilabel"] and "JointEnergy" in ood.data["score_forms"]["energy"]
    assert "confident_critical_rate.ct" not in ood.metrics
    model, data = load_model(toy_multilabel_model), load_dataset(toy_multilabel)
    rec = np.load(out / "records.npz")
    assert rec["ids"].tolist() == [str(i) for i in data.ids]
    h, w, c = model.input_shape
    z = model.logits(data.load_images(rec["ood/index"], size=(h, w), channels=c)).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(rec["ood/score_energy"], np.log1p(np.exp(z)).sum(axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rec["ood/score_msp"], p.max(axis=1), rtol=1e-4, atol=1e-5)
    test = ~rec["ood/reference"]
    score = rec[f"ood/score_{ood.data['recommended']}"][test].astype(np.float64)
    assert ood.data["threshold"] == pytest.approx(np.sort(score)[::-1][int(np.ceil(0.95 * len(score))) - 1], rel=1e-5)
    called = (p[test] >= np.asarray(ood.data["finding_thresholds"])[None, :]).any(axis=1)
    assert ood.metrics["finding_call_rate.id"] == pytest.approx(called.mean())
    assert ood.metrics["finding_call_rate_filtered.id"] == pytest.approx(
        np.mean(called & (score >= ood.data["threshold"] - 1e-6)))
    assert ood.metrics["n_id"] == test.sum() and 0 < called.mean() < 1
    for s in ("ct", "natural", "inverted"):
        roc = ood.data["roc"][s]
        area = np.sum(np.diff(roc["fpr"]) * (np.asarray(roc["tpr"][1:]) + np.asarray(roc["tpr"][:-1])) / 2)
        assert ood.metrics[f"auroc.{ood.data['recommended']}.{s}"] == pytest.approx(area, abs=1e-4), s


def test_multilabel_score_forms() -> None:
    z = np.array([[0.0, 2.0], [-3.0, -1.0]])
    np.testing.assert_allclose(joint_energy(z), np.log1p(np.exp(z)).sum(axis=1))
    f = np.arange(8.0).reshape(4, 2)
    t = np.array([[1, 0], [1, 1], [0, 0], [0, 0]], bool)  # the second image has both findings
    rep, groups, n_groups = finding_groups(f, t)
    assert n_groups == 3 and groups.tolist() == [0, 0, 1, 2, 2]
    np.testing.assert_array_equal(rep, f[[0, 1, 1, 2, 3]])
