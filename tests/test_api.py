"""The public API: names resolve, modules declare __all__, no TensorFlow where none is needed."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import robustkit


def test_public_names_resolve_and_stay_callable_after_submodule_imports() -> None:
    import robustkit.model.training  # noqa: F401
    import robustkit.runner  # noqa: F401  (a module named like a function would shadow it)

    for name in robustkit.__all__:
        assert getattr(robustkit, name) is not None
    assert callable(robustkit.audit) and callable(robustkit.train_model)
    assert callable(robustkit.load_results) and callable(robustkit.render_report)


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(robustkit.__path__, "robustkit."):
        if info.name.rsplit(".", 1)[-1].startswith("_") or info.name == "robustkit.templates":
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("module", _modules())
def test_every_public_module_declares_what_it_exports(module: str) -> None:
    if module in {"robustkit.__main__"}:
        pytest.skip("entry point")
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{module} has no __all__"
    for name in exported:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name!r}"


def test_results_report_compare_gate_import_without_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys, robustkit, robustkit.results, robustkit.report, robustkit.compare, robustkit.gate, "
        "robustkit.metrics.classification, robustkit.metrics.paired, robustkit.metrics.calibration, robustkit.metrics.saliency, "
        "robustkit.data.dataset, robustkit.data.phantom, robustkit.data.transforms, robustkit.config; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_api_audit_round_trip(toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    result = robustkit.audit(toy_model, toy_data, studies=["clean", "calibration"], profile="quick", seed=2,
                             out=tmp_path)
    rec = result.records("clean")  # the metric is the share of argmax hits among the stored probabilities
    hits = rec["probs"].argmax(axis=1) == result.labels[rec["index"]]
    assert result.metric("clean.accuracy") == pytest.approx(hits.mean(), abs=1e-12)
    again = robustkit.load_results(tmp_path)
    assert again.metric("clean.accuracy") == result.metric("clean.accuracy")
    page = robustkit.render_report(again, tmp_path / "again.html")
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert json.loads((tmp_path / "results.json").read_text())["config"]["profile"] == "quick"
    exported = json.loads((tmp_path / "temperature.json").read_text())  # for a deployment to read
    assert exported["temperature"] == pytest.approx(result.metric("calibration.temperature"))


def test_audit_option_groups_and_their_shortcuts_meet() -> None:
    """audit()'s shortcuts land in the group that owns them; a clash or an unknown keyword is refused."""
    from robustkit.config import DataIntake, EngineSpec, ModelSpec, group_options

    spec, intake, engine = group_options({"masks": "lung", "workers": 3, "output": "sigmoid"},
                                         model=ModelSpec(trust_model=True), intake=None, engine="ray")
    assert spec == ModelSpec(trust_model=True, output="sigmoid")
    assert intake == DataIntake(masks="lung")
    assert engine == EngineSpec(name="ray", workers=3)
    assert engine.table() == {"name": "ray", "address": None, "workers": 3, "cpus_per_worker": None,
                              "gpus_per_worker": None, "connect_timeout": None}
    with pytest.raises(TypeError, match="'mask'"):
        group_options({"mask": "lung"}, model=None, intake=None, engine=None)
    with pytest.raises(TypeError, match="give one"):
        group_options({"masks": "lung"}, model=None, intake=DataIntake(masks="lesion"), engine=None)
    # the same value twice is not a clash
    assert group_options({"masks": "lung"}, model=None, intake=DataIntake(masks="lung"), engine=None)[1].masks == "lung"
