"""The saliency study's report data: the gallery and the activation panel, as small grey images
and masks read from the data side, and pointers into the records for the model's maps.

Pure (no model): the report colours and draws these numbers; the study never plots.

Its cost does not grow with the number of samples beyond one pass over the dataset's ids and
targets (read once, then indexed per shown image), and it never copies the records' per-sample
maps (``thumbs``, ``act_maps``): it reads their shape and hands out ``at`` pointers into them,
so memory-mapped records stay on disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.metrics.outputs import probabilities
from robustkit.studies.clean import finding_thresholds
from robustkit.studies.saliency.layout import THUMB, area_resize, is_exclusive, thumb_shape

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.studies.base import AuditContext, Records
    from robustkit.studies.saliency.config import SaliencyConfig

__all__ = ["report_data"]


def report_data(records: Records, data: Dataset, methods: list[str], cfg: SaliencyConfig,
                ctx: AuditContext) -> dict[str, Any]:
    """The ``data`` block of the study's result: gallery, activation panel and the methods' parameters."""
    layer = str(records["gradcam_layer"][0]) if len(records["gradcam_layer"]) else cfg.layer
    exclusive = is_exclusive(ctx)
    rows = _Rows(data)
    return {
        "gallery": _gallery(records, data, rows, methods, cfg.n_gallery, ctx, exclusive=exclusive),
        "multilabel": not exclusive,
        "activations": _activation_panel(records, data, rows, ctx),
        "class_names": list(data.class_names),
        "parameters": {
            "gradcam_layer": layer,
            "vanilla_gradient": "max over channels of |d logit / d x|, min-max scaled per image",
            "smoothgrad": (f"{cfg.smoothgrad_n} noisy copies, noise sigma {cfg.smoothgrad_noise} x the image's "
                           "value range"),
            "integrated_gradients": (f"{cfg.ig_steps} steps (midpoint rule), baseline black (0) in pixel space; "
                                     "for InceptionV3, whose own input scale is [-1, 1], its zero is mid-grey"),
            "gradcam": f"layer {layer}, relu of the gradient-weighted channel sum, bilinear upsampling",
            "explained_class": "the predicted class (logit before the softmax)" if exclusive else _EXPLAINED_MULTILABEL,
            "deletion": f"{cfg.deletion_steps} steps, removed pixels replaced by "
                        + ("the image's mean" if cfg.deletion_fill == "mean" else "black"),
            "stability": (f"{cfg.n_noise} Gaussian noise copies (sigma {cfg.noise_sigma}), brightness "
                          f"{cfg.brightness:+}, shift {cfg.shift} px; top-k = {cfg.topk_fraction:.0%} of pixels"),
        },
    }


_EXPLAINED_MULTILABEL = (
    "multi-label: each finding present on an image, its own output (logit before the sigmoid), localised "
    "against that finding's mask; stability, randomisation, deletion and IG completeness: each image's "
    "top-scoring finding (the arg-max output)")


class _Rows:
    """The dataset's ids, targets and class names, read once (``Dataset.ids`` and
    ``Dataset.targets`` build a fresh array on every access: one per shown image made the report
    data quadratic in the number of samples)."""

    def __init__(self, data: Dataset) -> None:
        self.ids, self.targets = data.ids, np.asarray(data.targets, bool)
        self.names = list(data.class_names)

    def label(self, row: int) -> str:
        """A sample's outputs present (its class; for multi-label data ``A | B``, or ``No Finding``)."""
        return " | ".join(self.names[f] for f in np.flatnonzero(self.targets[row])) or "No Finding"


def _gallery(records: Records, data: Dataset, rows: _Rows, methods: list[str], n_gallery: int, ctx: AuditContext,
             *, exclusive: bool) -> list[dict[str, Any]]:
    """Per output, its first ``n_gallery`` images; each item shows each method's map of every
    output the image has, outlined with that output's mask, and the image outlined with all of them.

    Exclusive tasks: an image's one output is its class, and its map is the image's map of the
    predicted class (``map_thumbs[row, method]``, the mask the image's lesion mask); otherwise
    each output's own map (``output_thumbs[row, output, method]``, the mask that output's).
    """
    thumbs = records["thumbs"]
    shape = (int(thumbs.shape[2]), int(thumbs.shape[3]))
    called = _calls(records, data, ctx, exclusive=exclusive)
    out = []
    for k, name in enumerate(rows.names):
        shown = np.flatnonzero(rows.targets[:, k])[:n_gallery]
        if not len(shown):
            continue
        items = [_gallery_item(data, rows, int(r), img, methods, called[r], ctx, shape, exclusive=exclusive)
                 for r, img in zip(shown, _gray_thumbs(data, shown, ctx, shape))]
        out.append({"class": name, "items": items})
    return out


def _gallery_item(data: Dataset, rows: _Rows, row: int, image: np.ndarray, methods: list[str], called: np.ndarray,
                  ctx: AuditContext, shape: tuple[int, int], *, exclusive: bool) -> dict[str, Any]:
    names, present = rows.names, rows.targets[row]
    h, w, _ = ctx.input_shape or (*shape, 1)
    outputs = np.flatnonzero(present)
    masks = {int(f): data.load_masks([row], size=(h, w), finding=None if exclusive else names[f])[0] for f in outputs}
    maps = [{"method": meth if exclusive else f"{meth} · {names[f]}", "output": names[f],
             "key": "map_thumbs" if exclusive else "output_thumbs", "at": [row, j] if exclusive else [row, int(f), j],
             "mask": _mask_grid(masks[int(f)], shape)} for f in outputs for j, meth in enumerate(methods)]
    union = np.logical_or.reduce(list(masks.values())) if masks else np.zeros((h, w), bool)
    return {"id": str(rows.ids[row]), "label": rows.label(row),
            "pred": " | ".join(names[f] for f in np.flatnonzero(called)) or "No Finding",
            "image": _grid(image), "mask": _mask_grid(union, shape), "row": row, "maps": maps}


def _calls(records: Records, data: Dataset, ctx: AuditContext, *, exclusive: bool) -> np.ndarray:
    """The calls ``(N, K)`` a gallery item shows as predicted: the explained (arg-max) class, or
    each output at the audit's threshold."""
    if exclusive:
        return np.eye(len(data.class_names), dtype=bool)[records["target"]]
    thresholds = finding_thresholds(ctx, data)[0]
    return probabilities(records["logits"], "multilabel") >= thresholds[None, :]


def _mask_grid(mask: np.ndarray, shape: tuple[int, int]) -> list[Any] | None:
    return (area_resize(mask, *shape) > 0).astype(int).tolist() if mask.any() else None


def _grid(a: np.ndarray) -> list[Any]:
    """A small image read from the data side as nested lists (rounded: the report only draws it;
    the model's maps, which carry float noise, are records: ``map_thumbs``, ``activation_maps``)."""
    return np.round(np.asarray(a, np.float64), 3).tolist()


def _gray_thumbs(data: Dataset, rows: np.ndarray, ctx: AuditContext, shape: tuple[int, int]) -> np.ndarray:
    """The images at ``rows``, as the model sees them, in grey and area-averaged to ``shape``."""
    h, w, c = ctx.input_shape or (*shape, 1)
    x = data.load_images(rows, size=(h, w), channels=c)
    return np.stack([area_resize(img.mean(axis=-1), *shape) for img in x]) if len(rows) else np.zeros((0, *shape))


def _activation_panel(records: Records, data: Dataset, rows: _Rows, ctx: AuditContext) -> dict[str, Any]:
    shown = np.flatnonzero(records["act_role"])
    layers = [str(s) for s in records["act_layers"][shown[0]]] if len(shown) else []
    if not layers:
        return {"layers": [], "images": []}
    labels = np.asarray(data.labels)
    shown = shown[np.argsort(labels[shown], kind="mergesort")]
    grays = _gray_thumbs(data, shown, ctx, thumb_shape(*(ctx.input_shape or (THUMB, THUMB))[:2]))
    channels = np.asarray(records["act_channels"][shown])
    images = []
    for i, (r, gray) in enumerate(zip(shown, grays)):
        panel = [{"layer": name, "channels": [
            {"channel": int(ch), "at": [int(r), li, ci]}
            for ci, ch in enumerate(channels[i, li]) if ch >= 0]} for li, name in enumerate(layers)]
        images.append({"id": str(rows.ids[r]), "label": rows.label(int(r)), "image": _grid(gray),
                       "layers": panel})
    return {"layers": layers, "images": images}
