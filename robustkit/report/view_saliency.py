"""Report view of the ``saliency`` study: galleries, activation maps, curves and tables.

Reads only the stored result (small float maps, curves and metrics) and draws it: the maps
are coloured (an inferno-like ramp), laid over the grey image, outlined with the lesion mask
and encoded as PNGs here. Never imports TensorFlow and never runs a model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from robustkit.report import figures
from robustkit.report.views import generic_view, table_view, view
from robustkit.results import AuditResult, StudyResult

__all__ = ["saliency_view"]

_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def _src(png: Any) -> str | None:
    """A stored base64 PNG (results written before maps were stored as numbers) as a data URI."""
    text = re.sub(r"\s+", "", str(png or ""))
    return "data:image/png;base64," + text if text and _BASE64.match(text) else None


# ----------------------------------------------------------------- drawing stored maps

_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32) / 255
_OUTLINE = (0.0, 1.0, 0.3)


def _array(grid: Any) -> np.ndarray | None:
    """A stored map (nested lists of numbers) as a 2-D float array; None when absent or malformed."""
    try:
        arr = np.asarray(grid, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 2 and arr.size and np.all(np.isfinite(arr)) else None


def _colormap(m: np.ndarray) -> np.ndarray:
    """An inferno-like colour ramp of a map in [0, 1] -> RGB ``(H, W, 3)``."""
    t = np.clip(m, 0, 1) * (len(_ANCHORS) - 1)
    i = np.minimum(t.astype(int), len(_ANCHORS) - 2)
    f = (t - i)[..., None]
    return _ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _draw_outline(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None or mask.shape != rgb.shape[:2] or not mask.any():
        return rgb
    out = rgb.copy()
    out[_outline(mask)] = _OUTLINE
    return out


def _uri(rgb: np.ndarray, side: int) -> str:
    """A PNG data URI of ``rgb`` ``(h, w, 3)``, enlarged (pixel blocks) to about ``side`` pixels."""
    reps = max(1, side // max(rgb.shape[:2]))
    return figures.image_data_uri(np.kron(rgb, np.ones((reps, reps, 1))) if reps > 1 else rgb)


def _gray(img: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(img, 0, 1)[..., None], 3, axis=-1)


def _record_map(records: Mapping[str, Any], key: str, at: Any) -> np.ndarray | None:
    """One stored map of the study's records (``map_thumbs[row, column]`` ...), if present."""
    arr = records.get(key)
    try:
        return _array(arr[tuple(int(i) for i in at)]) if arr is not None else None
    except (IndexError, TypeError, ValueError):
        return None


def _gallery_item(item: Mapping[str, Any], records: Mapping[str, Any]) -> dict[str, Any]:
    image = _array(item.get("image"))
    grid = _array(item.get("mask"))
    mask = grid > 0.5 if grid is not None else None
    gray = _gray(image) if image is not None else None
    maps: list[dict[str, str | None]] = []
    for m in item.get("maps", []):
        at = m.get("at") or (item.get("row"), m.get("column"))  # results before 2.x stored only the column
        v = _record_map(records, str(m.get("key", "map_thumbs")), at)
        own = _array(m.get("mask")) if "mask" in m else grid  # the mask of the map's output
        outline = own > 0.5 if own is not None else None
        if v is not None and gray is not None and v.shape == gray.shape[:2]:
            maps.append({"method": str(m.get("method", "")),
                         "overlay": _uri(_draw_outline(0.5 * gray + 0.5 * _colormap(v), outline), 112),
                         "heat": _uri(_draw_outline(_colormap(v), outline), 112)})
        elif m.get("overlay_png"):
            maps.append({"method": str(m.get("method", "")), "overlay": _src(m.get("overlay_png")),
                         "heat": _src(m.get("heat_png"))})
    src = _uri(_draw_outline(gray, mask), 112) if gray is not None else _src(item.get("image_png"))
    return {"id": str(item.get("id", "")), "label": str(item.get("label", "")), "pred": str(item.get("pred", "")),
            "image": src, "maps": [m for m in maps if m["overlay"] and m["heat"]]}


def _gallery(groups: Any, records: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"class": str(group.get("class", "")),
             "images": [_gallery_item(it, records) for it in group.get("items", [])]}
            for group in groups or []]


def _channel_src(c: Mapping[str, Any], records: Mapping[str, Any]) -> str | None:
    v = _record_map(records, "activation_maps", c.get("at") or ())
    return _uri(_colormap(v), 64) if v is not None else _src(c.get("png"))


def _activations(panel: Mapping[str, Any] | None, records: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for img in (panel or {}).get("images", []):
        layers = [{"layer": str(layer.get("layer", "")),
                   "channels": [{"channel": int(c.get("channel", 0)), "src": src}
                                for c in layer.get("channels", []) if (src := _channel_src(c, records))]}
                  for layer in img.get("layers", [])]
        gray = _array(img.get("image"))
        out.append({"id": str(img.get("id", "")), "label": str(img.get("label", "")),
                    "image": _uri(_gray(gray), 64) if gray is not None else _src(img.get("image_png")),
                    "layers": layers})
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


_EXPLAINED_ONE = "Each method explains the logit of the predicted class."
_EXPLAINED_SEVERAL = (
    "Multi-label model: every finding present on an image is explained on its own (its output's logit before "
    "the sigmoid) and localised against that finding's mask; an image with several findings shows each "
    "finding's maps, outlined with that finding's mask. Stability, randomisation and deletion explain each "
    "image's top-scoring finding.")


@view("saliency")
def saliency_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Galleries, activation panel, randomisation and deletion curves, stability and localisation."""
    ctx = generic_view(study, audit)
    data = study.data
    ctx["gallery"] = _gallery(data.get("gallery"), study.records)
    ctx["explained"] = _EXPLAINED_SEVERAL if data.get("multilabel") else _EXPLAINED_ONE
    ctx["activations"] = _activations(data.get("activations"), study.records)
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
    return ctx
