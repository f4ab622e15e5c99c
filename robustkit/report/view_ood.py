"""Report view of the ``ood`` study: score histograms, ROC of the recommended score, tables,
the gallery of OOD images called the critical class (else their top class) most confidently.

Reads only the stored :class:`~robustkit.results.StudyResult`; histogram counts and ROC
points were computed by the study (the scikit-learn Display pattern).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

from robustkit.report import figures
from robustkit.report.views import fmt, fmt_interval, generic_view, metric_rows, view
from robustkit.results import AuditResult, StudyResult

__all__ = ["histograms_svg", "ood_view"]

_BASE64 = re.compile(r"^[A-Za-z0-9+/=]+$")
_LABELS = {"auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out", "fpr95": "FPR@95 (ID+)",
           "fpr95_openood": "FPR@95 (OOD+)"}


def histograms_svg(hist: Mapping[str, Any], score: str, sets: Sequence[str]) -> str:
    """Small multiples: the ID histogram (grey) against each set's (colour), densities."""
    edges = np.asarray(hist["edges"], dtype=float)
    centre, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    counts = hist["counts"]
    cols = 4
    rows = max(1, math.ceil(len(sets) / cols))
    with matplotlib.rc_context(figures.STYLE):
        fig = figures.new_figure(2.4 * cols, 1.8 * rows + 0.4)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
        ident = np.asarray(counts["id"], dtype=float)
        for i, ax in enumerate(axes):
            if i >= len(sets):
                ax.set_axis_off()
                continue
            other = np.asarray(counts.get(sets[i], []), dtype=float)
            ax.bar(centre, ident / max(ident.sum(), 1), width=width, color="#888888", alpha=0.6, label="ID")
            if other.size:
                ax.bar(centre, other / max(other.sum(), 1), width=width, color=figures.PALETTE[i % 8], alpha=0.6,
                       label=figures.safe_label(sets[i]))
            ax.set_title(figures.safe_label(sets[i]))
            ax.set_yticks([])
        axes[0].legend(loc="upper left")
        fig.supxlabel(figures.safe_label(f"{score} score (higher = more in-distribution)"))
        return figures.to_svg(fig)


def _auroc_table(study: StudyResult, sets: list[Mapping[str, Any]], scores: list[str]) -> dict[str, Any]:
    rows = []
    for info in [*sets, {"name": "far", "kind": "pooled"}, {"name": "near", "kind": "pooled"}]:
        name = str(info["name"])
        cells = [{"value": fmt(study.metrics.get(f"auroc.{sc}.{name}")),
                  "interval": fmt_interval(study.intervals.get(f"auroc.{sc}.{name}"))} for sc in scores]
        if any(c["value"] != "\u2014" for c in cells):
            rows.append({"set": name, "kind": str(info.get("kind", "")), "n": str(info.get("n", "")), "cells": cells})
    return {"scores": scores, "rows": rows}


def _recommended_rows(study: StudyResult, sets: list[str], score: str,
                      rate: str = "confident_critical_rate") -> list[dict[str, Any]]:
    rows = []
    for name in ["id", *sets, "far", "near"]:
        row = {"set": name}
        for m in _LABELS:
            key = f"{m}.{score}.{name}"
            row[_LABELS[m]] = fmt(study.metrics.get(key)) + (
                f" {fmt_interval(study.intervals.get(key))}" if study.intervals.get(key) else "")
        row["called" if rate == "finding_call_rate" else "confident"] = fmt(study.metrics.get(f"{rate}.{name}"))
        row["after filter"] = fmt(study.metrics.get(f"{rate}_filtered.{name}"))
        rows.append(row)
    return rows


def _gallery(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for it in items:
        png = re.sub(r"\s+", "", str(it.get("image_png", "")))
        if png and _BASE64.match(png):
            out.append({"id": str(it.get("id", "")), "set": str(it.get("set", "")), "prob": fmt(it.get("prob")),
                        "rejected": bool(it.get("rejected")), "src": "data:image/png;base64," + png})
    return out


@view("ood")
def ood_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Context of ``partials/ood.html.j2``."""
    ctx = generic_view(study, audit)
    data = study.data
    sets = [s for s in data.get("sets", []) if s.get("n")]
    names = [str(s["name"]) for s in sets]
    rec = str(data.get("recommended", ""))
    scores = [str(s) for s in data.get("scores", [])]
    ctx.update(sets=sets, recommended=rec, scores=scores, reference=str(data.get("reference", "")),
               weaker=bool(data.get("weaker_reference")), threshold=fmt(data.get("threshold")),
               positive_class=str(data.get("positive_class") or ("a finding" if data.get("multilabel") else
                                                                 "its top class")),
               has_critical=bool(data.get("positive_class")),
               multilabel=bool(data.get("multilabel")),
               score_forms=[{"score": str(k), "form": str(v)} for k, v in (data.get("score_forms") or {}).items()],
               operating_threshold=fmt(data.get("operating_threshold")),
               auroc=_auroc_table(study, sets, scores), rec_rows=_recommended_rows(study, names, rec, str(data.get("call_rate", "confident_critical_rate"))),
               gallery=_gallery(data.get("gallery", [])),
               export=json.dumps(data.get("ood_export"), indent=2, sort_keys=True) if data.get("ood_export") else "")
    ctx["metrics"] = metric_rows(study, ["n_id", "n_reference"])
    figs = []
    hist = (data.get("histograms") or {}).get(rec)
    if hist:
        figs.append({"title": f"Score histograms: {rec}", "svg": histograms_svg(hist, rec, names),
                     "caption": "Grey: in-distribution test images; colour: each OOD set (each normalised to "
                                "its count). Little overlap means the score tells them apart."})
    roc = data.get("roc") or {}
    if roc:
        curves = {k: (v["fpr"], v["tpr"]) for k, v in roc.items()}
        aucs = {k: study.metrics.get(f"auroc.{rec}.{k}", float("nan")) for k in curves}
        figs.append({"title": f"ROC of the {rec} score, ID positive", "svg": figures.roc_curves_svg(curves, aucs=aucs),
                     "caption": "True positive rate: in-distribution images kept; false positive rate: OOD images "
                                "kept. The dotted diagonal is a score that cannot tell them apart."})
    ctx["figures"] = figs
    return ctx
