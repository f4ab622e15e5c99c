"""Report view of the ``adversarial`` study on a multi-label model: per-finding flip curves.

Reads stored numbers only (``result.data["findings_curves"]``, the ``minimal_budgets``
table, the metrics and their intervals); never runs a model, never imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustkit.report import figures
from robustkit.report.views import fmt, generic_view, table_view
from robustkit.results import AuditResult, StudyResult

__all__ = ["findings_view"]

_DIRECTION_TEXT = {
    "off": ("Turning present findings off", "images with the finding called present",
            "a present finding (a nodule, an opacity) disappears from the report: a missed finding"),
    "on": ("Turning absent findings on", "images with the finding called absent",
           "an absent finding appears: a false alarm"),
}


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _flip_figure(study: StudyResult, norm: str, curve: Mapping[str, Any], direction: str) -> dict[str, Any]:
    """One line per finding and the macro mean (with its bootstrap band) over the budgets."""
    eps = [_num(e) for e in curve.get("epsilons", [])]
    x = [0.0, *eps]
    series = {str(name): (x, [0.0, *(_num(v) for v in d.get(direction, []))])
              for name, d in dict(curve.get("findings", {})).items()}
    macro = [_num(v) for v in dict(curve.get("macro", {})).get(direction, [])]
    series["macro mean"] = (x, [0.0, *macro])
    keys = [f"flip_{direction}_rate.{norm}.{k}.macro" for k in _eps_names(study, norm, direction)]
    lo = [0.0, *(_num(study.intervals.get(k, [None, None])[0]) for k in keys)]
    hi = [0.0, *(_num(study.intervals.get(k, [None, None])[1]) for k in keys)]
    title, among, meaning = _DIRECTION_TEXT[direction]
    unit = "epsilon (/255, Linf)" if norm == "linf" else "epsilon (L2 norm)"
    return {
        "title": f"{title} ({'Linf' if norm == 'linf' else 'L2'})",
        "svg": figures.line_chart_svg(series, xlabel=unit, ylabel="flip rate", ylim=(0.0, 1.02),
                                      bands={"macro mean": (lo, hi)} if len(lo) == len(x) else None),
        "caption": f"Per finding, the share of {among} whose call the attack flipped within each budget "
                   f"(0 at no budget): {meaning}. The macro mean averages the findings; its band is a "
                   "bootstrap 95% interval over images (per-finding Wilson intervals are in the metrics table).",
    }


def _eps_names(study: StudyResult, norm: str, direction: str) -> list[str]:
    """The radius names of ``norm``'s macro flip rates, in stored (increasing) order."""
    prefix = f"flip_{direction}_rate.{norm}."
    return [k[len(prefix):-len(".macro")] for k in study.metrics if k.startswith(prefix) and k.endswith(".macro")]


def findings_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Flip-rate curves (off and on) per norm, the minimal-budget table, checks, metrics."""
    ctx = generic_view(study, audit)
    data = study.data
    for norm, curve in dict(data.get("findings_curves", {})).items():
        for direction in _DIRECTION_TEXT:
            ctx["figures"].append(_flip_figure(study, str(norm), curve, direction))
    rows = [{k: float("inf") if v in ("inf", float("inf")) else v for k, v in dict(r).items()}
            for r in study.tables.get("minimal_budgets", [])]
    ctx["tables"] = [table_view("Minimal flipping budgets (median per finding)", rows)] if rows else []
    attack = dict(data.get("attack", {}))
    ctx["findings"] = [str(n) for n in data.get("class_names", [])]
    ctx["n_samples"] = fmt(study.metrics.get("n_samples"), "n_samples")
    ctx["attack"] = (f"Attack: {attack.get('name', '')}, {attack.get('steps')} steps x {attack.get('restarts')} "
                     f"run(s) per image, finding and budget, maximising the {data.get('attack_loss', '')}.")
    ctx["thresholds"] = ", ".join(f"{n} {fmt(t)}" for n, t in zip(ctx["findings"], data.get("thresholds", [])))
    return ctx
