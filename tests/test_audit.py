"""The audit spine: protocol, registry, config, the clean study, results, resume."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

import robustkit
from robustkit.config import load_config
from robustkit.errors import ConfigError
from robustkit.results import load_results
from robustkit.runner import audit
from robustkit.studies import Study, StudyConfig, available, get_study
from robustkit.studies.clean import CleanStudy
from tests.conftest import CLASSES

SCHEMA = json.loads((Path(robustkit.__file__).parent / "schema" / "results.schema.json").read_text())


def _independent_predictions(model_path: Path, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """model.predict + argmax on images read with PIL from the class folders."""
    from robustkit._tf import keras

    model = keras.saving.load_model(model_path, compile=False)
    xs, ys = [], []
    for k, name in enumerate(CLASSES):
        for f in sorted((data_root / name).glob("*.png")):
            xs.append(np.asarray(Image.open(f), dtype=np.float32)[..., None] / 255.0)
            ys.append(k)
    return model.predict(np.stack(xs), verbose=0).argmax(axis=1), np.array(ys)


@pytest.fixture(scope="module")
def clean_audit(toy_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("audit")
    return audit(toy_model, toy_data, studies=["clean"], out=out, seed=0), out


def test_clean_accuracy_equals_an_independent_computation(clean_audit, toy_model, toy_data) -> None:
    result, _ = clean_audit
    pred, y = _independent_predictions(toy_model, toy_data)
    assert result.metric("clean.accuracy") == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert result.metric("clean.accuracy") > 0.8  # the toy model learned the toy patterns
    recall_covid = np.mean(pred[y == 0] == 0)
    assert result.metric("clean.sensitivity.COVID-19") == pytest.approx(recall_covid)


def test_clean_metrics_match_scikit_learn(clean_audit) -> None:
    from sklearn.metrics import f1_score, precision_score, roc_auc_score

    result, _ = clean_audit
    rec = result.records("clean")
    y = result.labels[rec["index"]]
    probs, pred = rec["probs"], rec["pred"]
    m = result.studies["clean"].metrics
    for k, name in enumerate(CLASSES):
        assert m[f"precision.{name}"] == pytest.approx(precision_score(y == k, pred == k, zero_division=np.nan))
        assert m[f"f1.{name}"] == pytest.approx(f1_score(y == k, pred == k))
    assert m["auroc.macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    lo, hi = result.interval("clean.accuracy")
    assert lo <= m["accuracy"] <= hi


def test_results_are_schema_valid_and_round_trip(clean_audit) -> None:
    result, out = clean_audit
    obj = json.loads((out / "results.json").read_text())
    jsonschema.validate(obj, SCHEMA)
    again = load_results(out)
    assert again.metrics() == result.metrics()
    np.testing.assert_array_equal(again.records("clean")["probs"], result.records("clean")["probs"])
    assert list(again.ids) == list(result.ids)
    assert again.direction("clean.sensitivity.NORMAL") == "higher"
    assert (out / "report.html").is_file()


def test_same_seed_same_numbers(toy_model: Path, toy_data: Path) -> None:
    a = audit(toy_model, toy_data, studies=["clean"], seed=3, limit=20)
    b = audit(toy_model, toy_data, studies=["clean"], seed=3, limit=20)
    assert a.metrics() == b.metrics()
    assert a.studies["clean"].intervals == b.studies["clean"].intervals
    assert list(a.ids) == list(b.ids) and len(a.ids) == 20


def test_limit_is_stratified(toy_model: Path, toy_data: Path) -> None:
    res = audit(toy_model, toy_data, studies=["clean"], limit=9)
    assert np.bincount(res.labels).tolist() == [3, 3, 3]


@dataclass(frozen=True)
class _CountConfig(StudyConfig):
    value: float = 1.0


class _CountingStudy(Study):
    name = "counting_test_study"
    description = "test study"
    Config = _CountConfig
    metric_docs = {"mean_logit": ("mean clean logit", "none")}
    runs = 0
    fail = False

    def run(self, model, data, ctx):
        from robustkit.results import StudyResult

        type(self).runs += 1
        if type(self).fail:
            raise KeyboardInterrupt  # an audit killed in this study
        z = ctx.clean_logits(model, data)
        return StudyResult(name=self.name, metrics={"mean_logit": float(z.mean()) * self.config.value},
                           records={"first_logit": z[:, 0]})


@pytest.fixture()
def counting_study():
    from robustkit.studies import _REGISTRY

    _REGISTRY[_CountingStudy.name] = _CountingStudy
    _CountingStudy.runs, _CountingStudy.fail = 0, False
    yield _CountingStudy
    _REGISTRY.pop(_CountingStudy.name, None)


def test_interrupted_audit_resumes_from_the_last_finished_study(
    counting_study, toy_model: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    studies = ["clean", counting_study.name]
    counting_study.fail = True
    with pytest.raises(KeyboardInterrupt):
        audit(toy_model, toy_data, studies=studies, out=tmp_path, report=False)
    done = load_results(tmp_path)  # the finished study was written before the crash
    assert list(done.studies) == ["clean"]

    clean_runs = []
    original = CleanStudy.run
    monkeypatch.setattr(CleanStudy, "run", lambda self, *a: clean_runs.append(1) or original(self, *a))
    counting_study.fail = False
    resumed = audit(toy_model, toy_data, studies=studies, out=tmp_path, report=False)
    assert clean_runs == [] and counting_study.runs == 2
    fresh = audit(toy_model, toy_data, studies=studies, out=tmp_path, report=False, fresh=True)
    assert clean_runs == [1]
    assert resumed.metrics() == fresh.metrics()
    # a changed study config is re-run, an unchanged one reused
    audit(toy_model, toy_data, studies=studies, out=tmp_path, report=False,
          config={counting_study.name: {"value": 2.0}})
    assert clean_runs == [1] and counting_study.runs == 4


def test_resume_keeps_the_figures_sidecar_and_reruns_a_study_whose_figures_are_lost(
    toy_model: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = audit(toy_model, toy_data, studies=["clean"], out=tmp_path, report=False, limit=12)
    sidecar = tmp_path / "figures.npz"
    figures = sidecar.read_bytes()
    assert "iVBORw0KGgo" not in (tmp_path / "results.json").read_text()  # the examples live in the sidecar
    clean_runs = []
    original = CleanStudy.run
    monkeypatch.setattr(CleanStudy, "run", lambda self, *a: clean_runs.append(1) or original(self, *a))
    reused = audit(toy_model, toy_data, studies=["clean"], out=tmp_path, report=False, limit=12)
    assert clean_runs == [] and sidecar.read_bytes() == figures
    assert reused.studies["clean"].data == load_results(tmp_path).studies["clean"].data
    assert json.dumps(reused.studies["clean"].data["examples"]) == json.dumps(
        json.loads(json.dumps(first.studies["clean"].to_json()["data"]))["examples"])
    sidecar.unlink()
    assert load_results(tmp_path).studies["clean"].missing_figures > 0
    rerun = audit(toy_model, toy_data, studies=["clean"], out=tmp_path, report=False, limit=12)
    assert clean_runs == [1] and sidecar.read_bytes() == figures
    assert rerun.metrics() == first.metrics() and load_results(tmp_path).studies["clean"].missing_figures == 0


def test_study_records_cover_their_samples(counting_study, toy_model: Path, toy_data: Path) -> None:
    res = audit(toy_model, toy_data, studies=["clean", counting_study.name],
                config={counting_study.name: {"max_samples": 6}})
    rec = res.records(counting_study.name)
    assert rec["index"].shape == (6,) and rec["first_logit"].shape == (6,)
    np.testing.assert_allclose(rec["first_logit"], res.records("clean")["logits"][rec["index"], 0])


def test_registry_and_profiles() -> None:
    assert available()[0] == "clean"
    assert get_study("clean") is CleanStudy
    with pytest.raises(ConfigError, match="'studies' parameter must be"):
        get_study("no_such_study")
    assert CleanStudy.configure("quick").config.n_bootstrap == 300
    assert CleanStudy.configure("full", {"n_bootstrap": 50}).config.n_bootstrap == 50
    assert "n_bootstrap=50" in repr(CleanStudy.configure("standard", {"n_bootstrap": 50}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_bootstraps": 5}, "Unknown key 'n_bootstraps'"),
        ({"n_bootstrap": "many"}, "'n_bootstrap' parameter of study 'clean' must be an int"),
        ({"n_bootstrap": 0}, "must be an int in \\[10, inf\\). Got 0"),
        ({"max_samples": 0}, "'max_samples' parameter of study 'clean' must be an int in \\[1, inf\\)"),
    ],
)
def test_bad_study_config_is_refused(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        CleanStudy.configure("standard", overrides)


def test_audit_config_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.toml"
    path.write_text('seed = 4\nprofile = "quick"\nstudies = ["clean"]\n[clean]\nn_bootstrap = 20\n')
    cfg = load_config(path)
    assert (cfg.seed, cfg.profile, cfg.studies, cfg.overrides) == (4, "quick", ("clean",), {"clean": {"n_bootstrap": 20}})
    path.write_text("seeed = 4\n")
    with pytest.raises(ConfigError, match="audit.toml: Unknown key 'seeed'"):
        load_config(path)
    path.write_text("limit = -3\n")
    with pytest.raises(ConfigError, match="'limit' parameter must be an int in \\[1, inf\\). Got -3"):
        load_config(path)
    path.write_text("[nosuchstudy]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"Unknown study table \[nosuchstudy\]"):
        load_config(path)


@pytest.mark.inception
def test_audit_of_the_real_inception_v3_architecture(toy_data: Path, tmp_path: Path) -> None:
    """The demo's architecture (InceptionV3 + the original head) at a small input, end to end."""
    from robustkit.data.loader import load_dataset
    from robustkit.model.training import build_model

    model = build_model("inception_v3", input_size=75, num_classes=3, seed=0)
    path = tmp_path / "inception.keras"
    model.save(path)
    result = audit(path, toy_data, studies=["clean"], seed=0)
    assert result.model["parameters"] == 22_360_611 and result.model["input_shape"] == [75, 75, 3]
    data = load_dataset(toy_data)
    x = data.load_images(np.arange(len(data)), size=(75, 75), channels=3)
    expected = np.mean(model.predict(x, verbose=0).argmax(axis=1) == data.labels)
    assert result.metric("clean.accuracy") == pytest.approx(expected)
    np.testing.assert_allclose(result.records("clean")["probs"], model.predict(x, verbose=0), atol=1e-5)
