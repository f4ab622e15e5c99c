"""Report view of the ``calibration`` study: reliability diagrams, shift curves, referral.

Only reads the stored :class:`~robustkit.results.StudyResult` (numbers the study computed);
draws with matplotlib ``Figure`` objects through the helpers of
:mod:`robustkit.report.figures`, so the SVG style matches the rest of the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

from robustkit.report import figures
from robustkit.report.views import (
    arrow,
    fmt,
    fmt_interval,
    generic_view,
    metric_rows,
    sentence,
    table_view,
    view,
)
from robustkit.results import AuditResult, StudyResult

__all__ = ["calibration_view", "classwise_svg", "reliability_svg", "risk_coverage_svg", "shift_svg"]

_SCORES = ("ece", "ece_equal_mass", "mce", "classwise_ece", "classwise_ece_adaptive", "debiased_l2_ce", "brier",
           "ece.macro", "brier.macro", "nll")
_OUTPUT_SCORES = ("ece", "brier")
#: title and caption of the per-output reliability figure, for an exclusive task and otherwise
_OUTPUT_FIGURE = {
    True: ("Classwise reliability", "For each class, how often the case truly is that class against the "
                                    "probability given to it (equal-width bins), before (solid) and after (dashed) "
                                    "temperature scaling; on the diagonal is calibrated."),
    False: ("Reliability per finding (equal-width bins, evaluation split)",
            "For each finding, the share of images that have it (observed frequency) against the probability the "
            "model gave it, before (solid) and after (dashed) temperature scaling; on the diagonal is calibrated, "
            "below it over-confident that the finding is present."),
}
_BLUE, _ORANGE, _RED, _GREY = figures.PALETTE[0], figures.PALETTE[1], figures.PALETTE[3], "#888888"


def _arr(values: Sequence[Any] | None) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in (values or [])], dtype=float)


def _reliability_panel(ax: Any, hist_ax: Any, bins: Mapping[str, Any], title: str) -> None:
    lower, upper = _arr(bins.get("lower")), _arr(bins.get("upper"))
    acc, conf = _arr(bins.get("accuracy")), _arr(bins.get("confidence"))
    lo, hi, count = _arr(bins.get("low")), _arr(bins.get("high")), _arr(bins.get("count"))
    centre, width = (lower + upper) / 2, (upper - lower) * 0.9
    ok = count > 0
    ax.plot([0, 1], [0, 1], linestyle=":", color=_GREY, linewidth=1)
    ax.bar(centre[ok], acc[ok], width=width[ok], color=_BLUE, alpha=0.75, label="accuracy")
    ax.bar(centre[ok], conf[ok] - acc[ok], bottom=acc[ok], width=width[ok], color=_RED, alpha=0.25,
           edgecolor=_RED, linewidth=0.6, label="gap to confidence")
    ax.errorbar(centre[ok], acc[ok], yerr=[acc[ok] - lo[ok], hi[ok] - acc[ok]], fmt="none",
                ecolor="#222222", elinewidth=0.8, capsize=1.5, label="95% Wilson interval")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Accuracy")
    ax.set_title(figures.safe_label(title))
    ax.legend(loc="upper left")
    hist_ax.bar(centre, count, width=width, color=_GREY)
    hist_ax.set_xlim(0, 1)
    hist_ax.set_xlabel("Confidence (max probability)")
    hist_ax.set_ylabel("Count")


def reliability_svg(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Reliability diagrams before and after scaling, each over its confidence histogram.

    Args:
        before, after: :func:`robustkit.metrics.calibration.reliability_bins` outputs.
    """
    with matplotlib.rc_context(figures.STYLE):
        fig = figures.new_figure(8.4, 4.6)
        axes = fig.subplots(2, 2, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
        _reliability_panel(axes[0, 0], axes[1, 0], before, "Before scaling")
        _reliability_panel(axes[0, 1], axes[1, 1], after, "After scaling")
        return figures.to_svg(fig)


def classwise_svg(classwise: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One small reliability panel per class: observed frequency of the class against p_k."""
    k = max(len(classwise), 1)
    with matplotlib.rc_context(figures.STYLE):
        fig = figures.new_figure(min(3.0 * k, 10.0), 3.0)
        axes = np.atleast_1d(fig.subplots(1, k, sharey=True))
        for ax, (name, pair) in zip(axes, classwise.items()):
            ax.plot([0, 1], [0, 1], linestyle=":", color=_GREY, linewidth=1)
            for key, colour, style in (("before", _BLUE, "-"), ("after", _ORANGE, "--")):
                bins = pair.get(key, {})
                x, y = _arr(bins.get("confidence")), _arr(bins.get("accuracy"))
                ok = np.isfinite(x) & np.isfinite(y)
                ax.plot(x[ok], y[ok], style, marker="o", markersize=3, color=colour, linewidth=1.3,
                        label="before scaling" if key == "before" else "after scaling")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(figures.safe_label(name))
            ax.set_xlabel("Predicted probability")
        axes[0].set_ylabel("Observed frequency")
        axes[0].legend(loc="upper left")
        return figures.to_svg(fig)


def shift_svg(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """ECE before (solid) and after (dashed) scaling, and accuracy, against shift severity."""
    with matplotlib.rc_context(figures.STYLE):
        fig = figures.new_figure(9.0, 3.8)
        ax_ece, ax_acc = fig.subplots(1, 2)
        for i, (name, c) in enumerate(curves.items()):
            colour = figures.PALETTE[i % len(figures.PALETTE)]
            sev = _arr(c.get("severity"))
            ax_ece.plot(sev, _arr(c.get("ece")), "-", marker="o", markersize=3, color=colour,
                        label=figures.safe_label(name))
            ax_ece.plot(sev, _arr(c.get("ece_ts")), "--", marker="s", markersize=3, color=colour)
            ax_acc.plot(sev, _arr(c.get("accuracy")), "-", marker="o", markersize=3, color=colour,
                        label=figures.safe_label(name))
        ax_ece.plot([], [], "-", color="#444444", label="before scaling")
        ax_ece.plot([], [], "--", color="#444444", label="after scaling")
        ax_ece.set_xlabel("Severity (0 = clean)")
        ax_ece.set_ylabel("ECE")
        ax_ece.set_ylim(bottom=0)
        fig.legend(*ax_ece.get_legend_handles_labels(), loc="outside lower center", ncol=6)
        ax_acc.set_xlabel("Severity (0 = clean)")
        ax_acc.set_ylabel("Accuracy")
        ax_acc.set_ylim(0, 1.02)
        return figures.to_svg(fig)


def risk_coverage_svg(curve: Mapping[str, Sequence[float]], points: Sequence[Mapping[str, Any]]) -> str:
    """Risk against coverage, the oracle's curve dotted, and the target-risk operating points."""
    with matplotlib.rc_context(figures.STYLE):
        fig = figures.new_figure(5.2, 4.2)
        ax = fig.subplots()
        cov = _arr(curve.get("coverage"))
        ax.plot(cov, _arr(curve.get("risk")), color=_BLUE, linewidth=1.6, label="model (scaled confidence)")
        ax.plot(cov, _arr(curve.get("optimal_risk")), linestyle=":", color=_GREY, label="perfect ranking")
        for i, p in enumerate(points):
            c, r = p.get("coverage"), p.get("target_risk")
            if r is None:
                continue
            colour = figures.PALETTE[(i + 1) % len(figures.PALETTE)]
            ax.axhline(float(r), color=colour, linewidth=0.8, linestyle="--",
                       label=f"target risk {float(r):g}" + ("" if c else ": not reached"))
            if c:
                ax.plot([float(c)], [float(r)], marker="D", markersize=6, color=colour, linestyle="none",
                        label=f"risk \u2264 {float(r):g}: coverage {float(c):.2f}")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("Coverage (share of cases kept)")
        ax.set_ylabel("Risk (error among kept)")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2)
        return figures.to_svg(fig)


def _pair_rows(study: StudyResult) -> list[dict[str, Any]]:
    """Before/after rows: the top-label and classwise scores (exclusive tasks), the per-output
    macro means and the NLL (every task)."""
    rows = []
    for name in _SCORES:
        if name not in study.metrics:
            continue
        after = name.replace(".", "_ts.", 1) if "." in name else f"{name}_ts"
        rows.append({
            "name": name,
            "before": fmt(study.metrics.get(name)), "before_ci": fmt_interval(study.intervals.get(name)),
            "after": fmt(study.metrics.get(after)), "after_ci": fmt_interval(study.intervals.get(after)),
            "arrow": arrow(study.direction(name)), "direction": study.direction(name),
        })
    return rows


def _per_output_rows(study: StudyResult, names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per output: prevalence, ECE and Brier before and after scaling, with intervals."""
    m, iv = study.metrics, study.intervals
    return [{"output": n, "prevalence": fmt(m.get(f"prevalence.{n}")),
             "cells": [{"value": fmt(m.get(f"{k}.{n}")), "interval": fmt_interval(iv.get(f"{k}.{n}"))}
                       for root in _OUTPUT_SCORES for k in (root, f"{root}_ts")]}
            for n in names]


def _estimator_rows(estimators: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    return [
        {"metric": str(m), "estimator": str(e.get("estimator", "")),
         "n_bins": "\u2014" if e.get("n_bins") is None else str(e.get("n_bins")),
         "binning": str(e.get("binning", "")), "reference": str(e.get("reference", ""))}
        for m, e in estimators.items() if not str(m).endswith("_ts")
    ]


def _figures(data: Mapping[str, Any], exclusive: bool) -> dict[str, dict[str, str] | None]:
    out: dict[str, dict[str, str] | None] = {"reliability": None, "outputs": None, "shift": None, "risk": None}
    rel = data.get("reliability") or {}
    if rel.get("before") and rel.get("after"):
        out["reliability"] = {"title": f"Reliability diagrams ({rel.get('n_bins')} equal-width bins, evaluation split)",
                              "svg": reliability_svg(rel["before"], rel["after"]),
                              "caption": "Blue bars: accuracy of the cases in each confidence bin, with its 95% Wilson "
                                         "interval; red: the gap up (over-confident) or down (under-confident) to the "
                                         "bin's mean confidence. The dotted diagonal is perfect calibration. Below: how "
                                         "many cases fall in each bin."}
    per_output = data.get("output_reliability") or data.get("classwise_reliability") or data.get("finding_reliability")
    if per_output:  # audits before robustkit 2.x's one calibration path stored it under the kind's name
        out["outputs"] = {"title": _OUTPUT_FIGURE[exclusive][0], "svg": classwise_svg(per_output),
                          "caption": _OUTPUT_FIGURE[exclusive][1]}
    curves = (data.get("shift") or {}).get("transforms") or {}
    if curves:
        out["shift"] = {"title": "Calibration under shift", "svg": shift_svg(curves),
                        "caption": "Left: ECE before (solid) and after (dashed) the temperature fitted on clean "
                                   "images; right: accuracy. Severity 0 is the clean evaluation split."}
    rc = data.get("risk_coverage")
    if rc:
        out["risk"] = {"title": "Risk-coverage curve", "svg": risk_coverage_svg(rc, data.get("operating_points", [])),
                       "caption": "Keep the most confident cases, refer the rest: the error among those kept "
                                  "(risk) for each share kept (coverage). Diamonds mark the largest coverage "
                                  "that meets each target risk."}
    return out


def _is_shift_metric(name: str) -> bool:
    """``ece.<transform>.<severity>`` and the like (shown in the shift table instead)."""
    root = name.split(".")[0]
    return name.count(".") >= 2 and root in ("ece", "ece_ts", "brier", "brier_ts", "accuracy")


@view("calibration")
def calibration_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Context of ``partials/calibration.html.j2``: one path for every task; the top-label,
    shift and selective parts are empty where the study did not measure them."""
    ctx = generic_view(study, audit)
    data = study.data
    exclusive = not data.get("multilabel")
    split = data.get("split") or {}
    ctx["exclusive"] = exclusive
    ctx["output_word"] = "Class" if exclusive else "Finding"
    ctx["split"] = {"n_calibration": fmt(split.get("n_calibration"), "n_calibration"),
                    "n_evaluation": fmt(split.get("n_evaluation"), "n_evaluation")}
    ctx["temperature"] = fmt(study.metrics.get("temperature"))
    ctx["usage"] = str((data.get("temperature_export") or {}).get("usage", ""))
    ctx["calibration_form"] = str(data.get("calibration_form", ""))
    ctx["temperature_form"] = str(data.get("temperature_form", ""))
    ctx["not_measured"] = sentence(str(data.get("not_measured", "")))
    ctx["positive_class"] = str(data.get("positive_class") or "")  # the audit's critical class, if any
    ctx["pairs"] = _pair_rows(study)
    ctx["per_output"] = _per_output_rows(study, [str(n) for n in data.get("class_names", [])])
    ctx["selective"] = metric_rows(study, [m for m in study.metrics
                                           if m.split(".")[0] in ("aurc", "e_aurc", "coverage_at_risk", "sensitivity_at_risk")])
    ctx["metrics"] = [r for r in ctx["metrics"] if not _is_shift_metric(r["name"])]
    ctx["referral"] = table_view("referral", study.tables.get("referral", [])) if study.tables.get("referral") else None
    ctx["shift_table"] = table_view("shift", study.tables.get("shift", [])) if study.tables.get("shift") else None
    ctx["shift_skipped"] = str((data.get("shift") or {}).get("skipped") or "")
    ctx["tables"] = [t for t in ctx["tables"] if t["title"] not in ("referral", "shift", "per_output")]
    ctx["estimators"] = _estimator_rows(data.get("estimators") or {})
    export = data.get("temperature_export")
    ctx["export"] = json.dumps(export, indent=2, sort_keys=True) if export else ""
    ctx["figs"] = _figures(data, exclusive)
    ctx["figures"] = [f for f in ctx["figs"].values() if f]
    return ctx
