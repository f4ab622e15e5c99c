"""Report view of the ``saliency`` study: galleries, activation maps, curves and tables.

Reads only the stored result (small base64 PNGs, curves and metrics); never imports
TensorFlow and never runs a model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from robustkit.report import figures
from robustkit.report.views import generic_view, table_view, view
from robustkit.results import AuditResult, StudyResult

__all__ = ["saliency_view"]

_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_LOC_COLUMNS = ("pointing_game", "mass", "rank_accuracy")


def _src(png: Any) -> str | None:
    text = re.sub(r"\s+", "", str(png or ""))
    return "data:image/png;base64," + text if text and _BASE64.match(text) else None


def _gallery(groups: Any) -> list[dict[str, Any]]:
    out = []
    for group in groups or []:
        items = []
        for item in group.get("items", []):
            maps = [{"method": str(m.get("method", "")), "overlay": _src(m.get("overlay_png")),
                     "heat": _src(m.get("heat_png"))} for m in item.get("maps", [])]
            items.append({"id": str(item.get("id", "")), "label": str(item.get("label", "")),
                          "pred": str(item.get("pred", "")), "image": _src(item.get("image_png")),
                          "maps": [m for m in maps if m["overlay"] and m["heat"]]})
        out.append({"class": str(group.get("class", "")), "images": items})
    return out


def _activations(panel: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for img in (panel or {}).get("images", []):
        layers = [{"layer": str(layer.get("layer", "")),
                   "channels": [{"channel": int(c.get("channel", 0)), "src": _src(c.get("png"))}
                                for c in layer.get("channels", []) if _src(c.get("png"))]}
                  for layer in img.get("layers", [])]
        out.append({"id": str(img.get("id", "")), "label": str(img.get("label", "")),
                    "image": _src(img.get("image_png")), "layers": layers})
    return out


def _randomization_figures(rand: Mapping[str, Any]) -> list[dict[str, Any]]:
    figs = []
    for variant in ("cascading", "independent"):
        curves = rand.get(variant)
        if not curves:
            continue
        steps = list(range(len(curves.get("steps", []))))
        for measure in ("spearman", "ssim"):
            series = {str(m): (steps, list(v)) for m, v in curves.get(measure, {}).items()}
            if not series:
                continue
            order = ", ".join(f"{i}: {s}" for i, s in enumerate(curves.get("steps", [])))
            figs.append({
                "title": f"Model randomisation ({variant}): {measure} similarity with the original map",
                "svg": figures.line_chart_svg(series, xlabel="randomised groups (top down)" if variant == "cascading"
                                              else "group randomised alone", ylabel=measure, ylim=(-1.05, 1.05)),
                "caption": f"Step 0 is the trained model. Groups: {order}. A map that still resembles the "
                           "original after the weights are random does not explain the trained model.",
            })
    return figs


def _deletion_figure(deletion: Mapping[str, Any]) -> dict[str, Any] | None:
    fr = list(deletion.get("fractions", []))
    curves = {str(m): (fr, list(v)) for m, v in deletion.get("curves", {}).items() if len(v) == len(fr)}
    if not curves:
        return None
    fill = "the image's mean" if deletion.get("fill") == "mean" else "black"
    return {"title": "Deletion curves", "svg": figures.line_chart_svg(
        curves, xlabel="share of pixels removed (most relevant first)", ylabel="class probability", ylim=(0, 1.02)),
        "caption": f"Removed pixels are replaced by {fill}. A faster drop (smaller area) means the map "
                   "found the pixels the decision rests on; 'random' removes pixels in random order."}


@view("saliency")
def saliency_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Galleries, activation panel, randomisation and deletion curves, stability and localisation."""
    ctx = generic_view(study, audit)
    data = study.data
    ctx["gallery"] = _gallery(data.get("gallery"))
    ctx["activations"] = _activations(data.get("activations"))
    ctx["parameters"] = [{"name": str(k).replace("_", " "), "value": str(v)}
                         for k, v in (data.get("parameters") or {}).items()]
    rand = data.get("randomization") or {}
    ctx["figures"] = _randomization_figures(rand)
    ctx["randomization_passed"] = [str(m) for m in rand.get("passed", [])]
    ctx["randomization_metric"] = str(rand.get("metric", "spearman"))
    ctx["randomization_images"] = rand.get("n_images")
    deletion = _deletion_figure(data.get("deletion") or {})
    if deletion:
        ctx["figures"].append(deletion)
    loc = data.get("localization") or {}
    ctx["excluded"] = [{"class": str(k), "n": int(v)} for k, v in (loc.get("excluded_by_class") or {}).items() if v]
    ctx["tables"] = [table_view(name, rows) for name, rows in study.tables.items() if rows]
    per_class = _per_class_localization(study, data)
    if per_class:
        ctx["tables"].append(table_view("localization per class", per_class))
    return ctx


def _per_class_localization(study: StudyResult, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    methods = [str(m) for m in data.get("record_columns", [])]
    rows = []
    for cls in data.get("class_names", []):
        for meth in methods:
            cells = {k: study.metrics.get(f"localization.{k}.{meth}.{cls}") for k in _LOC_COLUMNS}
            if any(v is not None for v in cells.values()):
                rows.append({"class": str(cls), "method": meth, **cells})
    return rows
