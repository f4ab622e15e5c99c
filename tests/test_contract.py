"""The study contract, run over every registered study (built-in and a plug-in defined here).

For each study: ``map`` over the samples split into three shards in shuffled order, with
batch sizes 1, 7 and 32, then ``reduce``, gives the one-pass result (count-based metrics
exactly, floats within 1e-5, results.json equal apart from timings); the result validates
against the JSON Schema; the same seed gives the same numbers; and a bad value for every
config field is rejected with the one error form ("The 'x' parameter of study 'y' must be
...").
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from scipy.stats import binomtest

import robustkit
from robustkit.card import build_card
from robustkit.compare import paired_deltas
from robustkit.data.dataset import Dataset
from robustkit.data.loader import load_dataset
from robustkit.errors import ConfigError, check_range
from robustkit.model.adapter import load_model
from robustkit.plugins import _PLUGINS, CardBlock, CardItem, StudyPlugin, register_plugin
from robustkit.plugins import plugin as plugin_record
from robustkit.results import AuditResult, Check, StudyResult
from robustkit.studies import _REGISTRY, available, get_study, register
from robustkit.studies.base import EXTRA, AuditContext, Study, StudyConfig, merge_records
from robustkit.task import Task

SCHEMA = json.loads((Path(robustkit.__file__).parent / "schema" / "results.schema.json").read_text())


@dataclass(frozen=True)
class BrightnessConfig(StudyConfig):
    """A plug-in's config: one declared constraint."""

    gain: float = 1.5

    def validate(self) -> None:
        super().validate()
        check_range("gain", self.gain, low=0.0, low_open=True, where="study 'contract_plugin'")


class BrightnessStudy(Study[BrightnessConfig]):
    """The smallest third-party study, for every task kind: the calls under a seeded per-sample
    brightness gain. One map, one reduce, no branch on the kind: the task decides the calls
    (arg-max, or each output at its threshold), an image is right when every call matches its
    targets (accuracy for one label per image, exact match for several), and each output's
    agreement is read the same way. Its plug-in record (below) makes it compare and show on the card."""

    name = "contract_plugin"
    description = "the calls when each image is scaled by a random gain (a test plug-in)"
    Config = BrightnessConfig
    metric_docs = {"accuracy": ("share of images whose every call is right under the gain", "higher"),
                   "agreement": ("per output: share of images whose call of it is right", "higher")}
    multilabel = True

    def map(self, model, batch, ctx):
        h, w, c = model.input_shape
        x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
        gains = np.array([ctx.rng(self.name, str(i)).uniform(1.0, self.config.gain) for i in batch.ids])
        return {"probs": model.probs(np.clip(x * gains[:, None, None, None], 0, 1).astype(np.float32)),
                "gain": gains.astype(np.float32)}

    def reduce(self, records, data, ctx):
        right = ctx.task.decide(records["probs"]) == data.targets  # (N, K)
        correct = np.column_stack([right.all(axis=1), right])
        names = ["accuracy", *(f"agreement.{n}" for n in ctx.task.names)]
        res = StudyResult(name=self.name, metrics=dict(zip(names, map(float, correct.mean(axis=0)))))
        res.records.update(correct=correct, gain=records["gain"])
        res.data["correct_metrics"] = names
        res.checks = [Check("gain applied", "pass" if np.all(records["gain"] >= 1) else "fail", "")]
        return res


PLUGIN_RECORD = StudyPlugin("contract_plugin", f"{__name__}:BrightnessStudy", card=CardBlock(
    section="brightness", title="Brightness", items=(CardItem("accuracy", "accuracy under a random gain"),
                                                     CardItem("agreement.{critical}", "{critical} call under the gain"))))


#: small settings per study so that the suite runs in a minute on two cores
SMALL: dict[str, dict[str, Any]] = {
    "clean": {"n_bootstrap": 20},
    "perturbation": {"n_bootstrap": 20, "transforms": ["jpeg", "rotation", "marker"], "severities": [1, 5]},
    "noise": {"n_bootstrap": 20, "severities": [2, 5]},
    "adversarial": {"max_samples": 12, "norms": ["linf", "l2"], "foolbox_attacks": ["deepfool"],
                    "foolbox_samples": 3, "attack": "ensemble", "apgd_steps": 4, "square_queries": 20},
    "calibration": {"n_bootstrap": 20},
    "saliency": {"max_samples": 6, "methods": ["vanilla_gradient", "smoothgrad", "integrated_gradients", "gradcam"],
                 "smoothgrad_n": 4, "ig_steps": 8, "n_noise": 1, "stability_samples": 4, "independent": True},
    "slices": {"n_bootstrap": 20, "min_size": 6, "depth": 2, "probe_folds": 3},
    "ood": {"sets": ["ct", "synthetic", "effusion", "inverted"], "n_per_set": 4, "n_bootstrap": 20, "n_gallery": 2},
    "smoothing": {"max_samples": 9, "sigmas": [0.12, 0.5], "n0": 8, "n": 40, "radii": [0.0, 0.1, 0.25],
                  "check_samples": 3, "check_steps": 2, "check_draws": 4},
}


@pytest.fixture(scope="module", autouse=True)
def plugin():
    register(BrightnessStudy)
    register_plugin(PLUGIN_RECORD)
    yield
    _REGISTRY.pop(BrightnessStudy.name, None)
    _PLUGINS.pop(BrightnessStudy.name, None)


@pytest.fixture(scope="module")
def model(toy_model: Path):
    return load_model(toy_model, batch_size=16)


@pytest.fixture(scope="module")
def data(toy_data: Path):
    """The toy set with per-sample metadata (site, sex, age), so that the slices study slices."""
    ds = load_dataset(toy_data)
    samples = [dataclasses.replace(s, metadata=(("site", "ABC"[i % 3]), ("sex", "FM"[i // 3 % 2]), ("age", 20 + 2 * i)))
               for i, s in enumerate(ds.samples)]
    return Dataset(ds.root, ds.class_names, samples)


def _names() -> list[str]:
    return available() + [BrightnessStudy.name]


def _study(name: str) -> Study:
    cls = BrightnessStudy if name == BrightnessStudy.name else get_study(name)
    return cls.configure("quick", SMALL.get(name, {}))


def _task(model) -> Task:
    """The task the runner builds for ``model`` (no critical class: the contract holds without one)."""
    return Task.from_results(model.describe(), model.class_names)


def _sharded(study: Study, model, data, *, seed: int, batch_size: int) -> StudyResult:
    """The engine's work done by hand: shuffled shards, batches of ``batch_size``, merge, reduce."""
    ctx = AuditContext(seed=seed, model_info=model.describe(), task=_task(model))
    index = study.select(data, ctx)
    sub = data.subset(index)
    study.prepare(sub, ctx)
    order = np.random.default_rng(batch_size).permutation(len(sub))
    parts = []
    for shard in np.array_split(order, 3)[::-1]:
        for start in range(0, len(shard), batch_size):
            pos = shard[start:start + batch_size]
            parts.append((pos, study.map(model, sub.subset(pos), ctx)))
    records = merge_records(parts, len(sub), study=study.name)
    extra = study.extra_data(ctx)
    if extra is not None:  # a study's extra samples (OOD sets) go through the same shards and batches
        extra_parts = []
        for shard in np.array_split(np.random.default_rng(batch_size).permutation(len(extra)), 3):
            for start in range(0, len(shard), batch_size):
                pos = shard[start:start + batch_size]
                extra_parts.append((pos, study.map(model, extra.subset(pos), ctx)))
        merged = merge_records(extra_parts, len(extra), study=study.name)
        records.update({EXTRA + k: v for k, v in merged.items()})
    return study.finalize(study.reduce(records, sub, ctx), index, 0.0)


def _one_pass(study: Study, model, data, *, seed: int = 0) -> StudyResult:
    return study.execute(model, data, AuditContext(seed=seed, task=_task(model)), batch_size=len(data))


_WHOLE: dict[tuple[str, int], StudyResult] = {}


def _whole(name: str, model, data) -> StudyResult:
    """The one-pass result of study ``name`` at seed 0 with the SMALL settings (computed once)."""
    key = (name, id(model))
    if key not in _WHOLE:
        _WHOLE[key] = _one_pass(_study(name), model, data)
    return _WHOLE[key]


def _strip(obj: Any) -> Any:
    """results.json of a study without its timings."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in {"seconds", "time_s", "timings"}}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal JSON apart from floats, which agree within 1e-5 (relative or absolute)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys differ: {set(a) ^ set(b)}"
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), (
            f"{where}: {a} != {b}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name", _names())
def test_shards_and_batch_sizes_give_the_one_pass_result(name: str, model, data) -> None:
    study = _study(name)
    whole = _whole(name, model, data)
    assert whole.status == "ok"
    # batches of one image each, uneven batches, one batch; the adversarial study's attacks cost seconds
    # per batch (every attack of its ensemble), so it is sharded in uneven batches of 5 instead of 1 and 7
    for bs in ((5, 32) if name == "adversarial" else (1, 7, 32)):
        part = _sharded(study, model, data, seed=0, batch_size=bs)
        assert set(part.records) == set(whole.records)
        for key, arr in whole.records.items():
            other = part.records[key]
            assert other.shape == arr.shape, key
            if arr.dtype.kind in "biuUS":
                np.testing.assert_array_equal(other, arr, err_msg=f"{name}: {key} at batch size {bs}")
            else:
                np.testing.assert_allclose(other, arr, rtol=1e-5, atol=1e-5, err_msg=f"{name}: {key}, bs {bs}")
        _assert_close(_strip(whole.to_json()), _strip(part.to_json()), f"{name}@bs{bs}")


@pytest.mark.parametrize("name", _names())
def test_result_is_schema_valid_and_same_seed_same_numbers(name: str, model, data) -> None:
    a = _one_pass(_study(name), model, data, seed=5)
    b = _one_pass(_study(name), model, data, seed=5)
    jsonschema.validate(a.to_json(), {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/study"})
    assert json.dumps(_strip(a.to_json()), sort_keys=True) == json.dumps(_strip(b.to_json()), sort_keys=True)
    for key in a.records:
        np.testing.assert_array_equal(a.records[key], b.records[key])


def _invalid_values(hint: Any) -> list[Any]:
    """Values of the wrong type for a field with type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return [v for v in _invalid_values(inner[0]) if all(v not in _valid_sample(a) for a in inner)]
    if origin is tuple:
        return [[{"a": 1}]]
    if hint is bool:
        return ["yes", 1]
    if hint in (int, float):
        return ["many", True]
    if hint is str:
        return [3, ["a"]]
    return []


def _valid_sample(hint: Any) -> list[Any]:
    return [] if hint is not str else ["many", "yes"]


def _bad_configs() -> list[tuple[str, str, Any]]:
    cases = []
    for name in _names():
        cls = BrightnessStudy if name == BrightnessStudy.name else get_study(name)
        hints = typing.get_type_hints(cls.Config)
        for f in dataclasses.fields(cls.Config):
            for value in _invalid_values(hints[f.name]):
                cases.append((name, f.name, value))
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                cases.append((name, f.name, -10**9))  # below every declared lower bound in the house
    return cases


@pytest.mark.parametrize(("name", "key", "value"), _bad_configs())
def test_every_config_field_refuses_a_bad_value_with_the_one_error_form(name: str, key: str, value: Any) -> None:
    cls = BrightnessStudy if name == BrightnessStudy.name else get_study(name)
    if value == -10**9 and key in _UNBOUNDED.get(name, ()):
        pytest.skip(f"{name}.{key} takes any number")
    with pytest.raises(ConfigError, match=rf"^The '{key}' parameter of study '{name}' must be .+ Got .+ instead\.$"):
        cls.configure("standard", {key: value})


#: numeric fields with no lower bound (checked here so that the list stays honest)
_UNBOUNDED: dict[str, tuple[str, ...]] = {}


def test_merge_records_orders_shards_and_refuses_gaps() -> None:
    parts = [(np.array([2, 0]), {"v": np.array([20, 0])}), (np.array([1, 3]), {"v": np.array([10, 30])})]
    np.testing.assert_array_equal(merge_records(parts, 4)["v"], [0, 10, 20, 30])
    with pytest.raises(AssertionError, match="expected each of 0..4 once"):
        merge_records(parts, 5)
    with pytest.raises(AssertionError, match="rows for a batch of 2"):
        merge_records([(np.array([0, 1]), {"v": np.array([1])})], 2)


# ---------------------------------------------------------------- multi-label models


def _multilabel_names() -> list[str]:
    return [n for n in available() if get_study(n).multilabel] + [BrightnessStudy.name]


@pytest.fixture(scope="module")
def ml_model(toy_multilabel_model: Path):
    adapter = load_model(toy_multilabel_model, batch_size=16)
    adapter.thresholds, adapter.threshold_source = np.array([0.3, 0.5, 0.7]), "given (a test)"
    return adapter


@pytest.fixture(scope="module")
def ml_data(toy_multilabel: Path, ml_model):
    return load_dataset(toy_multilabel).with_class_order(list(ml_model.class_names))


@pytest.mark.slow
@pytest.mark.parametrize("name", _multilabel_names())
def test_multilabel_studies_keep_the_contract(name: str, ml_model, ml_data) -> None:
    """Every study that scores multi-label models: shards and batch sizes give the one-pass
    result, schema-valid, same seed same numbers."""
    assert ml_model.output_kind == "multilabel"
    study = _study(name)
    whole = _whole(name, ml_model, ml_data)
    assert whole.status == "ok", whole.error
    jsonschema.validate(whole.to_json(), {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/study"})
    for bs in (1, 7):
        part = _sharded(study, ml_model, ml_data, seed=0, batch_size=bs)
        assert set(part.records) == set(whole.records)
        for key, arr in whole.records.items():
            if arr.dtype.kind in "biuUS":
                np.testing.assert_array_equal(part.records[key], arr, err_msg=f"{name}: {key} at batch size {bs}")
            else:  # within 1e-5 of the record's scale: a score built from large terms (ViM) carries their noise
                scale = float(np.nanmax(np.abs(arr))) if np.isfinite(arr).any() else 1.0
                np.testing.assert_allclose(part.records[key], arr, rtol=1e-5, atol=1e-5 * max(1.0, scale),
                                           err_msg=f"{name}: {key}")
        _assert_close(_strip(whole.to_json()), _strip(part.to_json()), f"{name}@bs{bs}")


# ---------------------------------------------------------------- the card and compare, for every kind


def _as_audit(name: str, result: StudyResult, model, data) -> AuditResult:
    """One study's result as a stored audit whose critical class is the model's first output."""
    task = dataclasses.replace(_task(model), critical=model.class_names[0])
    return AuditResult(model=model.describe(), dataset={"fingerprint": "x"}, config={}, environment={},
                       ids=np.asarray(data.ids), labels=np.asarray(data.labels), class_names=list(model.class_names),
                       studies={name: result}, task=task.describe(),
                       targets=None if task.exclusive else data.targets)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["softmax", "multilabel"])
def test_every_study_shows_its_stored_numbers_on_the_card(kind: str, model, data, ml_model, ml_data) -> None:
    """Each study's declared card block gives at least one number for every task kind, each the
    stored metric itself (a block that reads metrics the study does not write fails here)."""
    m, d = (model, data) if kind == "softmax" else (ml_model, ml_data)
    for name in _names() if kind == "softmax" else _multilabel_names():
        result = _whole(name, m, d)
        card = build_card(_as_audit(name, result, m, d))
        record = plugin_record(name)
        assert record is not None and record.card is not None, f"{name} declares no card block"
        shown = [n for n in card.sections[record.card.section or name] if n.metric.startswith(f"{name}.")]
        assert shown, f"{kind}: study {name!r} shows no number on the card ({card.notes})"
        for n in shown:
            assert n.value == pytest.approx(result.metrics[n.metric.split(".", 1)[1]], nan_ok=True)


def test_the_toy_study_compares_with_mcnemar_on_its_records(model, data) -> None:
    runs = [_one_pass(BrightnessStudy.configure("quick", {"gain": g}), model, data) for g in (1.01, 4.0)]
    base, cand = (_as_audit(BrightnessStudy.name, r, model, data) for r in runs)
    (delta,) = paired_deltas(base, cand, ["contract_plugin.accuracy"], correction="none")
    a, b = (r.records["correct"][:, 0].astype(bool) for r in runs)
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    assert delta.test == "mcnemar-exact" and delta.discordant == (lost, gained) and lost + gained > 0
    assert delta.p_value == pytest.approx(binomtest(min(lost, gained), lost + gained, 0.5).pvalue)
    assert delta.delta == pytest.approx(b.mean() - a.mean())
