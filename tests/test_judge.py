"""The acceptance judge: gate and card agree, interval-bound rules, non-inferiority, skipped rules.

Known answers and independent computations: Tango's score interval against a slow
reference (the restricted maximum likelihood found numerically, the interval by scanning
the score test), the non-inferiority outcomes of built cases against that reference, the
JUnit file read back as a JUnit reader reads it.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar
from scipy.stats import norm

from robustkit import cli
from robustkit.card import build_card
from robustkit.card_export import card_html, card_json
from robustkit.errors import ConfigError
from robustkit.gate import gate
from robustkit.judge import judge
from robustkit.metrics.noninferiority import tango_interval, tango_pvalue, tango_score
from robustkit.policy import load_policy
from tests.test_card import make_audit as card_audit
from tests.test_compare import _parser_with_commands
from tests.test_compare import make_audit as paired_audit

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- Tango's interval: a slow reference


def _slow_score(gained: int, lost: int, n: int, delta: float) -> float:
    """The score statistic with the restricted MLE found numerically (no closed form)."""
    lo, hi = max(0.0, -delta), min(1.0, (1.0 - delta) / 2.0)  # p_lost and p_gained = p_lost + delta feasible
    if hi - lo < 1e-15:
        q = lo
    else:
        def nll(p: float) -> float:
            cells = np.array([p + delta, p, 1.0 - 2.0 * p - delta])
            counts = np.array([gained, lost, n - gained - lost])
            return -float(np.sum(counts[counts > 0] * np.log(np.clip(cells[counts > 0], 1e-300, None))))

        q = float(minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x)
    var = n * (2.0 * q + delta * (1.0 - delta))
    return (gained - lost - n * delta) / math.sqrt(var) if var > 0 else math.copysign(math.inf, gained - lost - n * delta)


def _slow_interval(gained: int, lost: int, n: int, level: float) -> tuple[float, float]:
    z = norm.isf((1 - level) / 2)
    est = (gained - lost) / n
    grid = np.linspace(-1 + 1e-9, 1 - 1e-9, 401)
    accepted = [d for d in [*grid, est] if abs(_slow_score(gained, lost, n, d)) <= z]
    lo, hi = min(accepted), max(accepted)  # refine each end between grid points
    step = grid[1] - grid[0]
    if lo > grid[0]:
        lo = brentq(lambda d: _slow_score(gained, lost, n, d) - z, max(lo - step, grid[0]), min(lo, est))
    if hi < grid[-1]:
        hi = brentq(lambda d: _slow_score(gained, lost, n, d) + z, max(hi, est), min(hi + step, grid[-1]))
    return float(lo), float(hi)


@pytest.mark.parametrize(("gained", "lost", "n", "level"), [
    (18, 24, 300, 0.90), (5, 15, 300, 0.95), (0, 0, 50, 0.95), (0, 7, 40, 0.90), (12, 3, 100, 0.99), (30, 30, 3000, 0.90),
])
def test_tango_interval_matches_a_slow_reference(gained, lost, n, level) -> None:
    fast = tango_interval(gained, lost, n, level=level)
    slow = _slow_interval(gained, lost, n, level)
    assert fast == pytest.approx(slow, abs=2e-6)
    assert fast[0] <= (gained - lost) / n <= fast[1]


def test_tango_known_answers() -> None:
    # no discordant pair: the bounds solve n|d| / (1 - |d|) = z^2, i.e. |d| = z^2 / (n + z^2)
    z = norm.isf(0.025)
    assert tango_interval(0, 0, 50) == pytest.approx((-z**2 / (50 + z**2), z**2 / (50 + z**2)), abs=1e-9)
    assert tango_score(10, 10, 100, 0.0) == 0.0
    # the p-value at an end of the two-sided 1 - 2 alpha interval is alpha: bound and test agree
    lo, hi = tango_interval(18, 24, 300, level=0.90)
    assert tango_pvalue(18, 24, 300, lo, alternative="greater") == pytest.approx(0.05, abs=1e-6)
    assert tango_pvalue(18, 24, 300, hi, alternative="less") == pytest.approx(0.05, abs=1e-6)


# ---------------------------------------------------------------- non-inferiority: the built cases


def _pair_with(n: int, lost: int, gained: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Baseline and candidate correctness: ``lost`` samples only the baseline gets right,
    ``gained`` only the candidate, the rest the same (85% right)."""
    rng = np.random.default_rng(seed)
    base = rng.random(n) < 0.85
    cand = base.copy()
    right, wrong = np.flatnonzero(base), np.flatnonzero(~base)
    cand[rng.choice(right, lost, replace=False)] = False
    cand[rng.choice(wrong, gained, replace=False)] = True
    return base, cand


def test_real_two_point_drop_on_300_images_passes_max_drop_and_fails_noninferior() -> None:
    base_c, cand_c = _pair_with(300, lost=24, gained=18)  # a real drop of 6 / 300 = 2 points
    base, cand = paired_audit(base_c), paired_audit(cand_c)
    policy = {"rule": [{"metric": "clean.accuracy", "max_drop": 0.05, "name": "lenient"},
                       {"metric": "clean.accuracy", "noninferior": 0.05, "name": "non-inferior"}]}
    j = judge(cand, policy, baseline=base)
    lenient, strict = j.outcomes()
    assert lenient.status == "PASS" and strict.status == "FAIL" and j.exit_code == 1
    assert strict.difference == pytest.approx(-0.02) and lenient.difference == pytest.approx(-0.02)
    lo, hi = _slow_interval(18, 24, 300, 0.90)  # one-sided 95% bound = an end of the two-sided 90% interval
    assert strict.judged_value == pytest.approx(-lo, abs=2e-6) and strict.judged_value > 0.05
    assert strict.difference_interval == pytest.approx((lo, hi), abs=2e-6) and strict.method == "tango-score"
    assert f"upper bound {-lo:.4g}" in strict.reason and "does not exclude" in strict.reason
    assert lenient.method == "mcnemar-exact" and "within 0.05" in lenient.reason


def test_no_drop_on_3000_paired_images_passes_both() -> None:
    base_c, cand_c = _pair_with(3000, lost=30, gained=30)
    base, cand = paired_audit(base_c), paired_audit(cand_c)
    policy = {"rule": [{"metric": "clean.accuracy", "max_drop": 0.05}, {"metric": "clean.accuracy", "noninferior": 0.05}]}
    lenient, strict = judge(cand, policy, baseline=base).outcomes()
    assert lenient.status == strict.status == "PASS"
    lo, _ = _slow_interval(30, 30, 3000, 0.90)
    assert strict.judged_value == pytest.approx(-lo, abs=2e-6) and strict.judged_value < 0.01


def test_noninferior_lower_is_better_uses_the_paired_bootstrap_mirrored() -> None:
    rng = np.random.default_rng(3)
    correct = rng.random(600) < 0.85
    base, same, worse = paired_audit(correct), paired_audit(correct), paired_audit(correct, conf_shift=-0.25)
    rule = {"rule": [{"metric": "calibration.ece", "noninferior": 0.02}]}
    (ok,) = judge(same, rule, baseline=base).outcomes()
    (bad,) = judge(worse, rule, baseline=base).outcomes()
    assert ok.method == bad.method == "paired-bootstrap" and ok.status == "PASS" and bad.status == "FAIL"
    rise = worse.metrics()["calibration.ece"] - base.metrics()["calibration.ece"]
    assert bad.difference == pytest.approx(rise) and bad.judged_value >= rise  # the bound lies above the observed rise
    assert bad.judged_value == pytest.approx(bad.difference_interval[1])  # lower is better: the upper end


def test_noninferior_holm_over_the_metrics_a_rule_matches() -> None:
    base_c, cand_c = _pair_with(300, lost=3, gained=3)
    policy = {"rule": [{"metric": "clean.sensitivity.*", "noninferior": 0.10}]}
    outs = judge(paired_audit(cand_c), policy, baseline=paired_audit(base_c)).outcomes()
    assert len(outs) == 3
    raw = sorted(tango_pvalue(*_discordant(base_c, cand_c, k), 100, -0.10) for k in range(3))
    adjusted = sorted(o.p_adjusted for o in outs)
    assert adjusted[0] == pytest.approx(min(1.0, 3 * raw[0]))  # Holm's first step: the smallest p times 3


def _discordant(base: np.ndarray, cand: np.ndarray, k: int) -> tuple[int, int]:
    m = np.arange(len(base)) % 3 == k
    return int(np.sum(~base[m] & cand[m])), int(np.sum(base[m] & ~cand[m]))


# ---------------------------------------------------------------- gate and card agree


def _statuses_from_junit(path: Path) -> dict[str, str]:
    """Each test case's result as a JUnit reader sees it: failure / error / skipped child, else passed."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        out[case.get("name")] = {"failure": "FAIL", "skipped": "SKIPPED"}.get(kinds[0], "ERROR") if kinds else "PASS"
    return out


@pytest.mark.parametrize("setting", ["bound", "point"])
def test_the_issue_example_gives_the_same_verdicts_in_gate_and_card(setting, tmp_path, monkeypatch, capsys) -> None:
    audit = card_audit()
    acc, (acc_lo, _) = audit.metric("clean.accuracy"), audit.interval("clean.accuracy")
    sens, (sens_lo, _) = audit.metric("clean.sensitivity.COVID-19"), audit.interval("clean.sensitivity.COVID-19")
    policy = tmp_path / "policy.toml"  # the issue's example: each threshold between the point and the bound
    policy.write_text(f'judge = "{setting}"\n'
                      f'[[rule]]\nname = "clean accuracy"\nmetric = "clean.accuracy"\nmin = {(acc + acc_lo) / 2:.4f}\n'
                      f'[[rule]]\nname = "COVID-19 sensitivity"\nmetric = "clean.sensitivity.COVID-19"\n'
                      f'min = {(sens + sens_lo) / 2:.4f}\n'
                      '[[rule]]\nmetric = "calibration.ece"\nmax = 0.10\n')  # ece 0.081 in [0.05, 0.11]
    folder = tmp_path / "audit"
    from robustkit.results import save_results

    save_results(audit, folder)
    junit = tmp_path / "gate.xml"
    _parser_with_commands(monkeypatch)
    code = cli.main(["gate", str(folder), "--policy", str(policy), "--junit", str(junit), "--format", "github"])
    out = capsys.readouterr().out
    want = "FAIL" if setting == "bound" else "PASS"
    assert code == (1 if setting == "bound" else 0)
    gate_lines = re.findall(r"^(PASS|FAIL|SKIPPED) +rule (\d): ", out, flags=re.M)
    assert gate_lines == [(want, "1"), (want, "2"), (want, "3")]
    assert set(_statuses_from_junit(junit).values()) == {want}
    assert len(re.findall(r"^::(error|notice) ", out, flags=re.M)) == 3
    card = build_card(folder, policy=policy)
    assert [(o.rule, o.status) for o in card.acceptance] == [(1, want), (2, want), (3, want)]
    assert card.verdict == want and card_json(card)["verdict"] == want
    assert [r["status"] for r in card_json(card)["acceptance"]] == [want] * 3
    # the same outcome fields in gate's text and on the card
    for o in card.acceptance:
        assert o.line() in out.replace("%0A", "\n") or o.line() in out
        html = unescape(re.sub(r"<[^>]+>", " ", card_html(card)))
        assert o.reason in html
    if setting == "bound":
        assert "clears min" in card.acceptance[0].reason and "but the lower bound" in card.acceptance[0].reason


def test_a_renamed_metric_names_its_new_name(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"renamed in results schema 2.0: use 'clean.sensitivity.COVID-19'"):
        judge(card_audit(), {"rule": [{"metric": "clean.recall.COVID-19", "min": 0.9}]})


def test_bound_without_an_interval_is_an_error_naming_the_metric() -> None:
    audit = card_audit()  # its calibration.temperature has no interval
    with pytest.raises(ConfigError, match=r"rule 1 .*'calibration.temperature'.*judge = \"point\""):
        judge(audit, {"rule": [{"metric": "calibration.temperature", "max": 3.0}]})
    (o,) = judge(audit, {"rule": [{"metric": "calibration.temperature", "max": 3.0, "judge": "point"}]}).outcomes()
    assert o.status == "PASS" and o.judged == "point"


# ---------------------------------------------------------------- no baseline: SKIPPED


NO_BASELINE = """
[[rule]]
metric = "clean.accuracy"
min = 0.5
[[rule]]
metric = "clean.accuracy"
noninferior = 0.05
[[rule]]
metric = "clean.sensitivity.*"
max_drop = 0.05
"""


def test_rules_needing_a_baseline_are_skipped_in_text_junit_and_card(tmp_path, monkeypatch, capsys) -> None:
    from robustkit.results import save_results

    folder = save_results(card_audit(), tmp_path / "audit")
    policy = tmp_path / "p.toml"
    policy.write_text(NO_BASELINE)
    junit = tmp_path / "gate.xml"
    _parser_with_commands(monkeypatch)
    assert cli.main(["gate", str(folder), "--policy", str(policy), "--junit", str(junit), "--format", "github"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^(PASS|FAIL|SKIPPED) +rule", out, flags=re.M) == ["PASS", "SKIPPED", "SKIPPED"]
    assert "1 of 3 rules passed, 0 failed, 2 skipped (no baseline)" in out
    assert len(re.findall(r"^::warning ", out, flags=re.M)) == 2 and "needs a baseline audit" in out
    statuses = _statuses_from_junit(junit)
    assert list(statuses.values()) == ["PASS", "SKIPPED", "SKIPPED"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "0", "2")
    case = suite.findall("testcase")[1]  # the outcome's fields travel as JUnit properties
    props = {q.get("name"): q.get("value") for q in case.iter("property")}
    assert props["outcome.0.form"] == "noninferior" and props["outcome.0.status"] == "SKIPPED"
    assert props["outcome.0.metric"] == "clean.accuracy" and props["outcome.0.threshold"] == "0.05"
    assert props["outcome.0.reason"].startswith("not judged") and props["outcome.0.judged"] == "drop upper bound"
    assert float(props["outcome.0.value"]) == card_audit().metric("clean.accuracy")
    card = build_card(folder, policy=policy)
    assert [o.status for o in card.acceptance] == ["PASS", "SKIPPED", "SKIPPED", "SKIPPED", "SKIPPED"]
    assert card.verdict == "PASS" and any("not judged" in t for t in card.limitations)
    data = card_json(card)
    assert all(r["reason"].startswith("not judged: needs a baseline") for r in data["acceptance"][1:])
    html = unescape(re.sub(r"<[^>]+>", " ", card_html(card)))
    assert html.count("SKIPPED") >= 4
    # --require-baseline: the same rules fail, with the reason
    assert cli.main(["gate", str(folder), "--policy", str(policy), "--require-baseline"]) == 1
    out = capsys.readouterr().out
    assert "FAIL    rule 2" in out and "--require-baseline was given" in out


def test_card_json_acceptance_fields_are_the_judge_outcome_fields(tmp_path) -> None:
    import jsonschema

    schema = json.loads((REPO / "robustkit" / "schema" / "card.schema.json").read_text())
    policy = tmp_path / "p.toml"
    policy.write_text(NO_BASELINE)
    card = build_card(card_audit(), policy=policy, baseline=card_audit())
    data = card_json(card)
    jsonschema.validate(data, schema)
    row = data["acceptance"][1]  # the same audit as its own baseline: no drop, 90 pairs
    assert row["form"] == "noninferior" and row["method"] == "tango-score" and row["status"] == "PASS"
    z = norm.isf(0.05)
    assert row["difference"] == 0.0 and row["judged_value"] == pytest.approx(z**2 / (90 + z**2), abs=1e-9)
    assert set(row) == set(schema["$defs"]["acceptance_row"]["required"])


def test_starter_policy_runs_on_an_audit_without_a_baseline() -> None:
    policy = load_policy(REPO / "data" / "policy.toml")
    assert policy.judge == "bound" and {r.judge for r in policy.rules} == {"bound"}
    forms = {f for r in policy.rules for f, _ in r.bounds()}
    assert {"min", "max", "max_drop", "noninferior"} <= forms
    audit = card_audit(extra=None)
    clean_rules = {"rule": [{"metric": r.metric, **dict(r.bounds())} for r in policy.rules
                            if r.metric.startswith(("clean.", "calibration.ece"))]}
    report = gate(audit, clean_rules)
    assert report.judgement.count("SKIPPED") == sum(r.needs_baseline for r in policy.rules
                                                    if r.metric.startswith(("clean.", "calibration.ece")))
