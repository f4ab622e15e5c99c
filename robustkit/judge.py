"""The acceptance judge: one policy, one audit (and a baseline) -> one outcome per rule and metric.

``robustkit gate`` (exit code, text, JUnit, GitHub annotations), ``robustkit card`` (the
acceptance table of card.html and card.json) and the Python API all call :func:`judge`;
no other code decides a rule. Every :class:`Outcome` carries the same fields: the rule,
the metric matched, the point value and its 95% interval, what was judged (a bound of the
interval, the point estimate, the paired test or the drop's one-sided bound), the threshold,
the status and a one-line reason; a regression outcome adds the baseline value, the observed
difference, its interval and the method.

How each form is judged:

* ``min`` / ``max`` under ``judge = "bound"`` (the default): the **lower** bound of the
  stored 95% interval must be at least ``min``, the **upper** bound at most ``max``. A
  metric without an interval is an error (exit 2) naming it, never a silent point
  judgement. Under ``judge = "point"`` the point estimate is compared.
* ``max_drop`` (the lenient form): fails only on a drop beyond the margin that the paired
  test of :mod:`robustkit.compare` finds significant (Holm over the rule's metrics); with
  300 images a real drop of a few points usually passes for want of power.
* ``noninferior`` (the regulatory form): passes only when the one-sided ``1 - alpha``
  upper bound of the drop lies below the margin (:mod:`robustkit.noninferior`: Tango's
  score interval for paired proportions, the paired bootstrap otherwise; Holm over the
  rule's metrics).
* ``max_drop`` and ``noninferior`` without a baseline: ``SKIPPED`` with the reason, or
  ``FAIL`` when the caller requires a baseline (``--require-baseline``).

Errors, not failures (exit 2): a pattern that matches no metric (with the closest names,
and the new name of a metric renamed in schema 2.0), a metric the baseline lacks, a
regression rule on a metric without a direction, ``judge = "bound"`` on a metric without
an interval. No TensorFlow here.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustkit.compare import MetricDelta, check_comparable, paired_deltas
from robustkit.errors import ConfigError
from robustkit.noninferior import NonInferiority, noninferiority
from robustkit.policy import Policy, Rule, load_policy, parse_policy
from robustkit.results import AuditResult, load_results, require_current

__all__ = ["STATUSES", "Judgement", "Outcome", "RuleOutcome", "judge", "judge_threshold"]

STATUSES = ("PASS", "FAIL", "SKIPPED")
#: metric-name parts renamed in schema 2.0 (results.SCHEMA_CHANGES), for the hint of an unknown name
_RENAMED = {"recall": "sensitivity", "auc": "auroc", "covid_to_normal_rate": "critical_miss_rate",
            "confident_covid_rate": "confident_critical_rate"}


@dataclass(frozen=True)
class Outcome:
    """One form of one rule on one matched metric.

    Attributes:
        rule, title: the rule's index (from 1) and title.
        form: ``min``, ``max``, ``max_drop`` or ``noninferior``; ``threshold`` its number.
        metric: the matched full metric name.
        value, interval: the audit's point estimate and stored 95% interval (or None).
        judged: what was compared with the threshold (``lower bound``, ``upper bound``,
            ``point``, ``drop (paired test)``, ``drop upper bound``); ``judged_value`` the number.
        status: ``PASS``, ``FAIL`` or ``SKIPPED``; ``reason`` one line saying why.
        baseline, difference, difference_interval: the baseline's value, ``candidate -
            baseline`` and its interval (regression forms with a baseline).
        method: the paired test or interval (``mcnemar-exact``, ``tango-score``, ...).
        p_adjusted: the Holm-adjusted p-value of the regression test, or None.
    """

    rule: int
    title: str
    form: str
    threshold: float
    metric: str
    value: float
    interval: tuple[float, float] | None
    judged: str
    judged_value: float
    status: str
    reason: str
    baseline: float | None = None
    difference: float | None = None
    difference_interval: tuple[float, float] | None = None
    method: str = ""
    p_adjusted: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def line(self) -> str:
        """Every field on one line (gate's text, JUnit and annotations print it)."""
        iv = "" if self.interval is None else f" [{self.interval[0]:.4g}, {self.interval[1]:.4g}]"
        head = f"{self.status} {self.metric} = {self.value:.4g}{iv}; {self.form} {self.threshold:g} on {self.judged}"
        if math.isfinite(self.judged_value) and self.judged != "point":
            head += f" {self.judged_value:.4g}"
        tail = ""
        if self.difference is not None:
            div = self.difference_interval
            tail = f" [baseline {self.baseline:.4g}, difference {self.difference:+.4g}" + (
                f" in [{div[0]:+.4g}, {div[1]:+.4g}]" if div is not None else "") + f", {self.method}]"
        return f"{head}: {self.reason}{tail}"

    def to_json(self) -> dict[str, Any]:
        def j(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        def iv(t: tuple[float, float] | None) -> list[float | None] | None:
            return None if t is None else [j(t[0]), j(t[1])]

        return {"rule": self.rule, "title": self.title, "form": self.form, "threshold": self.threshold,
                "metric": self.metric, "value": j(self.value), "interval": iv(self.interval),
                "judged": self.judged, "judged_value": j(self.judged_value), "status": self.status,
                "reason": self.reason, "baseline": j(self.baseline), "difference": j(self.difference),
                "difference_interval": iv(self.difference_interval), "method": self.method,
                "p_adjusted": j(self.p_adjusted)}


@dataclass(frozen=True)
class RuleOutcome:
    """A rule and its outcomes; FAIL if one fails, else SKIPPED if one is skipped, else PASS."""

    rule: Rule
    outcomes: list[Outcome]

    @property
    def status(self) -> str:
        statuses = {o.status for o in self.outcomes}
        return "FAIL" if "FAIL" in statuses else ("SKIPPED" if "SKIPPED" in statuses else "PASS")

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    @property
    def reason(self) -> str:
        """The reasons of the outcomes that decided the status, joined."""
        shown = [o for o in self.outcomes if o.status == self.status]
        if self.status == "PASS":
            return f"{len(shown)} outcome{'s' if len(shown) != 1 else ''} held"
        return "; ".join(f"{o.metric}: {o.reason}" for o in shown)


@dataclass(frozen=True)
class Judgement:
    """Every rule's outcomes; ``exit_code`` 0 unless a rule failed (then 1)."""

    rules: list[RuleOutcome]
    source: str = "policy"
    baseline: str | None = None
    judge: str = "bound"

    def outcomes(self) -> list[Outcome]:
        return [o for r in self.rules for o in r.outcomes]

    def count(self, status: str) -> int:
        """Rules with this status."""
        return sum(r.status == status for r in self.rules)

    @property
    def verdict(self) -> str:
        """``FAIL`` if a rule failed, else ``PASS`` (skipped rules are counted apart)."""
        return "FAIL" if self.count("FAIL") else "PASS"

    @property
    def exit_code(self) -> int:
        return 1 if self.count("FAIL") else 0

    def summary(self) -> str:
        skipped = self.count("SKIPPED")
        extra = f", {skipped} skipped (no baseline)" if skipped else ""
        return (f"{self.count('PASS')} of {len(self.rules)} rules passed, {self.count('FAIL')} failed{extra} "
                f"({self.source}; min/max judged on the {'95% interval bound' if self.judge == 'bound' else 'point estimate'}"
                f" unless a rule says otherwise) -> {self.verdict}")


# ---------------------------------------------------------------- entry point


def judge(
    result: AuditResult | str | Path,
    policy: Policy | Mapping[str, Any] | str | Path,
    *,
    baseline: AuditResult | str | Path | None = None,
    require_baseline: bool = False,
    allow_config_mismatch: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> Judgement:
    """Judge an audit (and a baseline) against a policy.

    Args:
        result: the audit (or its folder) of the checkpoint.
        policy: a :class:`~robustkit.policy.Policy`, a parsed mapping, or a TOML file.
        baseline: the released checkpoint's audit, for ``max_drop`` and ``noninferior``.
        require_baseline: a regression rule without a baseline FAILs instead of SKIPPED.
        allow_config_mismatch: accept a baseline with other seeds or study configs.
        n_boot, seed: the paired bootstrap.

    Raises:
        ConfigError (exit 2): see the module docstring.
    """
    pol = policy if isinstance(policy, Policy) else (
        parse_policy(policy) if isinstance(policy, Mapping) else load_policy(policy))
    audit = result if isinstance(result, AuditResult) else load_results(result)
    base = baseline if baseline is None or isinstance(baseline, AuditResult) else load_results(baseline)
    require_current(str(audit.schema_version), "judge: the audit")
    if base is not None:
        check_comparable(base, audit, "baseline", "audit", allow_config_mismatch=allow_config_mismatch)
    matched = [(rule, _match(rule, audit, base, pol.source)) for rule in pol.rules]
    rules = [RuleOutcome(rule, [o for form, threshold in rule.bounds()
                                for o in _judge_form(rule, form, threshold, names, audit, base, pol, require_baseline,
                                                     n_boot, seed)])
             for rule, names in matched]
    return Judgement(rules, pol.source, None if base is None else "baseline", pol.judge)


def _judge_form(rule: Rule, form: str, threshold: float, names: list[str], audit: AuditResult,
                base: AuditResult | None, pol: Policy, require_baseline: bool, n_boot: int, seed: int) -> list[Outcome]:
    if form in ("min", "max"):
        return [_absolute(rule, form, threshold, n, audit) for n in names]
    if base is None:
        return [_skipped(rule, form, threshold, n, audit, require_baseline) for n in names]
    if form == "max_drop":
        deltas = paired_deltas(base, audit, names, alpha=pol.alpha, correction="holm", n_boot=n_boot, seed=seed)
        return [_max_drop(rule, threshold, d, audit, pol.alpha) for d in deltas]
    tests = noninferiority(base, audit, names, margin=threshold, alpha=pol.alpha, n_boot=n_boot, seed=seed)
    return [_noninferior(rule, threshold, t, audit, pol.alpha) for t in tests]


# ---------------------------------------------------------------- matching


def _match(rule: Rule, audit: AuditResult, base: AuditResult | None, source: str) -> list[str]:
    where = f"rule {rule.index} ({rule.title!r}) of {source}"
    names = _names(rule.metric, audit)
    if not names:
        what = "a pattern matching a metric of the audit" if any(ch in rule.metric for ch in "*?[") else "a metric the audit has"
        raise ConfigError(f"{where}: expected {what}, got {rule.metric!r}, which matches nothing; "
                          f"{_close_names(rule.metric, audit)}.")
    if rule.judge == "bound" and (rule.min is not None or rule.max is not None):
        bare = [n for n in names if audit.interval(n) is None]
        if bare:
            raise ConfigError(f"{where}: judge = 'bound' needs a 95% interval, got none for {bare[0]!r}"
                              f"{f' and {len(bare) - 1} more' if len(bare) > 1 else ''}; "
                              "set judge = \"point\" on this rule to judge the point estimate.")
    if not rule.needs_baseline:
        return names
    if base is not None:
        missing = [m for m in names if m not in base.metrics()]
        if missing:
            raise ConfigError(f"{where}: the baseline does not have {missing[:3]}.")
    undirected = [m for m in names if audit.direction(m) not in ("higher", "lower")]
    if undirected:
        raise ConfigError(f"{where}: max_drop and noninferior need a metric direction, got none for {undirected[:3]}.")
    return names


def _names(metric: str, audit: AuditResult) -> list[str]:
    """The metrics a rule names: the one it spells exactly (a finding may hold ``[``, ``*``
    or spaces), else those its fnmatch pattern matches."""
    if metric in audit.metrics():
        return [metric]
    return [m for m in audit.metrics() if fnmatch.fnmatchcase(m, metric)]


def _close_names(metric: str, audit: AuditResult) -> str:
    """The new name of a metric renamed in schema 2.0, else the audit's closest names (a
    misspelt finding), else the names under the same prefix, else a few of its metrics."""
    have = list(audit.metrics())
    renamed = ".".join(_RENAMED.get(p, p) for p in metric.split("."))
    if renamed != metric and _names(renamed, audit):
        return f"renamed in results schema 2.0: use {renamed!r}"
    close = difflib.get_close_matches(metric, have, n=5, cutoff=0.6)
    if close:
        return "close names: " + ", ".join(repr(c) for c in close)
    prefix = metric.rsplit(".", 1)[0] + "."
    same = [m for m in have if m.startswith(prefix)]
    if same and "." in metric:
        return f"the audit's {prefix}* names: " + ", ".join(repr(c) for c in same[:12])
    return "the audit has e.g. " + (", ".join(have[:5]) or "no metrics")


# ---------------------------------------------------------------- the forms


def judge_threshold(form: str, threshold: float, value: float, interval: tuple[float, float] | None, *,
                    on: str = "bound") -> tuple[str, float, str, str]:
    """Judge one ``min``/``max`` on the interval's bound or on the point.

    Returns:
        ``(judged, judged_value, status, reason)``.

    >>> judge_threshold("min", 0.95, 0.9567, (0.93, 0.98))[2:]
    ('FAIL', 'the point 0.9567 clears min 0.95 but the lower bound 0.93 does not')
    >>> judge_threshold("min", 0.95, 0.9567, (0.93, 0.98), on="point")[2]
    'PASS'
    """
    if form not in ("min", "max"):
        raise ValueError(f"form must be 'min' or 'max', got {form!r}")
    holds = (lambda v: v >= threshold) if form == "min" else (lambda v: v <= threshold)
    side = "below" if form == "min" else "above"
    if not math.isfinite(value):
        return "point", value, "FAIL", "the value is not a finite number"
    if on == "point":
        ok = holds(value)
        return "point", value, "PASS" if ok else "FAIL", (
            f"the point {value:.4g} {'clears' if ok else 'is ' + side} {form} {threshold:g}")
    judged = "lower bound" if form == "min" else "upper bound"
    if interval is None or not all(math.isfinite(v) for v in interval):
        return judged, math.nan, "FAIL", "the 95% interval is not finite"
    bound = float(interval[0] if form == "min" else interval[1])
    if holds(bound):
        return judged, bound, "PASS", f"the {judged} {bound:.4g} clears {form} {threshold:g}"
    if holds(value):
        return judged, bound, "FAIL", f"the point {value:.4g} clears {form} {threshold:g} but the {judged} {bound:.4g} does not"
    return judged, bound, "FAIL", f"the point {value:.4g} and the {judged} {bound:.4g} are {side} {form} {threshold:g}"


def _interval(audit: AuditResult, name: str) -> tuple[float, float] | None:
    iv = audit.interval(name)
    return None if iv is None else (float(iv[0]), float(iv[1]))


def _absolute(rule: Rule, form: str, threshold: float, name: str, audit: AuditResult) -> Outcome:
    value, interval = float(audit.metrics()[name]), _interval(audit, name)
    judged, judged_value, status, reason = judge_threshold(form, threshold, value, interval, on=rule.judge)
    return Outcome(rule.index, rule.title, form, threshold, name, value, interval, judged, judged_value, status, reason)


def _skipped(rule: Rule, form: str, threshold: float, name: str, audit: AuditResult, required: bool) -> Outcome:
    judged = "drop (paired test)" if form == "max_drop" else "drop upper bound"
    reason = ("needs a baseline audit (--baseline DIR) and --require-baseline was given" if required
              else "not judged: needs a baseline audit (--baseline DIR), none was given")
    return Outcome(rule.index, rule.title, form, threshold, name, float(audit.metrics()[name]), _interval(audit, name),
                   judged, math.nan, "FAIL" if required else "SKIPPED", reason)


def _max_drop(rule: Rule, margin: float, d: MetricDelta, audit: AuditResult, alpha: float) -> Outcome:
    drop = (-d.delta if d.direction == "higher" else d.delta) + 0.0  # + 0.0: no "-0" in the text
    p = d.p_adjusted
    said = f"drop {drop:+.4g}, " + (f"{d.test} p_adj={p:.3g}" if p is not None else "not testable")
    if not math.isfinite(drop):
        status, reason = "FAIL", f"{said}: the drop is not a finite number"
    elif drop <= margin:
        status, reason = "PASS", f"{said}: within {margin:g}"
    elif p is None:
        status, reason = "FAIL", f"{said}: dropped by more than {margin:g} and no paired test applies"
    elif p < alpha:
        status, reason = "FAIL", f"{said}: dropped significantly by more than {margin:g}"
    else:
        status, reason = "PASS", (f"{said}: dropped by more than {margin:g} but not significantly at {alpha:g} "
                                  "(max_drop is the lenient form)")
    return Outcome(rule.index, rule.title, "max_drop", margin, d.metric, d.candidate, _interval(audit, d.metric),
                   "drop (paired test)", drop, status, reason, baseline=d.baseline, difference=d.delta,
                   difference_interval=d.interval, method=d.test, p_adjusted=p)


def _noninferior(rule: Rule, margin: float, t: NonInferiority, audit: AuditResult, alpha: float) -> Outcome:
    level = f"{100 * (1 - alpha):g}%"
    if t.p_adjusted is None:
        status, reason = "FAIL", f"drop {t.drop:+.4g} cannot be shown below {margin:g}: {t.note}"
    else:
        ok = t.p_adjusted < alpha
        said = f"drop {t.drop:+.4g}, one-sided {level} upper bound {t.drop_bound:.4g} ({t.method}, p={t.p_adjusted:.3g}"
        said += ", Holm)" if t.p_adjusted != t.p_value else ")"
        if ok:
            reason = f"{said} is below the margin {margin:g}"
        elif t.drop_bound < margin:
            reason = f"{said} is below the margin {margin:g} but the test is not significant at {alpha:g}"
        else:
            reason = f"{said} does not exclude a drop of the margin {margin:g}"
        status = "PASS" if ok else "FAIL"
    return Outcome(rule.index, rule.title, "noninferior", margin, t.metric, t.candidate, _interval(audit, t.metric),
                   "drop upper bound", t.drop_bound, status, reason, baseline=t.baseline, difference=t.difference,
                   difference_interval=t.interval, method=t.method, p_adjusted=t.p_adjusted)
