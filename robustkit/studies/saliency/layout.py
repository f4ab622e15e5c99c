"""The saliency records' layout, shared by the map (which writes them) and the reduce (which
reads them): record keys, the localisation scores, the stored map sizes and the area resize
that makes them. Pure numpy; no model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from robustkit.metrics import saliency as SM

if TYPE_CHECKING:
    from robustkit.studies.base import AuditContext
    from robustkit.studies.saliency.config import SaliencyConfig

__all__ = ["ACT_SIDE", "LOC_FNS", "STABILITY", "THUMB", "area_resize", "is_exclusive", "perturbation_names",
           "thumb_shape", "thumbnails", "variants"]

#: per-image stability records (one column per method)
STABILITY = ("stability_spearman", "stability_ssim", "stability_topk", "max_sensitivity")
#: the localisation scores, each stored per (image, output, method) as ``localization_<key>``
LOC_FNS = {"pointing_game": SM.pointing_game, "mass": SM.relevance_mass, "rank_accuracy": SM.relevance_rank_accuracy}
THUMB = 56  # longest side of the stored gallery maps (the report enlarges them to 112 px)
ACT_SIDE = 32  # side of the stored activation maps


def area_resize(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Mean of ``a`` ``(H, W)`` over each cell of an ``out_h x out_w`` grid (nearest when enlarging).

    Example:
        >>> area_resize(np.arange(16.0).reshape(4, 4), 2, 2).tolist()
        [[2.5, 4.5], [10.5, 12.5]]
    """
    h, w = a.shape
    rows = np.minimum((np.arange(out_h + 1) * h) // out_h, h)
    cols = np.minimum((np.arange(out_w + 1) * w) // out_w, w)
    r1, c1 = np.maximum(rows[1:], rows[:-1] + 1), np.maximum(cols[1:], cols[:-1] + 1)
    r0, c0 = np.minimum(rows[:-1], h - 1), np.minimum(cols[:-1], w - 1)
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = np.asarray(a, np.float64).cumsum(0).cumsum(1)
    total = (integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0])
    return (total / np.outer(r1 - r0, c1 - c0)).astype(np.float32)


def thumb_shape(h: int, w: int) -> tuple[int, int]:
    scale = min(1.0, THUMB / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def thumbnails(maps: dict[str, np.ndarray]) -> np.ndarray:
    """Every method's map, area-averaged to at most :data:`THUMB` pixels a side: ``(B, M, h, w)``."""
    first = next(iter(maps.values()))
    th, tw = thumb_shape(*first.shape[1:3])
    return np.stack([[area_resize(mp[r], th, tw) for mp in maps.values()] for r in range(len(first))]) \
        .reshape(len(first), len(maps), th, tw)


def variants(cfg: SaliencyConfig) -> tuple[str, ...]:
    """The randomisation variants run: cascading, and independent when configured."""
    return ("cascading", "independent") if cfg.independent else ("cascading",)


def perturbation_names(cfg: SaliencyConfig) -> list[str]:
    """The stability copies' names, in the order the map makes them."""
    return [f"noise_{i + 1}" for i in range(cfg.n_noise)] + (["brightness"] if cfg.brightness else []) \
        + (["shift"] if cfg.shift else [])


def is_exclusive(ctx: AuditContext) -> bool:
    """One label per image (the audit's task; a context without one: the model's output kind)."""
    return ctx.exclusive
