"""Multi-label data and the clean study per finding (issue 19, items 3 and 4).

The manifest form (``A|B``, "No Finding", ``mask.<finding>`` columns), the class map on
findings, the output kind chosen from the data, the decision thresholds, the per-finding
metrics against scikit-learn and slow loops, and the clean study end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from robustkit.data.loader import load_dataset
from robustkit.errors import ConfigError, DataError
from robustkit.metrics import multilabel as ML
from robustkit.metrics.ranking import auroc
from robustkit.runner import audit

FINDINGS = ["Consolidation", "Nodule", "Opacity"]


def _manifest(tmp: Path, rows: list[str], header: str = "path,label") -> Path:
    (tmp / "img").mkdir(exist_ok=True)
    for i in range(len(rows)):
        Image.fromarray(np.full((8, 8), 40 * i % 255, dtype=np.uint8)).save(tmp / "img" / f"{i}.png")
    lines = [header] + [f"img/{i}.png,{r}" for i, r in enumerate(rows)]
    (tmp / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp / "m.csv"


# ---------------------------------------------------------------- the manifest form


def test_labels_are_sets_of_findings_and_no_finding_is_the_empty_set(tmp_path: Path) -> None:
    m = _manifest(tmp_path, ["Effusion|Opacity", "No Finding", "Opacity", "", "Opacity|Effusion"])
    data = load_dataset(m)
    assert data.multilabel and data.class_names == ["Effusion", "Opacity"]
    np.testing.assert_array_equal(data.targets, [[1, 1], [0, 0], [0, 1], [0, 0], [1, 1]])
    assert data.class_counts() == {"Effusion": 2, "Opacity": 3}
    d = data.describe()
    assert d["multilabel"] and d["n_no_finding"] == 2 and d["findings_per_image"] == {"0": 2, "1": 1, "2": 2}


def test_a_single_label_manifest_stays_single_label(tmp_path: Path) -> None:
    data = load_dataset(_manifest(tmp_path, ["A", "B", "A"]))
    assert not data.multilabel and "multilabel" not in data.describe()
    np.testing.assert_array_equal(data.targets, np.eye(2, dtype=bool)[[0, 1, 0]])
    forced = load_dataset(tmp_path / "m.csv", multilabel=True)  # one finding per image, asked for
    assert forced.multilabel
    np.testing.assert_array_equal(forced.targets, data.targets)


def test_per_finding_masks_are_read_for_their_finding_only(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "e0.png")
    m = _manifest(tmp_path, ["Effusion|Opacity,masks/e0.png", "Opacity,"], header="path,label,mask.Effusion")
    data = load_dataset(m)
    assert data.finding_mask_names == ["Effusion"] and data.has_masks
    got = data.load_masks([0, 1], size=(8, 8), finding="Effusion")
    assert got[0].sum() == 32 and got[0, :4].all() and not got[1].any()
    assert not data.load_masks([0], size=(8, 8), finding="Opacity").any()
    assert data.describe()["finding_masks"] == {"Effusion": 1}


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["A||B", "A"], "path,label", r"expected findings separated by '\|'.*line 2"),
        (["A|No Finding", "A"], "path,label", r"or 'No Finding' alone.*line 2"),
        (["A,", "B|A,"], "path,label,mask.C", r"mask column 'mask.C' to name a finding"),
        (["A,img/0.png", "B|A,"], "path,label,mask.B", r"'mask.B' mask only where the label has 'B' \(line 2\)"),
    ],
)
def test_bad_multilabel_manifests_are_one_line_errors(tmp_path: Path, rows: list[str], header: str,
                                                       message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_dataset(_manifest(tmp_path, rows, header))
    assert "\n" not in str(info.value) and str(tmp_path / "m.csv") in str(info.value)


def test_a_folder_cannot_be_multilabel(toy_data: Path) -> None:
    with pytest.raises(DataError, match="expected a CSV manifest for multi-label data"):
        load_dataset(toy_data, multilabel=True)


def test_class_map_renames_findings_and_exclusion_removes_one(tmp_path: Path) -> None:
    m = _manifest(tmp_path, ["Effusion|Infiltration", "No Finding", "Infiltration", "Hernia"])
    data = load_dataset(m, class_map={"Infiltration": "Opacity"}, exclude_classes=["Hernia"])
    assert data.class_names == ["Effusion", "Opacity"] and data.out_of_scope is None
    np.testing.assert_array_equal(data.targets, [[1, 1], [0, 0], [0, 1], [0, 0]])
    assert any("'Hernia' excluded: removed from the labels of 1 image" in n for n in data.notes)
    # the model's order; a model finding that no image has is allowed (all negatives)
    aligned = data.with_class_order(["Opacity", "Nodule", "Effusion"])
    np.testing.assert_array_equal(aligned.targets, [[1, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    # a data finding the model does not have is the intake error, suggesting the options
    with pytest.raises(DataError, match=r"not in class_names: \['Effusion'\]"):
        data.with_class_order(["Opacity"])
    with pytest.raises(ConfigError, match="--class-map"):
        load_dataset(m, class_map={"Atelectasis": "Opacity"})


def test_subsample_and_split_keep_no_finding_images(tmp_path: Path) -> None:
    m = _manifest(tmp_path, ["A", "No Finding", "B", "No Finding", "A|B", "No Finding", "B", "A"])
    data = load_dataset(m)
    sub = data.subsample(4, seed=0)
    assert (sub.targets.sum(axis=1) == 0).any()  # the "No Finding" stratum is sampled too
    assert sub.multilabel and sub.class_names == data.class_names


def test_fingerprint_sees_the_findings(tmp_path: Path) -> None:
    a = load_dataset(_manifest(tmp_path, ["A|B", "A"])).fingerprint
    b = load_dataset(_manifest(tmp_path, ["A", "A|B"])).fingerprint
    assert a != b


# ---------------------------------------------------------------- metrics


def test_per_finding_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    targets = rng.random((200, 4)) < [0.1, 0.3, 0.5, 0.7]
    probs = np.round(np.clip(0.4 * targets + 0.6 * rng.random((200, 4)), 0, 1), 2)  # ties included
    for k in range(4):
        assert auroc(targets, probs)[k] == pytest.approx(roc_auc_score(targets[:, k], probs[:, k]))
    flat = ML.finding_summary(targets, probs, np.full(4, 0.5)).flat(list("abcd"))
    for k, f in enumerate("abcd"):
        assert flat[f"auprc.{f}"] == pytest.approx(average_precision_score(targets[:, k], probs[:, k]))
    assert flat["auroc.micro"] == pytest.approx(roc_auc_score(targets, probs, average="micro"))
    assert flat["auroc.macro"] == pytest.approx(roc_auc_score(targets, probs, average="macro"))
    assert flat["auprc.macro"] == pytest.approx(average_precision_score(targets, probs, average="macro"))
    assert flat["auprc.micro"] == pytest.approx(average_precision_score(targets, probs, average="micro"))
    sens, spec = ML.sensitivity_specificity(targets, probs, np.full(4, 0.5))
    for k in range(4):
        t, c = targets[:, k], probs[:, k] >= 0.5
        assert sens[k] == pytest.approx((c & t).sum() / t.sum())
        assert spec[k] == pytest.approx((~c & ~t).sum() / (~t).sum())


def test_youden_threshold_maximises_j_like_a_slow_search() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(80) < 0.4
    s = np.round(rng.random(80) * 0.6 + 0.4 * y, 2)
    t = ML.youden_thresholds(y[:, None], s[:, None])[0]

    def j(th: float) -> float:
        c = s >= th
        return (c & y).sum() / y.sum() - (c & ~y).sum() / (~y).sum()

    best = max(j(th) for th in np.unique(s))
    assert j(t) == pytest.approx(best)  # the returned threshold makes the best calls
    calls = s >= t  # halfway between two distinct scores, or the lowest score itself
    assert not np.any(s == t) or t == s.min()
    assert j(float(s[calls].min())) == pytest.approx(best)
    assert ML.youden_thresholds(np.zeros((5, 1), dtype=bool), np.ones((5, 1)))[0] == 0.5  # no positives


def test_delong_equals_the_slow_kernel_form() -> None:
    rng = np.random.default_rng(2)
    y = rng.random(60) < 0.45
    a = np.round(rng.random(60) + 0.5 * y, 1)
    b = rng.random(60) + 0.9 * y

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else 0.5 if x == z else 0.0

    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    comps = []
    for s in (a, b):
        v10 = np.array([np.mean([psi(s[i], s[j]) for j in neg]) for i in pos])
        v01 = np.array([np.mean([psi(s[i], s[j]) for i in pos]) for j in neg])
        comps.append((v10, v01))
    s10 = np.cov(np.vstack([comps[0][0], comps[1][0]]))
    s01 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / len(pos) + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / len(neg)
    r = ML.delong_paired(y, a, b)
    assert r.auc_a == pytest.approx(roc_auc_score(y, a)) and r.auc_b == pytest.approx(roc_auc_score(y, b))
    assert r.se == pytest.approx(np.sqrt(var))
    assert ML.delong_paired(y, a, a).p_value == 1.0


def test_threshold_split_is_decided_by_the_id_alone() -> None:
    ids = [f"img/{i:04d}" for i in range(400)]
    side = ML.threshold_split(ids)
    assert 0.4 < side.mean() < 0.6
    np.testing.assert_array_equal(ML.threshold_split(ids[::-1]), side[::-1])
    np.testing.assert_array_equal(ML.threshold_split(ids[100:150]), side[100:150])


def test_stored_thresholds_is_the_one_reader_of_the_audits_thresholds() -> None:
    import hashlib

    ids = np.array([f"img/{i:04d}" for i in range(60)])
    calibration_half = np.array([hashlib.sha256(f"threshold/{s}".encode()).digest()[0] < 128 for s in ids])
    chosen = {"thresholds": {"a": 0.3, "b": 0.7}, "threshold_source": "chosen by Youden's J on the calibration half"}
    t, read_on = ML.stored_thresholds(chosen, ["b", "a"], ids)
    assert t.tolist() == [0.7, 0.3]  # in the order of the names asked for
    np.testing.assert_array_equal(read_on, ~calibration_half)
    given = {**chosen, "threshold_source": "given (--threshold 0.5)"}
    assert ML.stored_thresholds(given, ["a", "b"], ids)[1].all()
    t, read_on = ML.stored_thresholds({"thresholds": {"a": 0.3}, "threshold_source": "chosen"}, ["a", "b"], ids)
    assert t.tolist() == [0.3, 0.5] and read_on.all()  # incomplete: 0.5 where missing, every image
    assert ML.stored_thresholds({}, ["a"], ids)[0].tolist() == [0.5]


# ---------------------------------------------------------------- the audit


def test_a_multilabel_audit_scores_each_finding(tmp_path: Path, toy_multilabel: Path,
                                                toy_multilabel_model: Path) -> None:
    from robustkit.model.adapter import load_model

    result = audit(toy_multilabel_model, toy_multilabel, studies=["clean"], out=tmp_path / "a", report=False)
    assert result.model["output_kind"] == "multilabel"
    clean = result.studies["clean"]
    data = load_dataset(toy_multilabel)
    adapter = load_model(toy_multilabel_model)
    x = data.load_images(range(len(data)), size=(32, 32), channels=1)
    predicted = adapter.model.predict(x, verbose=0)
    np.testing.assert_allclose(clean.records["probs"], predicted, rtol=1e-6, atol=1e-7)  # the model's own outputs
    for k, name in enumerate(FINDINGS):
        assert clean.metrics[f"auroc.{name}"] == pytest.approx(roc_auc_score(data.targets[:, k], predicted[:, k]))
        assert clean.metrics[f"auprc.{name}"] == pytest.approx(
            average_precision_score(data.targets[:, k], predicted[:, k]), abs=1e-6)
        lo, hi = clean.intervals[f"auroc.{name}"]
        assert lo <= clean.metrics[f"auroc.{name}"] <= hi
    # thresholds chosen on the calibration half, sensitivity read on the other half
    thresholds = np.array([result.model["thresholds"][n] for n in FINDINGS])
    calib = ML.threshold_split(data.ids)
    np.testing.assert_allclose(thresholds, ML.youden_thresholds(data.targets[calib], predicted[calib]), rtol=1e-5)
    held = ~calib
    sens, _ = ML.sensitivity_specificity(data.targets[held], predicted[held], thresholds)
    assert [clean.metrics[f"sensitivity.{n}"] for n in FINDINGS] == pytest.approx(sens.tolist())
    assert clean.metrics["n_thresholded"] == held.sum()
    np.testing.assert_array_equal(json.loads((tmp_path / "a" / "results.json").read_text())["model"]["class_names"],
                                  FINDINGS)
    with np.load(tmp_path / "a" / "records.npz") as z:
        np.testing.assert_array_equal(z["targets"], data.targets)


def test_a_given_threshold_is_used_for_every_finding_on_every_image(toy_multilabel: Path,
                                                                    toy_multilabel_model: Path) -> None:
    result = audit(toy_multilabel_model, toy_multilabel, studies=["clean"], threshold=0.9)
    clean = result.studies["clean"]
    assert set(result.model["thresholds"].values()) == {0.9} and "given" in result.model["threshold_source"]
    data = load_dataset(toy_multilabel)
    sens, spec = ML.sensitivity_specificity(data.targets, clean.records["probs"], np.full(3, 0.9))
    assert clean.metrics["n_thresholded"] == len(data)
    assert [clean.metrics[f"specificity.{n}"] for n in FINDINGS] == pytest.approx(spec.tolist())


def test_threshold_and_study_errors_are_one_line(tmp_path: Path, toy_multilabel: Path, toy_multilabel_model: Path,
                                                 toy_model: Path, toy_data: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from robustkit.cli import main

    for bad in ("0", "1", "1.5", "-0.1"):
        code = main(["audit", "--model", str(toy_multilabel_model), "--data", str(toy_multilabel), "--out",
                     str(tmp_path / "o"), "--studies", "clean", "--quiet", "--threshold", bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "'threshold' parameter must be a number in (0, 1)" in err[0], err
    with pytest.raises(ConfigError, match=r"--threshold 0.5: expected a multi-label audit"):
        audit(toy_model, toy_data, studies=["clean"], threshold=0.5)
    with pytest.raises(ConfigError, match="'threshold' parameter must be a number in"):
        audit(toy_multilabel_model, toy_multilabel, config={"threshold": 1.0}, studies=["clean"])
