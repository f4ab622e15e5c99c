"""Views of the ``perturbation`` and ``noise`` studies: heat map, curves, examples, parameters.

Both studies store the same things (see :mod:`robustkit.studies.condition_reduce`), so one view
serves both, one path for every task kind: the per-output AUROC under every condition (every
task), the exclusive block (accuracy heat map and curves, corruption errors, the accuracy table)
where the study stored it, and the multi-label figures and tables (macro AUROC heat map, AUROC
against severity per finding, drops and flip rates per finding) where it stored those. Everything
is drawn from the stored metrics and ``data`` (the transform descriptions, the example
thumbnails); nothing here runs a model or imports TensorFlow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

from robustkit.report import figures
from robustkit.report.views import fmt, fmt_interval, generic_view, metric_rows, view
from robustkit.results import AuditResult, StudyResult

__all__ = ["accuracy_heatmap_svg", "condition_view", "severity_curves_svg"]

_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_SUMMARY = ("n_samples", "n_thresholded", "mean_accuracy", "relative_robustness", "worst_accuracy", "mean_auroc",
            "mean_auroc_drop", "worst_auroc", "mean_flip_rate", "mean_corruption_error")
_LINESTYLES = ("-", "--", ":", "-.")


def accuracy_heatmap_svg(values: Sequence[Sequence[float]], rows: Sequence[str], severities: Sequence[int],
                         *, clean: float | None = None, label: str = "Accuracy") -> str:
    """Draw accuracy per transform (rows) and severity (columns), coloured and numbered.

    Args:
        values: ``(T, S)`` accuracies in [0, 1] (NaN for a condition not run).
        rows: ``T`` transform names.
        severities: ``S`` severities.
        clean: clean accuracy, drawn as a first column when given.
        label: what the values are (the colour bar's label), e.g. ``"Macro AUROC"``.
    """
    arr = np.asarray(values, dtype=float).reshape(len(rows), len(severities))
    cols = [str(s) for s in severities]
    if clean is not None:
        arr = np.column_stack([np.full(len(rows), clean), arr])
        cols = ["clean", *cols]
    with matplotlib.rc_context(figures.STYLE):
        fig = figures.new_figure(1.6 + 0.55 * len(cols), 0.9 + 0.3 * len(rows))
        ax = fig.subplots()
        im = ax.imshow(np.ma.masked_invalid(arr), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), [figures.safe_label(r) for r in rows])
        ax.set_xlabel("Severity")
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                v = arr[i, j]
                text = "n/a" if not np.isfinite(v) else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="#222222" if np.isfinite(v) and v > 0.6 else "white")
        if clean is not None:
            ax.axvline(0.5, color="white", linewidth=2)
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
        return figures.to_svg(fig)


def severity_curves_svg(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                        clean: float | None = None, ylabel: str = "Accuracy", size: tuple[float, float] = (6.4, 3.8)
                        ) -> str:
    """``ylabel`` (accuracy) against severity, one line per transform, its clean value as a dashed line."""
    with matplotlib.rc_context(figures.STYLE):
        fig = figures.new_figure(*size)
        ax = fig.subplots()
        if clean is not None and math.isfinite(clean):
            ax.axhline(clean, color="#222222", linestyle="--", linewidth=1.4, label="clean", zorder=5)
        for i, (name, (x, y)) in enumerate(series.items()):
            colour = figures.PALETTE[i % len(figures.PALETTE)]
            style = _LINESTYLES[(i // len(figures.PALETTE)) % len(_LINESTYLES)]
            ax.plot(x, y, marker="o", markersize=3, color=colour, linestyle=style, linewidth=1.4,
                    label=figures.safe_label(name))
        ax.set_xlabel("Severity")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        xs = sorted({float(v) for x, _ in series.values() for v in x})
        if xs:
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
        if series:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), ncols=1 if len(series) <= 12 else 2)
        return figures.to_svg(fig)


@view("perturbation")
@view("noise")
def condition_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Summary, figures, per-output AUROC under every condition, the exclusive block where stored,
    example grid, severity parameters."""
    ctx = generic_view(study, audit)
    data, metrics = study.data, study.metrics
    transforms = [t for t in data.get("transforms", []) if isinstance(t, Mapping)]
    severities = [int(s) for s in data.get("severities", [])]
    names = [str(t.get("name")) for t in transforms]
    outputs = [str(c) for c in (data.get("class_names") or audit.class_names)]
    stored = data.get("clean_auroc")
    clean_auroc: Mapping[str, Any] = stored if isinstance(stored, Mapping) else {}
    exclusive = "clean_accuracy" in data
    ctx.update(multilabel=bool(data.get("multilabel")), findings=outputs, summary=metric_rows(study, _SUMMARY),
               n_samples=fmt(metrics.get("n_samples"), "n_samples"),
               n_thresholded=fmt(metrics.get("n_thresholded"), "n_thresholded"),
               clean_auroc=fmt(_float(clean_auroc.get("macro"))), worst_condition=str(data.get("worst_condition") or ""),
               threshold_source=str(data.get("threshold_source") or ""), reference=str(data.get("reference") or ""),
               parameters=_parameter_rows(transforms), param_severities=list(range(1, 6)),
               examples=_example_rows(data.get("examples") or {}, names),
               corruption_errors=metric_rows(study, [f"corruption_error.{n}" for n in names]),
               finding_conditions=_finding_rows(study, transforms, severities, outputs),
               per_finding=[{k: fmt(v) if k not in ("finding", "worst_condition") else str(v) for k, v in row.items()}
                            for row in study.tables.get("per_finding", [])],
               conditions=_condition_rows(study, transforms, severities, outputs) if exclusive else [],
               sensitivity_classes=outputs if exclusive else [],
               clean_accuracy=fmt(_float(data.get("clean_accuracy"))))
    ctx["finding_flips"] = any(f"auroc_drop.macro.{r['condition']}" in metrics for r in ctx["finding_conditions"])
    ctx["tables"] = [t for t in ctx["tables"] if t["title"] not in ("conditions", "per_finding")]
    if names and severities:
        ctx["figures"] = (_accuracy_figures(metrics, names, severities, _float(data.get("clean_accuracy")))
                          if exclusive else _finding_figures(metrics, names, severities, outputs, clean_auroc))
    return ctx


def _accuracy_figures(metrics: Mapping[str, float], names: Sequence[str], severities: Sequence[int],
                      clean: float | None) -> list[dict[str, str]]:
    """The exclusive block's figures: accuracy heat map and accuracy against severity."""
    grid = [[metrics.get(f"accuracy.{n}.{s}", float("nan")) for s in severities] for n in names]
    return [
        {"title": "Accuracy by transform and severity", "svg": accuracy_heatmap_svg(grid, names, severities, clean=clean),
         "caption": "Each cell is the accuracy on the transformed images; the first column is the clean accuracy. "
                    "Darker cells are worse. Read along a row: accuracy should fall as severity grows."},
        {"title": "Accuracy against severity",
         "svg": severity_curves_svg({n: (severities, row) for n, row in zip(names, grid)}, clean=clean),
         "caption": "One line per transform; the dashed line is the clean accuracy. A line far below it marks "
                    "a shift the model does not tolerate; a line that rises with severity needs a look."},
    ]


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _uri(png: Any) -> str | None:
    text = re.sub(r"\s+", "", str(png or ""))
    return "data:image/png;base64," + text if text and _BASE64.match(text) else None


def _example_rows(examples: Mapping[str, Any], names: Sequence[str]) -> list[dict[str, Any]]:
    """A row per transform: its severities' thumbnails, a run of identical ones (a transform
    that severity does not change, such as a flip) as one cell spanning the run, so the page
    carries each picture once; the clean image is shown once, beside the first row."""
    clean = _uri(examples.get("clean"))
    rows: list[dict[str, Any]] = []
    for n in names:
        cells: list[dict[str, Any]] = []
        for s in range(1, 6):
            src = _uri(examples.get(f"{n}.{s}"))
            if cells and src is not None and cells[-1]["src"] == src:
                cells[-1]["span"] += 1
            else:
                cells.append({"severity": s, "src": src, "span": 1})
        if any(c["src"] for c in cells):
            rows.append({"name": n, "clean": clean if not rows else None, "cells": cells})
    return rows


def _parameter_rows(transforms: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": str(t.get("name", "")),
            "param_name": str(t.get("param_name", "")),
            "params": [str(p) for p in t.get("params", [])][:5],
            "description": str(t.get("description", "")),
            "source": str(t.get("source", "")),
        }
        for t in transforms
    ]


def _condition_rows(study: StudyResult, transforms: Sequence[Mapping[str, Any]], severities: Sequence[int],
                    classes: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for t in transforms:
        name, params = str(t.get("name")), list(t.get("params", []))
        for s in severities:
            c = f"{name}.{s}"
            if f"accuracy.{c}" not in study.metrics:
                continue
            rows.append({
                "condition": c,
                "parameter": str(params[s - 1]) if 0 < s <= len(params) else "",
                "accuracy": fmt(study.metrics[f"accuracy.{c}"]),
                "interval": fmt_interval(study.intervals.get(f"accuracy.{c}")),
                "flip_rate": fmt(study.metrics.get(f"flip_rate.{c}")),
                "confidence": fmt(study.metrics.get(f"mean_confidence.{c}")),
                "sensitivities": [fmt(study.metrics.get(f"sensitivity.{k}.{c}")) for k in classes],
            })
    return rows


# ------------------------------------------------------------------------------ per output


def _finding_figures(metrics: Mapping[str, float], names: Sequence[str], severities: Sequence[int],
                     findings: Sequence[str], clean: Mapping[str, Any]) -> list[dict[str, str]]:
    def grid(f: str) -> list[list[float]]:
        return [[metrics.get(f"auroc.{f}.{n}.{s}", float("nan")) for s in severities] for n in names]

    out = [{"title": "Macro AUROC by transform and severity",
            "svg": accuracy_heatmap_svg(grid("macro"), names, severities, clean=_float(clean.get("macro")),
                                        label="Macro AUROC"),
            "caption": "Each cell is the mean over findings of the per-finding AUROC on the transformed images; "
                       "the first column is the clean macro AUROC. 0.5 is chance; darker cells are worse."}]
    for f in findings:
        out.append({"title": f"{f}: AUROC against severity",
                    "svg": severity_curves_svg({n: (severities, row) for n, row in zip(names, grid(f))},
                                               clean=_float(clean.get(f)), ylabel=f"AUROC {f}", size=(5.2, 3.2)),
                    "caption": f"AUROC of {f} (its probability against its presence) under each transform; the "
                               "dashed line is its clean AUROC, 0.5 is chance."})
    return out


def _finding_rows(study: StudyResult, transforms: Sequence[Mapping[str, Any]], severities: Sequence[int],
                  findings: Sequence[str]) -> list[dict[str, Any]]:
    m, iv = study.metrics, study.intervals
    rows = []
    for t in transforms:
        name, params = str(t.get("name")), list(t.get("params", []))
        for s in severities:
            c = f"{name}.{s}"
            if f"auroc.macro.{c}" not in m:
                continue
            rows.append({
                "condition": c, "parameter": str(params[s - 1]) if 0 < s <= len(params) else "",
                "auroc": fmt(m[f"auroc.macro.{c}"]), "interval": fmt_interval(iv.get(f"auroc.macro.{c}")),
                "drop": fmt(m.get(f"auroc_drop.macro.{c}")), "flip_rate": fmt(m.get(f"flip_rate.{c}")),
                "flip_interval": fmt_interval(iv.get(f"flip_rate.{c}")),
                "findings": [{"auroc": fmt(m.get(f"auroc.{f}.{c}")), "drop": fmt(m.get(f"auroc_drop.{f}.{c}")),
                              "interval": fmt_interval(iv.get(f"auroc.{f}.{c}")),
                              "flip_rate": fmt(m.get(f"flip_rate.{f}.{c}")),
                              "flip_interval": fmt_interval(iv.get(f"flip_rate.{f}.{c}"))} for f in findings],
            })
    return rows
