"""gate: policy validation, pass/fail with exit codes 0/1/2, JUnit XML, GitHub annotations, max_drop."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from robustkit import cli
from robustkit.errors import ConfigError
from robustkit.gate import gate
from robustkit.policy import load_policy, parse_policy
from robustkit.results import load_results, save_results
from tests.test_compare import _parser_with_commands, flipped, make_audit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def base_correct() -> np.ndarray:
    return np.random.default_rng(0).random(300) < 0.85


@pytest.fixture()
def audits(base_correct, tmp_path) -> dict[str, Path]:
    """A baseline, a candidate one sample worse, and a candidate 60 samples worse."""
    return {
        "base": save_results(make_audit(base_correct, name="base"), tmp_path / "base"),
        "one": save_results(make_audit(flipped(base_correct, 1, to=False), name="one"), tmp_path / "one"),
        "bad": save_results(make_audit(flipped(base_correct, 60, to=False), name="bad"), tmp_path / "bad"),
    }


def write_policy(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


def run(argv: list[str], monkeypatch) -> int:
    _parser_with_commands(monkeypatch)
    return cli.main(argv)


PASSING = """
judge = "point"  # these audits store no intervals
[[rule]]
metric = "clean.accuracy"
min = 0.5
[[rule]]
metric = "perturbation.accuracy.*.1"
min = 0.3
name = "mild shifts"
[[rule]]
metric = "calibration.ece"
max = 0.5
"""


def test_gate_passes_exit_0_with_junit(audits, tmp_path, monkeypatch, capsys) -> None:
    junit = tmp_path / "gate.xml"
    code = run(["gate", str(audits["base"]), "--policy", str(write_policy(tmp_path, PASSING)), "--junit", str(junit)], monkeypatch)
    assert code == 0
    out = capsys.readouterr().out
    assert "3 of 3 rules passed" in out and "PASS    rule 2: mild shifts" in out
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 3 and not root.findall(".//failure")
    assert root.find("testsuite").get("tests") == "3"


def test_gate_fails_exit_1_junit_counts_rules_and_github_errors(audits, tmp_path, monkeypatch, capsys) -> None:
    policy = write_policy(tmp_path, PASSING + '[[rule]]\nmetric = "clean.accuracy"\nmin = 0.99\nname = "too strict"\n')
    junit = tmp_path / "gate.xml"
    code = run(["gate", str(audits["base"]), "--policy", str(policy), "--junit", str(junit), "--format", "github"], monkeypatch)
    assert code == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("::error ")]
    assert len(errors) == 1 and errors[0].startswith("::error title=robustkit gate%3A FAIL rule 4%3A too strict::FAIL clean.accuracy = ")
    assert "is below min 0.99" in errors[0]
    assert sum(line.startswith("::notice ") for line in out.splitlines()) == 3
    root = ET.parse(junit).getroot()
    assert len(root.findall(".//testcase")) == 4
    failures = root.findall(".//failure")
    assert len(failures) == 1 and "below min" in failures[0].get("message")


def test_wildcard_rule_fails_when_one_match_fails(audits) -> None:
    report = gate(audits["base"], {"judge": "point", "rule": [{"metric": "perturbation.accuracy.*", "min": 0.7}]})
    (rule,) = report.rules
    assert len(rule.outcomes) == 6
    values = {k: v for k, v in load_results(audits["base"]).metrics().items() if k.startswith("perturbation.accuracy.")}
    assert len(values) == 6  # the expected failures come from the audit itself, not from the gate's report
    assert {m.metric for m in rule.outcomes if not m.passed} == {k for k, v in values.items() if v < 0.7} != set()
    assert not rule.passed and report.exit_code == 1


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"metric": "clean.nope", "min": 0.1}, "rule 1"),
        ({"metric": "noise.accuracy.*", "min": 0.1}, "matches nothing"),
        ({"metric": "clean.accuracy"}, "at least one of min, max, max_drop"),
        ({"metric": "clean.accuracy", "min": "high"}, "'min' parameter of rule 1"),
        ({"metric": "clean.accuracy", "min": 0.1, "maxx": 2}, "unknown key 'maxx'"),
        ({"metric": "clean.accuracy", "max_drop": -0.1}, "'max_drop' parameter"),
        ({"metric": "clean.accuracy", "min": 0.1}, "judge = 'bound' needs a 95% interval"),
        ({"metric": "clean.accuracy", "min": 0.1, "judge": "median"}, "'judge' parameter of rule 1"),
        ({"metric": "clean.accuracy", "noninferior": -0.1}, "'noninferior' parameter"),
        ({"metric": 3, "min": 0.1}, "'metric' parameter"),
    ],
)
def test_bad_rules_are_errors_naming_the_rule(audits, rule, expected) -> None:
    with pytest.raises(ConfigError, match=expected):
        gate(audits["base"], {"rule": [rule]})


def test_missing_metric_exits_2_not_a_pass(audits, tmp_path, monkeypatch, capsys) -> None:
    policy = write_policy(tmp_path, '[[rule]]\nmetric = "adversarial.robust_accuracy.linf.1"\nmin = 0.5\n')
    assert run(["gate", str(audits["base"]), "--policy", str(policy), "--format", "github"], monkeypatch) == 2
    cap = capsys.readouterr()
    assert "adversarial.robust_accuracy.linf.1" in cap.err and "rule 1" in cap.err
    assert cap.out.startswith("::error title=robustkit gate%3A input error::")


def test_bad_toml_and_unknown_top_level_key_exit_2(audits, tmp_path, monkeypatch) -> None:
    assert run(["gate", str(audits["base"]), "--policy", str(write_policy(tmp_path, "[[rule]\n"))], monkeypatch) == 2
    with pytest.raises(ConfigError, match="unknown key 'rules'"):
        parse_policy({"rules": []})


def test_max_drop_significant_vs_insignificant(audits) -> None:
    policy = {"rule": [{"metric": "clean.accuracy", "max_drop": 0.01}, {"metric": "clean.sensitivity.*", "max_drop": 0.01}]}
    ok = gate(audits["one"], policy, baseline=audits["base"])
    assert ok.exit_code == 0  # a one-sample drop (0.3 %) is neither large nor significant
    bad = gate(audits["bad"], policy, baseline=audits["base"])
    assert bad.exit_code == 1 and not bad.rules[0].passed
    assert "dropped significantly" in bad.rules[0].reason
    loose = gate(audits["bad"], {"rule": [{"metric": "clean.accuracy", "max_drop": 0.5}]}, baseline=audits["base"])
    assert loose.exit_code == 0  # significant, but within the margin


def test_max_drop_large_but_not_significant_passes(base_correct, tmp_path) -> None:
    small = base_correct[:20]
    base = make_audit(small)
    cand = make_audit(flipped(small, 2, to=False))  # 10 points down on 20 samples: p = 0.5
    report = gate(cand, {"rule": [{"metric": "clean.accuracy", "max_drop": 0.05}]}, baseline=base)
    assert report.exit_code == 0 and "p_adj=0.5" in report.rules[0].outcomes[0].reason


def test_starter_policy_parses() -> None:
    policy = load_policy(REPO / "data" / "policy.toml")
    assert len(policy.rules) >= 4 and any(r.max_drop is not None for r in policy.rules)
    assert policy.alpha == 0.05
