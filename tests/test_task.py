"""The task model: the decision rule, the critical class as configuration, and its absence said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robustkit.cli import main
from robustkit.errors import ConfigError
from robustkit.model.adapter import load_model
from robustkit.results import load_results
from robustkit.runner import audit
from robustkit.task import Task

#: the toy model read as a tuberculosis classifier: nothing in the code may care which disease it is
TB = ("Tuberculosis", "Healthy", "Other disease")
RENAME = {"COVID-19": TB[0], "NORMAL": TB[1], "Viral Pneumonia": TB[2]}
ADVERSARIAL = {"norms": ["linf"], "epsilons_linf": [4 / 255, 16 / 255], "attack": "pgd", "steps": 4,
               "max_samples": 18, "n_bootstrap": 20, "check_samples": 4, "fgsm": False, "n_examples": 2}


def test_decide_is_the_arg_max_one_hot_or_each_output_at_its_threshold() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((50, 4))
    one_hot = Task(names=("a", "b", "c", "d")).decide(p)
    assert one_hot.sum(axis=1).tolist() == [1] * 50 and (one_hot.argmax(axis=1) == p.argmax(axis=1)).all()
    t = (0.2, 0.5, 0.7, 0.9)
    calls = Task(names=("a", "b", "c", "d"), exclusive=False, thresholds=t).decide(p)
    np.testing.assert_array_equal(calls, np.stack([p[:, k] >= t[k] for k in range(4)], axis=1))


def test_the_task_round_trips_through_results_and_refuses_an_unknown_critical_class() -> None:
    task = Task(names=("x", "y"), exclusive=False, critical="y", thresholds=(0.3, 0.6), threshold_source="given")
    model = {"output_kind": "multilabel", "thresholds": {"x": 0.3, "y": 0.6}, "threshold_source": "given"}
    assert Task.from_results(model, ["x", "y"], task.describe()) == task
    assert Task.from_results({"output_kind": "softmax"}, ["x", "y"]).critical is None  # an audit before 1.1
    with pytest.raises(ConfigError, match=r"'critical_class' option \(--critical-class\) must be one of .*'x', 'y'.*Got 'z'"):
        Task(names=("x", "y"), critical="z")


def _tb_audit(toy_model: Path, toy_data: Path, out: Path, critical: str | None):
    model = load_model(toy_model, class_names=list(TB))
    return audit(model, toy_data, studies=["adversarial", "calibration"], profile="quick", seed=1, out=out,
                 class_map=RENAME, critical_class=critical,
                 config={"adversarial": ADVERSARIAL, "calibration": {"n_bootstrap": 20, "shift_transforms": []}})


@pytest.mark.slow
def test_a_tuberculosis_model_gets_its_critical_numbers_by_configuration(toy_model, toy_data, tmp_path) -> None:
    res = _tb_audit(toy_model, toy_data, tmp_path / "tb", "Tuberculosis")
    assert res.task["critical_class"] == "Tuberculosis" and load_results(tmp_path / "tb").task == res.task
    adv = res.studies["adversarial"]
    # the critical miss rate, recomputed from the records: critical cases right when clean, called otherwise
    y = np.asarray(res.labels)[adv.records["index"]]
    clean_ok = adv.records["min_eps_linf"] > 0  # 0: wrong before any attack
    for k, e in enumerate(("4", "16")):
        hit = adv.records["adv_pred_linf"][:, k] != 0
        want = hit[clean_ok & (y == 0)].mean()
        assert adv.metrics[f"critical_miss_rate.linf.{e}"] == pytest.approx(want)
    assert adv.direction("critical_miss_rate.linf.4") == "lower"
    cal = res.studies["calibration"]
    assert "sensitivity_at_risk.Tuberculosis.0.05" in cal.metrics and cal.data["positive_class"] == "Tuberculosis"
    assert res.studies["clean"].data["headline"] == ["accuracy", "sensitivity.Tuberculosis", "auroc.macro"]
    assert not [c for _, c in res.checks() if c.name == "critical class"]
    html = (tmp_path / "tb" / "report.html").read_text()
    assert "Sensitivity is for Tuberculosis (the audit's critical class)" in html
    # the data's folders are named COVID-19 etc. (the class map says so); no study names a disease
    assert html.count("COVID") == html.count("COVID-19 \u2192 Tuberculosis") == 1


@pytest.mark.slow
def test_without_a_critical_class_the_audit_says_what_it_did_not_measure(toy_model, toy_data, tmp_path) -> None:
    res = _tb_audit(toy_model, toy_data, tmp_path / "none", None)
    assert res.task["critical_class"] is None and res.task["critical_class_source"] == "not set"
    adv, cal = res.studies["adversarial"], res.studies["calibration"]
    assert not [m for m in adv.metrics if m.startswith("critical_miss_rate")]
    assert not [m for m in cal.metrics if m.startswith("sensitivity_at_risk")]
    said = {s: c.detail for s, c in res.checks() if c.name == "critical class"}
    assert set(said) == {"adversarial", "calibration"} and all(c.startswith("no critical class was set") for c in said.values())
    assert res.studies["clean"].data["headline"] == ["accuracy", "auroc.macro"]
    html = (tmp_path / "none" / "report.html").read_text()
    assert "No critical class was set (--critical-class), so the sensitivity among kept cases was not measured" in html


def test_an_unknown_critical_class_is_one_line_exit_2(capsys, toy_model, toy_data, tmp_path) -> None:
    code = main(["audit", "--model", str(toy_model), "--data", str(toy_data), "--out", str(tmp_path / "x"),
                 "--studies", "clean", "--quiet", "--critical-class", "Fracture"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--critical-class" in err[0] and "'Fracture'" in err[0]
    assert not (tmp_path / "x" / "results.json").exists()
