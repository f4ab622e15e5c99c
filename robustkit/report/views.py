"""Views: turn one stored :class:`StudyResult` into the context of its report partial.

A view is a function ``(study, audit) -> dict`` named by the study's record in
:mod:`robustkit.plugins` (or registered under the study's name with :func:`view`). The
dict is handed to the record's partial template (``templates/partials/<name>.html.j2``
for the built-ins) as ``view``.
A study without a view gets :func:`generic_view`, rendered by ``partials/_generic.html.j2``.
Views only read stored numbers and draw figures (the scikit-learn Display pattern); they
never run a model. Every string they return is plain text that the templates escape,
except ``figures[*]["svg"]``, which only :mod:`robustkit.report.figures` produces.

Example:
    >>> @view("mystudy")
    ... def _mystudy(study, audit):
    ...     ctx = generic_view(study, audit)
    ...     ctx["figures"].append({"title": "Accuracy", "svg": line_chart_svg(...)})
    ...     return ctx
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from robustkit.plugins import plugin
from robustkit.report import figures
from robustkit.results import AuditResult, StudyResult

__all__ = [
    "VIEWS",
    "View",
    "arrow",
    "fmt",
    "fmt_interval",
    "generic_view",
    "sentence",
    "metric_rows",
    "table_view",
    "view",
]

View = Callable[[StudyResult, AuditResult], dict[str, Any]]
VIEWS: dict[str, View] = {}

_ARROWS = {"higher": "\u2191", "lower": "\u2193", "none": ""}
_COUNT_ROOTS = {"n_samples", "support", "count", "n", "n_correct", "n_errors"}
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_STATUSES = {"pass", "warn", "fail"}


def view(name: str) -> Callable[[View], View]:
    """Register the decorated function as the view of study ``name``."""

    def register(fn: View) -> View:
        VIEWS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------- formatting


def _is_count(name: str | None) -> bool:
    root = (name or "").split(".")[0]
    return root in _COUNT_ROOTS or root.startswith("n_")


def fmt(value: Any, name: str | None = None) -> str:
    """Format a number for a table: ``0.953``, ``1,204``, ``2.10e-05``, ``n/a``.

    Values in [-1, 1] get three decimals (accuracies, rates); counts (``n_samples``,
    ``support`` or any integral value above 1) get thousands separators.
    """
    if value is None:
        return "\u2014"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "\u221e" if v > 0 else "\u2212\u221e"
    if v.is_integer() and (abs(v) > 1 or _is_count(name) or isinstance(value, int)):
        return f"{int(v):,}"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2e}"
    if abs(v) <= 1:
        return f"{v:.3f}"
    if abs(v) < 1000:
        return f"{v:.4g}"
    return f"{v:,.0f}"


def fmt_interval(interval: Sequence[float] | None, name: str | None = None) -> str:
    """Format a 95% interval as ``[0.931, 0.970]``; empty when there is none."""
    if not interval or len(interval) != 2:
        return ""
    return f"[{fmt(interval[0], name)}, {fmt(interval[1], name)}]"


def arrow(direction: str) -> str:
    """``\u2191`` for higher-is-better, ``\u2193`` for lower-is-better, empty otherwise."""
    return _ARROWS.get(direction, "")


def status_class(status: str) -> str:
    """CSS class suffix for a check status (``pass``/``warn``/``fail``; others ``other``)."""
    return status if status in _STATUSES else "other"


def metric_row(study: StudyResult, name: str) -> dict[str, Any]:
    """One metric as table cells: name, value, interval, direction and its arrow."""
    direction = study.direction(name)
    return {
        "name": name,
        "value": fmt(study.metrics.get(name), name),
        "interval": fmt_interval(study.intervals.get(name), name),
        "direction": direction,
        "arrow": arrow(direction),
    }


def metric_rows(study: StudyResult, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows for the metrics named (default: all, in stored order) that the study has."""
    names = list(study.metrics) if names is None else [n for n in names if n in study.metrics]
    return [metric_row(study, n) for n in names]


def table_view(title: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A stored table (list of row dicts) as a title, columns and formatted cells."""
    columns: list[str] = []
    for row in rows:
        columns.extend(str(k) for k in row if str(k) not in columns)
    cells = [[_cell(row.get(c), c) for c in columns] for row in rows]
    heads = [
        {"name": c, "numeric": bool(cells) and all(r[i]["numeric"] or r[i]["text"] == "\u2014" for r in cells)}
        for i, c in enumerate(columns)
    ]
    return {"title": title, "columns": heads, "rows": cells}


def _cell(value: Any, column: str) -> dict[str, Any]:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, (list, tuple, dict)):
        text = str(value)
        text = text if len(text) <= 80 else text[:79] + "\u2026"
    else:
        text = fmt(value, column) if numeric or value is None else str(value)
    return {"text": text, "numeric": numeric}


def check_rows(study: StudyResult) -> list[dict[str, str]]:
    """The study's checks as rows with a CSS status class."""
    return [
        {"name": c.name, "status": c.status, "css": status_class(c.status), "detail": c.detail}
        for c in study.checks
    ]


# ---------------------------------------------------------------- generic


def generic_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """The context every study gets: description, metrics, tables, checks, no figures."""
    return {
        "description": str(study.data.get("description", "")),
        "headline": metric_rows(study, [str(h) for h in study.data.get("headline", [])]),
        "metrics": metric_rows(study),
        "tables": [table_view(name, rows) for name, rows in study.tables.items() if rows],
        "checks": check_rows(study),
        "figures": [],
    }


def build_view(study: StudyResult, audit: AuditResult) -> tuple[dict[str, Any], str | None]:
    """Run the study's registered view (generic when none); return it and any error.

    A view that fails on malformed stored data does not sink the whole report: the study
    falls back to the generic view and the error is shown in its section.
    """
    if study.status != "ok":
        return generic_view(study, audit), None
    try:
        fn = _find_view(study.name)
        if fn is None:
            return generic_view(study, audit), None
        return fn(study, audit), None
    except Exception as exc:  # noqa: BLE001 - reported in the page, never swallowed silently
        return generic_view(study, audit), f"{type(exc).__name__}: {exc}"


def _find_view(name: str) -> View | None:
    """The view of study ``name``: one added with :func:`view`, else its plug-in record's."""
    if name in VIEWS:
        return VIEWS[name]
    record = plugin(name)
    return None if record is None else record.load_view()


# ---------------------------------------------------------------- clean

_OVERALL = {True: ("accuracy", "balanced_accuracy", "macro_f1", "auroc.macro", "auprc.macro"),
            False: ("auroc.macro", "auroc.micro", "auprc.macro", "auprc.micro", "sensitivity.macro",
                    "specificity.macro")}
_PER_OUTPUT = ("auroc", "auprc", "sensitivity", "specificity", "precision", "f1")


@view("clean")
def clean_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Baseline evaluation, one path for every task: overall metrics, a row per output (class or
    finding), the ROC curve of each output with its operating point; the confusion matrix and
    examples where the task is exclusive."""
    ctx = generic_view(study, audit)
    data, m = study.data, study.metrics
    names = [str(n) for n in data.get("class_names") or audit.class_names]
    exclusive = not data.get("multilabel")
    ctx.update(multilabel=not exclusive, n_samples=fmt(m.get("n_samples", len(audit.ids)), "n_samples"),
               overall=metric_rows(study, _OVERALL[exclusive]), n_thresholded=fmt(m.get("n_thresholded"), "n_thresholded"),
               decision_rule=_decision_rule(data, exclusive))
    rows = {str(r.get("output", r.get("class", r.get("finding")))): r
            for key in ("per_output", "per_class", "per_finding") for r in study.tables.get(key, [])}
    ctx["per_output_columns"] = [c for c in _PER_OUTPUT if any(f"{c}.{n}" in m for n in names)]
    ctx["per_output"] = [_output_row(study, n, rows.get(n, {}), ctx["per_output_columns"]) for n in names]
    ctx["show_thresholds"] = not exclusive
    ctx["tables"] = [t for t in ctx["tables"] if t["title"] not in ("per_output", "per_class", "per_finding")]
    if data.get("confusion"):
        ctx["figures"].append({
            "title": "Confusion matrix",
            "svg": figures.confusion_matrix_svg(data["confusion"], names),
            "caption": "Rows: true class; columns: predicted class. Right: each row divided by its total, so the diagonal is each class's sensitivity.",
        })
    if data.get("roc"):
        ctx["figures"].append(_roc_figure(data["roc"], m, exclusive))
    ctx["examples"] = [e for e in (_example(x) for x in data.get("examples", [])) if e is not None]
    return ctx


def _decision_rule(data: Mapping[str, Any], exclusive: bool) -> str:
    if exclusive:
        return "Each image is called the class with the highest probability (arg-max)."
    source = sentence(str(data.get("threshold_source", "") or "not recorded"))
    return f"A finding is called present when its probability is at least its threshold. {source}."


def _roc_figure(roc: Mapping[str, Any], m: Mapping[str, float], exclusive: bool) -> dict[str, Any]:
    curves = {str(k): (v["fpr"], v["tpr"]) for k, v in roc.items()}
    points = {n: (1.0 - m[f"specificity.{n}"], m[f"sensitivity.{n}"]) for n in curves
              if math.isfinite(m.get(f"specificity.{n}", math.nan)) and math.isfinite(m.get(f"sensitivity.{n}", math.nan))}
    what = "class" if exclusive else "finding"
    return {
        "title": f"ROC curve per {what} (one against the rest)",
        "svg": figures.roc_curves_svg(curves, aucs={k: m[f"auroc.{k}"] for k in curves if f"auroc.{k}" in m},
                                      points=points),
        "caption": f"Each {what}'s probability against its presence, over every image; a curve nearer the top-left "
                   "corner separates the images that have it better, the dotted diagonal is chance. Dots: the "
                   "operating point of the calls (1 - specificity, sensitivity)"
                   + ("." if exclusive else ", read on the images the thresholds were not chosen on."),
    }


def sentence(text: str) -> str:
    """``text`` with its first letter upper-case (Jinja's ``capitalize`` lowers the rest)."""
    return text[:1].upper() + text[1:]


def _output_row(study: StudyResult, name: str, row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    cells = [{"value": fmt(study.metrics.get(f"{c}.{name}", row.get(c)), c),
              "interval": fmt_interval(study.intervals.get(f"{c}.{name}"), c)} for c in columns]
    positives = row.get("positives", row.get("support"))
    return {"output": name, "cells": cells, "positives": fmt(positives, "support"),
            "prevalence": fmt(row.get("prevalence")), "threshold": fmt(row.get("threshold"))}


def _example(ex: Mapping[str, Any]) -> dict[str, Any] | None:
    png = re.sub(r"\s+", "", str(ex.get("image_png", "")))
    if not png or not _BASE64.match(png):
        return None
    label, pred = str(ex.get("label", "")), str(ex.get("pred", ""))
    return {
        "id": str(ex.get("id", "")),
        "label": label,
        "pred": pred,
        "correct": label == pred,
        "confidence": fmt(ex.get("confidence")),
        "src": "data:image/png;base64," + png,
    }
