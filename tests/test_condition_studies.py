"""The perturbation and noise studies: metrics against their records, seeds, config, CE, checks."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import robustkit
from robustkit.data.loader import load_dataset
from robustkit.errors import ConfigError
from robustkit.model.adapter import ModelAdapter, load_model
from robustkit.results import AuditResult, StudyResult
from robustkit.runner import audit
from robustkit.studies import AuditContext, get_study
from robustkit.studies.conditions import _prefetch
from tests.conftest import CLASSES, SIZE


@pytest.fixture(scope="module")
def model(toy_model: Path) -> ModelAdapter:
    return load_model(toy_model, batch_size=16)


@pytest.fixture(scope="module")
def data(toy_data: Path):
    return load_dataset(toy_data)


def _run(name: str, model: ModelAdapter, data, *, seed: int = 0, reference: AuditResult | None = None,
         **overrides) -> StudyResult:
    study = get_study(name).configure("quick", {"n_bootstrap": 50, **overrides})
    return study.execute(model, data, AuditContext(seed=seed, reference=reference))


@pytest.fixture(scope="module")
def pert(model, data) -> StudyResult:
    return _run("perturbation", model, data, transforms=["jpeg", "rotation", "inversion", "marker"], severities=[1, 5])


def _clean_pred(model: ModelAdapter, data) -> np.ndarray:
    x = data.load_images(np.arange(len(data)), size=(SIZE, SIZE), channels=1)
    return model.logits(x).argmax(axis=1)


def test_metrics_match_the_records(pert: StudyResult, data) -> None:
    names = pert.data["conditions"]
    assert names == ["jpeg.1", "jpeg.5", "rotation.1", "rotation.5", "inversion.1", "inversion.5", "marker.1", "marker.5"]
    assert pert.data["correct_metrics"] == [f"accuracy.{c}" for c in names]
    pred, correct, conf = pert.records["pred"], pert.records["correct"], pert.records["confidence"]
    assert pred.shape == correct.shape == conf.shape == (len(data), len(names))
    assert pred.dtype == np.int16 and correct.dtype == bool
    np.testing.assert_array_equal(correct, pred == data.labels[:, None])
    for col, c in enumerate(names):
        assert pert.metrics[f"accuracy.{c}"] == pytest.approx(correct[:, col].mean())
        assert pert.metrics[f"mean_confidence.{c}"] == pytest.approx(conf[:, col].mean(), rel=1e-5)
        for k, cls in enumerate(CLASSES):
            mask = data.labels == k
            assert pert.metrics[f"sensitivity.{cls}.{c}"] == pytest.approx((pred[mask, col] == k).mean())
        lo, hi = pert.intervals[f"accuracy.{c}"]
        assert lo <= pert.metrics[f"accuracy.{c}"] <= hi
    for t in ("jpeg", "rotation", "inversion", "marker"):
        assert pert.metrics[f"accuracy.{t}"] == pytest.approx(np.mean([pert.metrics[f"accuracy.{t}.{s}"] for s in (1, 5)]))
    assert pert.directions["accuracy"] == "higher" and pert.directions["flip_rate"] == "lower"


def test_flip_rate_is_the_share_changed_from_the_clean_prediction(pert: StudyResult, model, data) -> None:
    clean = _clean_pred(model, data)
    for col, c in enumerate(pert.data["conditions"]):
        assert pert.metrics[f"flip_rate.{c}"] == pytest.approx(np.mean(pert.records["pred"][:, col] != clean))
    # the per-sample flips behind each flip rate, for compare's paired tests
    assert pert.data["flipped_metrics"] == [f"flip_rate.{c}" for c in pert.data["conditions"]]
    for col, name in enumerate(pert.data["flipped_metrics"]):
        assert pert.metrics[name] == pytest.approx(pert.records["flipped"][:, col].mean())


def test_per_class_auroc_is_sklearn_one_vs_rest_on_the_probabilities_under_each_condition(
        pert: StudyResult, model, data) -> None:
    """Single-label is multi-label with one-hot targets: under each condition each class's AUROC is
    scikit-learn's one-vs-rest AUROC of the recorded probabilities (themselves the model's own outputs
    on the clean images), the macro its mean; the exclusive flip rate stays the arg-max one."""
    from sklearn.metrics import roc_auc_score

    probs, clean, y = pert.records["probs"], pert.records["clean_probs"], data.labels
    x = data.load_images(np.arange(len(data)), size=(SIZE, SIZE), channels=1)
    np.testing.assert_allclose(clean, model.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    for col, c in enumerate(pert.data["conditions"]):
        want = [roc_auc_score(y == k, probs[:, col, k]) for k in range(len(CLASSES))]
        for k, cls in enumerate(CLASSES):
            assert pert.metrics[f"auroc.{cls}.{c}"] == pytest.approx(want[k], abs=1e-12)
        assert pert.metrics[f"auroc.macro.{c}"] == pytest.approx(np.mean(want), abs=1e-12)
        assert pert.metrics[f"flip_rate.{c}"] == pytest.approx(np.mean(probs[:, col].argmax(1) != clean.argmax(1)))
        assert f"auroc_drop.macro.{c}" not in pert.metrics and f"flip_rate.{CLASSES[0]}.{c}" not in pert.metrics
    macro = [pert.metrics[f"auroc.macro.{c}"] for c in pert.data["conditions"]]
    assert pert.metrics["mean_auroc"] == pytest.approx(np.mean(macro)) and pert.metrics["worst_auroc"] == min(macro)
    clean_macro = np.mean([roc_auc_score(y == k, clean[:, k]) for k in range(len(CLASSES))])
    assert pert.metrics["mean_auroc_drop"] == pytest.approx(clean_macro - np.mean(macro))


def test_study_level_metrics(pert: StudyResult, model, data) -> None:
    acc = [pert.metrics[f"accuracy.{c}"] for c in pert.data["conditions"]]
    clean_acc = float(np.mean(_clean_pred(model, data) == data.labels))
    assert pert.data["clean_accuracy"] == pytest.approx(clean_acc)
    assert pert.metrics["mean_accuracy"] == pytest.approx(np.mean(acc))
    assert pert.metrics["relative_robustness"] == pytest.approx(np.mean(acc) / clean_acc)
    assert pert.metrics["worst_accuracy"] == pytest.approx(min(acc))
    assert pert.metrics[f"accuracy.{pert.data['worst_condition']}"] == pytest.approx(min(acc))
    assert "corruption_error.jpeg" not in pert.metrics  # no reference given


def test_inversion_is_the_same_at_every_severity(pert: StudyResult) -> None:
    cols = [pert.data["conditions"].index(c) for c in ("inversion.1", "inversion.5")]
    np.testing.assert_array_equal(pert.records["pred"][:, cols[0]], pert.records["pred"][:, cols[1]])


def test_one_forward_pass_per_sample_and_distinct_condition(model, data) -> None:
    ctx = AuditContext(seed=0)
    ctx.clean_logits(model, data)  # the clean pass is shared with the clean study
    study = get_study("perturbation").configure(
        "quick", {"transforms": ["hflip", "inversion", "jpeg"], "severities": [1, 2], "n_bootstrap": 0}
    )
    before = model.calls
    study.execute(model, data, ctx)
    batches = -(-len(data) // model.batch_size)
    assert model.calls - before == batches * (1 + 1 + 2)  # flip and inversion once, jpeg twice


def test_same_seed_same_numbers_and_seed_matters(model, data) -> None:
    a = _run("noise", model, data, seed=3)
    b = _run("noise", model, data, seed=3)
    c = _run("noise", model, data, seed=4)
    assert a.metrics == b.metrics and a.intervals == b.intervals
    np.testing.assert_array_equal(a.records["confidence"], b.records["confidence"])
    assert not np.array_equal(a.records["confidence"], c.records["confidence"])


def test_results_do_not_depend_on_the_batch_size(toy_model: Path, data) -> None:
    small, large = load_model(toy_model, batch_size=8), load_model(toy_model, batch_size=24)
    a, b = _run("noise", small, data), _run("noise", large, data)
    np.testing.assert_allclose(a.records["confidence"], b.records["confidence"], rtol=1e-5)
    assert a.data["examples"] == b.data["examples"]


def test_severities_and_transforms_from_config(model, data) -> None:
    r = _run("noise", model, data, transforms=["speckle"], severities=[4, 2])
    assert r.data["conditions"] == ["speckle.2", "speckle.4"]
    assert {k for k in r.metrics if k.startswith("accuracy.")} == {"accuracy.speckle.2", "accuracy.speckle.4", "accuracy.speckle"}
    assert r.config["severities"] == [4, 2] and r.config["transforms"] == ["speckle"]


def test_profiles() -> None:
    quick = get_study("perturbation").configure("quick")
    assert quick.config.severities == (1, 3, 5) and "marker" in quick.config.transforms
    standard = get_study("perturbation").configure("standard")
    assert standard.config.severities == (1, 2, 3, 4, 5) and len(standard.config.transforms) == 17
    assert get_study("noise").configure("standard").config.transforms == ("gaussian", "poisson", "speckle", "salt_pepper")


@pytest.mark.parametrize(
    ("study", "overrides", "message"),
    [
        ("perturbation", {"severities": [1, 7]}, "severities"),
        ("noise", {"severities": 0}, "severities"),
        ("perturbation", {"transforms": ["jpeg", "sharpen"]}, "sharpen"),
        ("perturbation", {"transforms": ["gaussian"]}, "gaussian"),  # a noise transform
        ("noise", {"transforms": []}, "non-empty"),
        ("noise", {"severities": [2, 2]}, "repeats"),
        ("perturbation", {"flip_warn": 1.5}, "flip_warn"),
        ("noise", {"flip_warn": 0.2}, "Unknown key"),
        ("noise", {"n_bootstrap": 5}, "n_bootstrap"),
    ],
)
def test_bad_config_is_refused(study: str, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_study(study).configure("standard", overrides)


def test_corruption_error_against_a_reference(model, data) -> None:
    ref_acc = {"gaussian": (0.9, 0.6, 0.3), "poisson": (1.0, 1.0, 1.0)}
    ref = StudyResult(name="noise", metrics={
        f"accuracy.{t}.{s}": a for t, accs in ref_acc.items() for s, a in zip((1, 3, 5), accs)
    })
    reference = AuditResult(model={"name": "ref.keras"}, dataset={}, config={}, environment={},
                            ids=np.array([]), labels=np.array([]), class_names=list(CLASSES),
                            studies={"noise": ref})
    r = _run("noise", model, data, reference=reference)
    err = sum(1 - r.metrics[f"accuracy.gaussian.{s}"] for s in (1, 3, 5))
    assert r.metrics["corruption_error.gaussian"] == pytest.approx(err / (0.1 + 0.4 + 0.7))
    assert "corruption_error.poisson" not in r.metrics  # the reference made no error: undefined
    assert r.metrics["mean_corruption_error"] == pytest.approx(r.metrics["corruption_error.gaussian"])
    assert r.directions["corruption_error"] == "lower"
    assert r.data["reference"] == "ref.keras"


def _corner_model(corner: str) -> ModelAdapter:
    """Predicts class 0 when the brightest pixel of one 12 px corner exceeds 0.7, else class 1."""
    from robustkit._tf import keras

    crop = ((0, SIZE - 12), (0, SIZE - 12)) if corner == "top-left" else ((SIZE - 12, 0), (SIZE - 12, 0))
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Cropping2D(crop)(inp)
    x = keras.layers.GlobalMaxPooling2D()(x)
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inp, dense(x))
    dense.set_weights([np.array([[40.0, 0.0, -40.0]], np.float32), np.array([-28.0, 0.0, 0.0], np.float32)])
    return ModelAdapter(model, class_names=list(CLASSES), batch_size=16)


def test_marker_check_warns_for_a_model_that_reads_the_corner(data) -> None:
    reads = _run("perturbation", _corner_model("top-left"), data, transforms=["marker", "jpeg"])
    ignores = _run("perturbation", _corner_model("bottom-right"), data, transforms=["marker", "jpeg"])
    check = {c.name: c for c in reads.checks}["marker alone flips predictions"]
    assert check.status == "warn" and reads.metrics["flip_rate.marker.5"] > 0.5
    other = {c.name: c for c in ignores.checks}["marker alone flips predictions"]
    assert other.status == "pass" and ignores.metrics["flip_rate.marker.5"] == 0.0


def test_rise_check_warns_when_accuracy_grows_with_severity(pert: StudyResult, data) -> None:
    # The corner reader predicts class 0 under a bright marker: the COVID-19-only accuracy rises.
    covid = data.subset(np.flatnonzero(data.labels == 0))
    r = _run("perturbation", _corner_model("top-left"), covid, transforms=["marker"], severities=[1, 5])
    check = {c.name: c for c in r.checks}["accuracy falls with severity"]
    assert check.status == "warn" and "marker" in check.detail
    assert {c.name: c for c in pert.checks}["accuracy falls with severity"].status == "pass"


def test_prefetch_hands_on_items_in_order_and_reraises_errors() -> None:
    assert list(_prefetch(iter(range(7)), 2)) == list(range(7))

    def broken():
        yield 1
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for v in _prefetch(broken(), 2):
            got.append(v)
    assert got == [1]


def test_audit_writes_records_and_renders_the_report(toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    result = audit(toy_model, toy_data, studies=["perturbation", "noise"], profile="quick", out=tmp_path)
    html = (tmp_path / "report.html").read_text()
    schema = json.loads((Path(robustkit.__file__).parent / "schema" / "results.schema.json").read_text())
    jsonschema.validate(json.loads((tmp_path / "results.json").read_text()), schema)
    for name in ("perturbation", "noise"):
        study = result.studies[name]
        assert study.status == "ok"
        assert len(study.data["examples"]) == 1 + 5 * len(study.config["transforms"])
    assert "Accuracy by transform and severity" in html and "Parameters behind each severity" in html
    for name in ("perturbation", "noise"):  # every thumbnail is on the page; the clean one once per study
        examples = result.studies[name].data["examples"]
        assert all(str(p) in html for p in examples.values())
        section = html.split(f'id="study-{name}"')[1].split("<section")[0]
        assert section.count('alt="the clean image"') == 1 and str(examples["clean"]) in section
    assert "MedMNIST-C" in html and "Shown in the generic layout" not in html
