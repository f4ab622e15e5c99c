"""Gate a checkpoint in CI: a policy file of rules over the flat metric map -> exit code.

A policy (TOML) is a list of ``[[rule]]`` tables::

    [[rule]]
    metric = "clean.accuracy"            # full dotted name; fnmatch wildcards allowed
    min = 0.90                           # the value must be >= min
    [[rule]]
    metric = "calibration.ece"
    max = 0.05                           # the value must be <= max
    [[rule]]
    metric = "clean.sensitivity.COVID-19"
    max_drop = 0.01                      # against a baseline audit (--baseline)
    name = "COVID-19 sensitivity holds" # optional, shown in CI
    description = "..."                  # optional

A metric spelt exactly as the audit names it is matched as it is, so a finding's name may
hold spaces or glob characters (``metric = "clean.auroc.Pleural Effusion"``: a TOML string
needs no further quoting); otherwise ``metric`` is an fnmatch pattern
(``clean.auroc.*`` is every finding and the macro and micro means). A rule holds when
every metric it matches holds every bound it sets. ``max_drop`` fails on
a drop (a change in the metric's bad direction) larger than ``max_drop`` that the paired
test of :mod:`robustkit.compare` finds significant (Holm-adjusted over the metrics the rule
matches); a metric that cannot be tested (no per-sample records recompute it) fails on an
observed drop larger than ``max_drop``, so that a gate never passes for want of a test.
An optional top-level ``alpha`` (default 0.05) sets the significance level.

Errors, not failures (exit 2): unknown keys, wrong types, a rule with no bound, a pattern
that matches no metric (the message lists the audit's closest names), a metric the audit
(or the baseline) does not have, ``max_drop``
without a baseline or on a metric that has no direction. No TensorFlow here.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from robustkit.compare import MetricDelta, check_comparable, paired_deltas
from robustkit.config import read_toml
from robustkit.errors import ConfigError, check_range, param_error
from robustkit.results import AuditResult, load_results, require_current

__all__ = ["GateReport", "MetricOutcome", "Policy", "Rule", "RuleOutcome", "gate", "github_error", "load_policy", "parse_policy"]

_RULE_KEYS = ("metric", "min", "max", "max_drop", "name", "description")
_TOP_KEYS = ("rule", "alpha")


@dataclass(frozen=True)
class Rule:
    """One policy rule; ``index`` counts from 1 in file order."""

    index: int
    metric: str
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None
    name: str = ""
    description: str = ""

    @property
    def title(self) -> str:
        """The rule's name, or a description of it built from its bounds."""
        if self.name:
            return self.name
        bounds = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else "",
                  f"drops <= {self.max_drop:g}" if self.max_drop is not None else ""]
        return f"{self.metric} " + ", ".join(b for b in bounds if b)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    alpha: float = 0.05
    source: str = "policy"


@dataclass(frozen=True)
class MetricOutcome:
    """One matched metric of a rule: its value, whether it held, and why."""

    metric: str
    value: float
    passed: bool
    message: str


@dataclass(frozen=True)
class RuleOutcome:
    rule: Rule
    metrics: list[MetricOutcome]

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics)

    @property
    def message(self) -> str:
        failed = [m.message for m in self.metrics if not m.passed]
        if failed:
            return "; ".join(failed)
        return f"{len(self.metrics)} metric{'s' if len(self.metrics) != 1 else ''} held"


@dataclass(frozen=True)
class GateReport:
    """The outcome of every rule; ``exit_code`` is 0 when all hold, else 1."""

    rules: list[RuleOutcome]
    source: str = "policy"
    baseline: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def text(self) -> str:
        """A plain summary: one line per rule, failing metrics indented under it."""
        lines = []
        for r in self.rules:
            lines.append(f"{'PASS' if r.passed else 'FAIL'}  rule {r.rule.index}: {r.rule.title}")
            lines.extend(f"      {m.message}" for m in r.metrics if not m.passed)
        n_ok = sum(r.passed for r in self.rules)
        lines.append(f"gate: {n_ok} of {len(self.rules)} rules passed ({self.source}) -> {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)

    def github(self) -> str:
        """GitHub Actions workflow commands: ``::error`` per failing rule, ``::notice`` per pass."""
        lines = []
        for r in self.rules:
            kind = "notice" if r.passed else "error"
            lines.append(f"::{kind} title={_gh_prop('robustkit gate: ' + r.rule.title)}::{_gh_data(r.message)}")
        return "\n".join(lines)

    def junit(self) -> str:
        """JUnit XML: one ``testsuite`` with one ``testcase`` per rule (failures as ``<failure>``)."""
        failures = sum(not r.passed for r in self.rules)
        suite = ET.Element("testsuite", name="robustkit.gate", tests=str(len(self.rules)),
                           failures=str(failures), errors="0", skipped="0")
        for r in self.rules:
            case = ET.SubElement(suite, "testcase", classname="robustkit.gate", name=f"rule {r.rule.index}: {r.rule.title}")
            detail = "\n".join(f"{'ok  ' if m.passed else 'FAIL'} {m.message}" for m in r.metrics)
            if not r.passed:
                ET.SubElement(case, "failure", message=r.message, type="PolicyViolation").text = detail
            else:
                ET.SubElement(case, "system-out").text = detail
        root = ET.Element("testsuites", name="robustkit gate", tests=str(len(self.rules)), failures=str(failures))
        root.append(suite)
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------- policy


def load_policy(path: str | Path) -> Policy:
    """Read and validate a TOML policy file."""
    return parse_policy(read_toml(path, what="a policy file"), source=str(Path(path)))


def parse_policy(obj: Mapping[str, Any], *, source: str = "policy") -> Policy:
    """Validate a parsed policy (``{"rule": [...], "alpha": 0.05}``)."""
    unknown = sorted(set(obj) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; expected only [[rule]] tables and an optional alpha.")
    alpha = obj.get("alpha", 0.05)
    check_range("alpha", alpha, low=0.0, high=1.0, low_open=True, where=source)
    rules = obj.get("rule")
    if not isinstance(rules, list) or not rules:
        raise ConfigError(f"{source}: expected at least one [[rule]] table, got {type(rules).__name__ if rules is not None else 'none'}.")
    return Policy(tuple(_rule(i + 1, r, source) for i, r in enumerate(rules)), float(alpha), source)


def _rule(index: int, raw: Any, source: str) -> Rule:
    where = f"rule {index} of {source}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a [[rule]] table, got {raw!r}.")
    unknown = sorted(set(raw) - set(_RULE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected some of {', '.join(_RULE_KEYS)}.")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        raise param_error("metric", "a dotted metric name such as 'clean.accuracy'", metric, where=where)
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise param_error(key, "a string", raw[key], where=where)
    bounds = {k: raw.get(k) for k in ("min", "max", "max_drop")}
    for key, value in bounds.items():
        if value is not None:
            check_range(key, value, low=0.0 if key == "max_drop" else None, where=where)
    if all(v is None for v in bounds.values()):
        raise ConfigError(f"{where} ({metric!r}): expected at least one of min, max, max_drop, got none.")
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        raise ConfigError(f"{where} ({metric!r}): expected min <= max, got min {bounds['min']} > max {bounds['max']}.")
    lo, hi, drop = (None if v is None else float(v) for v in bounds.values())
    return Rule(index, metric.strip(), lo, hi, drop, name=str(raw.get("name", "")),
                description=str(raw.get("description", "")))


# ---------------------------------------------------------------- evaluation


def gate(
    result: AuditResult | str | Path,
    policy: Policy | Mapping[str, Any] | str | Path,
    *,
    baseline: AuditResult | str | Path | None = None,
    allow_config_mismatch: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> GateReport:
    """Check an audit against a policy.

    Args:
        result: the audit (or its folder) of the checkpoint to gate.
        policy: a :class:`Policy`, a parsed mapping, or a TOML file.
        baseline: the audit to measure ``max_drop`` against.
        allow_config_mismatch: accept a baseline with other seeds or study configs.
        n_boot, seed: bootstrap of the paired tests.

    Raises:
        ConfigError (exit 2): an invalid policy, a rule that matches no metric, a missing
            baseline for ``max_drop``, an incomparable baseline.
    """
    pol = policy if isinstance(policy, Policy) else (
        parse_policy(policy) if isinstance(policy, Mapping) else load_policy(policy))
    audit = result if isinstance(result, AuditResult) else load_results(result)
    base = baseline if baseline is None or isinstance(baseline, AuditResult) else load_results(baseline)
    require_current(str(audit.schema_version), "gate: the audit")
    if base is not None:
        check_comparable(base, audit, "baseline", "audit", allow_config_mismatch=allow_config_mismatch)
    matched = [(rule, _match(rule, audit, base, pol.source)) for rule in pol.rules]
    outcomes = [RuleOutcome(rule, _evaluate(rule, names, audit, base, pol.alpha, n_boot, seed)) for rule, names in matched]
    return GateReport(outcomes, pol.source, None if base is None else "baseline")


def _match(rule: Rule, audit: AuditResult, base: AuditResult | None, source: str) -> list[str]:
    where = f"rule {rule.index} ({rule.title!r}) of {source}"
    names = _names(rule.metric, audit)
    if not names:
        what = "a pattern matching a metric of the audit" if any(ch in rule.metric for ch in "*?[") else "a metric the audit has"
        raise ConfigError(f"{where}: expected {what}, got {rule.metric!r}, which matches nothing; "
                          f"{_close_names(rule.metric, audit)}.")
    if rule.max_drop is None:
        return names
    if base is None:
        raise ConfigError(f"{where}: max_drop needs a baseline audit (--baseline DIR), got none.")
    missing = [m for m in names if m not in base.metrics()]
    if missing:
        raise ConfigError(f"{where}: the baseline does not have {missing[:3]}.")
    undirected = [m for m in names if audit.direction(m) not in ("higher", "lower")]
    if undirected:
        raise ConfigError(f"{where}: max_drop needs a direction, got none for {undirected[:3]}.")
    return names


def _names(metric: str, audit: AuditResult) -> list[str]:
    """The metrics a rule names: the one it spells exactly (a finding may hold ``[``, ``*``
    or spaces), else those its fnmatch pattern matches."""
    if metric in audit.metrics():
        return [metric]
    return [m for m in audit.metrics() if fnmatch.fnmatchcase(m, metric)]


def _close_names(metric: str, audit: AuditResult) -> str:
    """The audit's names closest to a rule's unknown ``metric`` (a misspelt finding), else the
    names under the same prefix (``clean.auroc.*``), else a few of its metrics."""
    have = list(audit.metrics())
    close = difflib.get_close_matches(metric, have, n=5, cutoff=0.6)
    if close:
        return "close names: " + ", ".join(repr(c) for c in close)
    prefix = metric.rsplit(".", 1)[0] + "."
    same = [m for m in have if m.startswith(prefix)]
    if same and "." in metric:
        return f"the audit's {prefix}* names: " + ", ".join(repr(c) for c in same[:12])
    return "the audit has e.g. " + (", ".join(have[:5]) or "no metrics")


def _evaluate(rule: Rule, names: list[str], audit: AuditResult, base: AuditResult | None,
              alpha: float, n_boot: int, seed: int) -> list[MetricOutcome]:
    values = audit.metrics()
    deltas: dict[str, MetricDelta] = {}
    if rule.max_drop is not None and base is not None:
        found = paired_deltas(base, audit, names, alpha=alpha, correction="holm", n_boot=n_boot, seed=seed)
        deltas = {d.metric: d for d in found}
    return [_check(rule, n, values[n], deltas.get(n), alpha) for n in names]


def _check(rule: Rule, name: str, value: float, delta: MetricDelta | None, alpha: float) -> MetricOutcome:
    problems = []
    if not math.isfinite(value):
        problems.append("is not a finite number")
    if rule.min is not None and math.isfinite(value) and value < rule.min:
        problems.append(f"is below min {rule.min:g}")
    if rule.max is not None and math.isfinite(value) and value > rule.max:
        problems.append(f"is above max {rule.max:g}")
    text = f"{name} = {value:.4g}"
    if delta is not None and rule.max_drop is not None:
        drop_problem, drop_text = _drop(delta, rule.max_drop, alpha)
        text += f" ({drop_text})"
        if drop_problem:
            problems.append(drop_problem)
    return MetricOutcome(name, value, not problems, text + (" " + " and ".join(problems) if problems else ""))


def _drop(d: MetricDelta, max_drop: float, alpha: float) -> tuple[str, str]:
    drop = -d.delta if d.direction == "higher" else d.delta
    p = d.p_adjusted
    text = f"baseline {d.baseline:.4g}, drop {drop:+.4g}" + (f", {d.test} p_adj={p:.3g}" if p is not None else ", not testable")
    if not math.isfinite(drop) or drop <= max_drop:
        return ("" if math.isfinite(drop) else "has no finite drop"), text
    if p is None:
        return f"dropped by more than {max_drop:g} and no paired test applies", text
    if p < alpha:
        return f"dropped significantly by more than {max_drop:g}", text
    return "", text


# ---------------------------------------------------------------- output


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def github_error(title: str, text: str) -> str:
    """A GitHub Actions ``::error`` workflow annotation line (title and text escaped)."""
    return f"::error title={_gh_prop(title)}::{_gh_data(text)}"
