"""The card's acceptance table: each gate policy rule judged on the 95% interval's bound.

``robustkit gate`` judges a rule on the point estimate. A reviewer signs on the bound: a
510(k) summary reads "the lower bound of the 95% interval is above X". Here a ``min`` is
cleared only when the interval's **lower** bound is at least ``min``, and a ``max`` only
when the **upper** bound is at most ``max``; a rule whose point estimate passes but whose
bound does not is FAIL, and the row keeps both numbers. A metric without an interval is
judged on its point estimate and the row says so. ``max_drop`` rules are judged as gate
judges them (a significant paired drop against the baseline) and are NOT EVALUATED
without a baseline. The matching and the errors (a metric the audit lacks) are gate's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from robustkit.gate import Policy, Rule, RuleOutcome, gate
from robustkit.results import AuditResult

__all__ = ["AcceptanceRow", "acceptance_rows", "judge_bound"]


@dataclass(frozen=True)
class AcceptanceRow:
    """One bound of one rule on one matched metric.

    Attributes:
        rule: the rule's index (from 1) and ``title``.
        metric: the matched full metric name.
        value, interval: the stored point estimate and 95% interval (or None).
        bound: ``min``, ``max`` or ``max_drop``; ``threshold`` its number.
        judged_on: ``lower bound``, ``upper bound``, ``point estimate (no interval)`` or
            ``paired test vs baseline``; ``judged_value`` the number compared.
        point_passed: whether the point estimate alone clears the threshold.
        status: ``PASS``, ``FAIL`` or ``NOT EVALUATED``; ``detail`` says why.
    """

    rule: int
    title: str
    metric: str
    value: float
    interval: tuple[float, float] | None
    bound: str
    threshold: float
    judged_on: str
    judged_value: float
    point_passed: bool | None
    status: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        def j(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {"rule": self.rule, "title": self.title, "metric": self.metric, "value": j(self.value),
                "interval": None if self.interval is None else [j(v) for v in self.interval],
                "bound": self.bound, "threshold": self.threshold, "judged_on": self.judged_on,
                "judged_value": j(self.judged_value), "point_passed": self.point_passed,
                "status": self.status, "detail": self.detail}


def judge_bound(value: float, interval: tuple[float, float] | None, *, bound: str,
                threshold: float) -> tuple[str, float, bool, bool]:
    """Judge one ``min``/``max`` bound on the interval.

    Returns:
        ``(judged_on, judged_value, point_passed, passed)``.

    >>> judge_bound(0.93, (0.88, 0.97), bound="min", threshold=0.90)
    ('lower bound', 0.88, True, False)
    """
    if bound not in ("min", "max"):
        raise ValueError(f"bound must be 'min' or 'max', got {bound!r}")
    ok = (lambda v: v >= threshold) if bound == "min" else (lambda v: v <= threshold)
    point_ok = math.isfinite(value) and ok(value)
    if interval is None or not all(math.isfinite(v) for v in interval):
        return "point estimate (no interval)", value, point_ok, point_ok
    judged = float(interval[0] if bound == "min" else interval[1])
    return ("lower bound" if bound == "min" else "upper bound"), judged, point_ok, point_ok and ok(judged)


def acceptance_rows(audit: AuditResult, policy: Policy, baseline: AuditResult | None, *,
                    seed: int = 0) -> list[AcceptanceRow]:
    """Every rule of ``policy`` on every metric it matches, one row per bound.

    Raises:
        ConfigError: gate's errors (a rule matching no metric, an incomparable baseline).
    """
    plain = tuple(replace(r, max_drop=None) for r in policy.rules if r.min is not None or r.max is not None)
    drops = tuple(replace(r, min=None, max=None) for r in policy.rules if r.max_drop is not None)
    outcomes: dict[tuple[int, str], list[AcceptanceRow]] = {}
    if plain:
        for out in gate(audit, replace(policy, rules=plain)).rules:
            _bound_rows(audit, out, outcomes)
    if drops and baseline is not None:
        report = gate(audit, replace(policy, rules=drops), baseline=baseline, seed=seed)
        for out in report.rules:
            for m in out.metrics:
                outcomes.setdefault((out.rule.index, "max_drop"), []).append(_row(
                    audit, out.rule, m.metric, m.value, "max_drop", out.rule.max_drop or 0.0,
                    "paired test vs baseline", math.nan, None, "PASS" if m.passed else "FAIL", m.message))
    elif drops:
        for r in drops:
            outcomes[(r.index, "max_drop")] = [_row(
                audit, r, r.metric, math.nan, "max_drop", r.max_drop or 0.0, "paired test vs baseline", math.nan,
                None, "NOT EVALUATED", "needs a baseline audit (--baseline DIR)")]
    titles = {r.index: r.title for r in policy.rules}  # the titles of the rules as written
    return [replace(row, title=titles[row.rule])
            for key in sorted(outcomes, key=lambda k: (k[0], ("min", "max", "max_drop").index(k[1])))
            for row in outcomes[key]]


def _bound_rows(audit: AuditResult, out: RuleOutcome, acc: dict[tuple[int, str], list[AcceptanceRow]]) -> None:
    for bound, threshold in (("min", out.rule.min), ("max", out.rule.max)):
        if threshold is None:
            continue
        for m in out.metrics:
            iv = audit.interval(m.metric)
            interval = (float(iv[0]), float(iv[1])) if iv is not None else None
            judged_on, judged, point_ok, ok = judge_bound(m.value, interval, bound=bound, threshold=threshold)
            word = ">=" if bound == "min" else "<="
            if ok:
                detail = f"{judged_on} {judged:.4g} {word} {threshold:g}"
            elif point_ok:
                detail = (f"point estimate {m.value:.4g} clears {threshold:g} but the {judged_on} "
                          f"{judged:.4g} does not")
            else:
                detail = f"point estimate {m.value:.4g} does not clear {bound} {threshold:g}"
            acc.setdefault((out.rule.index, bound), []).append(_row(
                audit, out.rule, m.metric, m.value, bound, threshold, judged_on, judged, point_ok,
                "PASS" if ok else "FAIL", detail))


def _row(audit: AuditResult, rule: Rule, metric: str, value: float, bound: str, threshold: float,
         judged_on: str, judged: float, point_ok: bool | None, status: str, detail: str) -> AcceptanceRow:
    iv = audit.interval(metric)
    interval = (float(iv[0]), float(iv[1])) if iv is not None else None
    return AcceptanceRow(rule.index, rule.title, metric, float(value), interval, bound, float(threshold),
                         judged_on, float(judged), point_ok, status, detail)
