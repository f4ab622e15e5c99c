"""Report view of the ``slices`` study: forest plot, slice table sorted by gap, site probe.

One path for every task kind: the slice table shows every output's AUROC and their macro mean,
and the exclusive block (accuracy, sensitivity, specificity, ECE) where the study stored it; the
forest plot draws the measure of the slice-vs-rest test (accuracy, or the macro AUROC).

Reads stored numbers only (``result.data``: ``slices``, ``worst``, ``probe``); never runs a
model and never imports TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

from robustkit.report.figures import PALETTE, STYLE, new_figure, safe_label, to_svg
from robustkit.report.views import fmt, fmt_interval, generic_view, view
from robustkit.results import AuditResult, StudyResult

__all__ = ["forest_svg", "slices_view"]

#: the most slices drawn in the forest plot (the table lists all of them)
MAX_FOREST = 30


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def forest_svg(names: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
               *, overall: float, flagged: Sequence[bool], xlabel: str) -> str:
    """A forest plot: one row per slice, its point and interval, against the overall line.

    Args:
        names: slice names, top to bottom.
        values, lows, highs: point estimates and interval ends (NaN: no interval).
        overall: the whole set's value (the dashed line).
        flagged: rows drawn in the warning colour.
        xlabel: axis label.
    """
    with matplotlib.rc_context(STYLE):
        fig = new_figure(5.5, 0.9 + 0.24 * max(1, len(names)))
        ax = fig.subplots()
        y = np.arange(len(names))[::-1]
        v, lo, hi = (np.asarray(a, dtype=float) for a in (values, lows, highs))
        err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
        colours = [PALETTE[3 % len(PALETTE)] if f else PALETTE[0] for f in flagged]
        for i in range(len(names)):
            ax.errorbar(v[i], y[i], xerr=err[:, i:i + 1], fmt="o", color=colours[i], capsize=2, ms=4)
        if math.isfinite(overall):
            ax.axvline(overall, color="0.4", ls="--", lw=1, label=f"overall {overall:.3f}")
            ax.legend(loc="lower left")
        ax.set_yticks(y, [safe_label(n) for n in names])
        ax.set_xlabel(safe_label(xlabel))
        return to_svg(fig)


def _forest(rows: Sequence[Mapping[str, Any]], overall: float, *, multilabel: bool = False) -> dict[str, Any]:
    shown = list(rows)[:MAX_FOREST]
    value, key, label = ("auroc", "auroc.macro", "macro AUROC") if multilabel else ("accuracy", "accuracy", "accuracy")
    iv = [dict(r.get("intervals", {})).get(key, [math.nan, math.nan]) for r in shown]
    svg = forest_svg([str(r["slice"]) for r in shown], [_num(r.get(value)) for r in shown],
                     [_num(i[0]) for i in iv], [_num(i[1]) for i in iv], overall=overall,
                     flagged=[bool(r.get("flagged")) for r in shown], xlabel=label)
    more = f" The {len(rows) - len(shown)} slices with the smallest gaps are only in the table." if len(rows) > len(shown) else ""
    return {
        "title": f"{label[0].upper()}{label[1:]} per slice",
        "svg": svg,
        "caption": "Each row is a slice (sorted by its gap to the rest, worst first) with its bootstrap 95% "
                   f"interval; the dashed line is the {label} on all samples. Flagged slices (worse than the "
                   "rest by more than the effect size, with a BH q-value below alpha) are drawn in the warning "
                   "colour. An interval that crosses the line is not evidence of a difference." + more,
    }


def _slice_row(r: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
    """A slice row: the per-output and macro AUROC (with intervals where stored), the exclusive block
    (accuracy, the critical class's sensitivity and specificity, ECE) where stored, gap, q, flag."""
    iv = dict(r.get("intervals", {}))
    return {
        "slice": str(r.get("slice", "")), "n": fmt(r.get("n"), "n"),
        **{k: f"{fmt(r.get(k))} {fmt_interval(iv.get(k))}" for k in ("accuracy", "sensitivity", "specificity", "ece")},
        "macro": f"{fmt(r.get('auroc'))} {fmt_interval(iv.get('auroc.macro'))}",
        "findings": [f"{fmt(r.get(f'auroc.{f}'))} {fmt_interval(iv.get(f'auroc.{f}'))}" for f in outputs],
        "rest": fmt(r.get("rest")), "gap": fmt(r.get("gap")), "q": fmt(r.get("q")),
        "flagged": "yes" if r.get("flagged") else "",
    }


def _probe_rows(probe: Mapping[str, Any]) -> list[dict[str, str]]:
    out = []
    for col, p in probe.items():
        within = dict(p.get("within_class", {}))
        out.append({
            "column": str(col), "auroc": f"{fmt(p.get('auroc'))} [{fmt(p.get('low'))}, {fmt(p.get('high'))}]",
            "within_class": f"{fmt(within.get('auroc'))} [{fmt(within.get('low'))}, {fmt(within.get('high'))}]",
            "confound": fmt(p.get("confound")), "dependence": fmt(p.get("dependence")), "values": ", ".join(map(str, p.get("levels", []))),
            "folds": fmt(p.get("folds"), "n"),
        })
    return out


@view("slices")
def slices_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Forest plot, the slice table sorted by gap, the worst slice and the probe."""
    ctx = generic_view(study, audit)
    rows = list(study.data.get("slices", []))
    multilabel = bool(study.data.get("multilabel"))
    overall = _num(study.metrics.get("auroc.macro" if multilabel else "accuracy"))
    ctx["tables"] = [t for t in ctx["tables"] if t["title"] != "slices"]
    ctx["figures"] = [_forest(rows, overall, multilabel=multilabel)] if rows else []
    ctx["multilabel"] = multilabel
    ctx["positive_class"] = str(study.data.get("positive_class") or "")  # the audit's critical class
    ctx["findings"] = [str(f) for f in study.data.get("findings") or audit.class_names]
    ctx["slice_rows"] = [_slice_row(r, ctx["findings"]) for r in rows]
    ctx["probe_rows"] = _probe_rows(dict(study.data.get("probe", {})))
    worst = dict(study.data.get("worst", {}))
    ctx["worst"] = {k: fmt(worst.get(k), k if k == "n" else None) for k in ("n", "accuracy", "auroc", "gap", "q")}
    ctx["worst"]["slice"] = str(worst.get("slice", ""))
    ctx["overall"] = fmt(overall)
    ctx["alpha"], ctx["effect_size"] = fmt(study.data.get("alpha")), fmt(study.data.get("effect_size"))
    ctx["columns"] = ", ".join(map(str, study.data.get("columns", [])))
    ctx["metrics"] = [m for m in ctx["metrics"] if not str(m.get("name", "")).startswith(("accuracy.", "auroc."))
                      or str(m.get("name", "")) == "auroc.macro"]
    return ctx
