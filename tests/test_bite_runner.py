"""Tests that bite (issue #13), the audit spine: a crashed study is failed while the others
finish and are written, a failed study re-runs, resume is invalidated by a new seed, model
or data (reuse asserted by a run counter), SavedModel loading, the "log of probabilities"
logits fallback, and two audits in two processes give the same results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from robustkit.model.adapter import load_model
from robustkit.results import StudyResult, load_results
from robustkit.runner import audit
from robustkit.studies import Study, StudyConfig
from tests.conftest import CLASSES, build_toy_model, strip_volatile, write_toy_dataset

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class _Config(StudyConfig):
    value: float = 1.0


class _Counted(Study):
    """Counts its runs; raises when ``crash`` is set."""

    name = "bite_counted_study"
    description = "test study"
    Config = _Config
    metric_docs = {"mean_logit": ("mean clean logit", "none")}
    runs = 0
    crash = False

    def run(self, model, data, ctx):
        type(self).runs += 1
        if type(self).crash:
            raise RuntimeError("planted crash in the study")
        z = ctx.clean_logits(model, data)
        return StudyResult(name=self.name, metrics={"mean_logit": float(z.mean()) * self.config.value},
                           records={"first_logit": z[:, 0]})


@pytest.fixture()
def counted():
    from robustkit.studies import _REGISTRY

    _REGISTRY[_Counted.name] = _Counted
    _Counted.runs, _Counted.crash = 0, False
    yield _Counted
    _REGISTRY.pop(_Counted.name, None)


def test_a_crashed_study_is_failed_others_finish_and_it_reruns(counted, toy_model, toy_data, tmp_path) -> None:
    studies = ["clean", counted.name, "calibration"]
    counted.crash = True
    res = audit(toy_model, toy_data, studies=studies, out=tmp_path, report=False, profile="quick")
    assert res.studies[counted.name].status == "failed"
    assert "planted crash" in res.studies[counted.name].error
    written = load_results(tmp_path)
    assert [written.studies[s].status for s in ("clean", "calibration")] == ["ok", "ok"]
    assert "calibration.ece" in written.metrics()
    assert written.studies[counted.name].status == "failed"
    counted.crash = False
    again = audit(toy_model, toy_data, studies=studies, out=tmp_path, report=False, profile="quick")
    assert counted.runs == 2 and again.studies[counted.name].status == "ok"  # the failed study ran again


def test_resume_is_invalidated_by_a_new_seed_model_or_data(counted, toy_model, toy_data, tmp_path) -> None:
    def run(model=toy_model, data=toy_data, seed=0) -> None:
        audit(model, data, studies=["clean", counted.name], out=tmp_path, report=False, seed=seed)

    run()
    run()
    assert counted.runs == 1  # finished and unchanged: reused, not run again
    run(seed=1)
    assert counted.runs == 2
    other_model = tmp_path.parent / "other.keras"
    build_toy_model(seed=7).save(other_model)
    (tmp_path.parent / "other.meta.json").write_text(json.dumps({"class_names": list(CLASSES)}))
    run(model=other_model, seed=1)
    assert counted.runs == 3
    other_data = write_toy_dataset(tmp_path.parent / "other_data", per_class=4, seed=5)
    run(model=other_model, data=other_data, seed=1)
    assert counted.runs == 4
    run(model=other_model, data=other_data, seed=1)
    assert counted.runs == 4


def test_savedmodel_folder_loads_with_the_same_outputs(toy_model, toy_data, tmp_path) -> None:
    from robustkit._tf import keras

    folder = tmp_path / "toy_savedmodel"
    keras.saving.load_model(toy_model, compile=False).export(str(folder), verbose=False)
    a, b = load_model(toy_model), load_model(folder, class_names=list(CLASSES))
    x = np.random.default_rng(0).uniform(0, 1, (5, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(b.probs(x), a.probs(x), atol=1e-5)
    assert list(b.class_names) == list(CLASSES)
    (tmp_path / "toy_savedmodel.meta.json").write_text(json.dumps({"class_names": list(CLASSES)}))
    assert list(load_model(folder).class_names) == list(CLASSES)  # the sidecar beside the folder is read
    result = audit(folder, toy_data, studies=["clean"], report=False)
    reference = audit(toy_model, toy_data, studies=["clean"], report=False)
    assert result.metric("clean.accuracy") == reference.metric("clean.accuracy")


def test_log_of_probabilities_is_the_logits_fallback() -> None:
    from robustkit._tf import keras
    from robustkit.model.adapter import ModelAdapter

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    z = keras.layers.Dense(3)(keras.layers.Flatten()(inp))
    out = keras.layers.Lambda(lambda t: keras.ops.softmax(t * 1.0))(z)  # a softmax the adapter cannot see through
    adapter = ModelAdapter(keras.Model(inp, out), class_names=list(CLASSES))
    x = np.random.default_rng(1).uniform(0, 1, (6, 8, 8, 1)).astype(np.float32)
    probs = np.asarray(keras.Model(inp, out)(x))
    assert adapter.logits_source.startswith("log of the output probabilities")
    np.testing.assert_allclose(adapter.logits(x), np.log(probs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adapter.probs(x), probs, atol=1e-6)


_AUDIT = """
import sys
from robustkit.runner import audit
audit(sys.argv[1], sys.argv[2], studies=["clean", "calibration", "noise"], profile="quick", seed=5, out=sys.argv[3],
      report=False, limit=18, config={"noise": {"max_samples": 9}})
"""


@pytest.mark.slow
def test_two_processes_give_the_same_results_json(toy_model, toy_data, tmp_path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-c", _AUDIT, str(toy_model), str(toy_data), str(o)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for o in outs]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-2000:]
    a, b = (strip_volatile(json.loads((o / "results.json").read_text())) for o in outs)
    assert a == b
    ra, rb = (np.load(o / "records.npz") for o in outs)
    assert sorted(ra.files) == sorted(rb.files)
    for k in ra.files:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
