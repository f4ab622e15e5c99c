"""Scores of saliency maps: similarity, localisation and faithfulness (pure numpy).

Every function takes non-negative relevance maps ``(N, H, W)`` (or a single ``(H, W)``
where noted) and returns one score per map. Nothing here imports TensorFlow.

* Similarity: :func:`spearman` (rank correlation, ties averaged as in
  ``scipy.stats.spearmanr``), :func:`ssim` (Wang et al. 2004, Gaussian window sigma 1.5,
  11 taps, on maps min-max scaled to [0, 1]; equal to scikit-image's
  ``structural_similarity(gaussian_weights=True, use_sample_covariance=False,
  data_range=1)``), :func:`topk_intersection`.
* Sensitivity: :func:`relative_change` (the quantity whose maximum over small input
  perturbations is the max-sensitivity of Yeh et al. 2019).
* Localisation against a lesion mask: :func:`pointing_game` (Zhang et al. 2016),
  :func:`relevance_mass` and :func:`relevance_rank_accuracy` (Arras et al. 2022).
* Against a lung-field mask: :func:`mask_share` (the share of |attribution| inside the
  lung fields; DeGrave et al. 2021, "AI for radiographic COVID-19 detection selects
  shortcuts over signal") and :func:`area_share` (the lung fields' share of the image, what
  a uniform map would score).
* Faithfulness: :func:`deletion_images` and :func:`curve_auc` (the deletion curve of
  Petsiuk et al. 2018).

Example:
    >>> import numpy as np
    >>> m = np.zeros((1, 4, 4)); m[0, 1, 2] = 1.0
    >>> mask = np.zeros((1, 4, 4), bool); mask[0, 1, 2] = True
    >>> float(pointing_game(m, mask)[0]), float(relevance_mass(m, mask)[0])
    (1.0, 1.0)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "area_share",
    "curve_auc",
    "deletion_images",
    "mask_share",
    "minmax",
    "pointing_game",
    "rank_average",
    "relative_change",
    "relevance_mass",
    "relevance_rank_accuracy",
    "spearman",
    "ssim",
    "topk_intersection",
]

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scikit-image's truncate=3.5 gives 11 taps
_K1, _K2 = 0.01, 0.03


def _batch(maps: np.ndarray) -> np.ndarray:
    a = np.asarray(maps, dtype=np.float64)
    return a[None] if a.ndim == 2 else a


def minmax(maps: np.ndarray) -> np.ndarray:
    """Scale each map ``(N, H, W)`` to [0, 1] (a constant map becomes all zeros)."""
    a = _batch(maps)
    lo = a.min(axis=(1, 2), keepdims=True)
    span = a.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1.0), 0.0)


def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks (1-based) of each row of ``(N, P)``, ties given their average rank."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    for i, row in enumerate(v):
        order = np.argsort(row, kind="mergesort")
        sorted_row = row[order]
        starts = np.r_[True, sorted_row[1:] != sorted_row[:-1]]
        group = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)
        last = np.r_[first[1:], len(row)] - 1
        avg = (first + last) / 2.0 + 1.0
        out[i, order] = avg[group]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps ``(N, H, W)`` -> ``(N,)``.

    A constant map has no ranks to correlate; its score is NaN (as in scipy).
    """
    ra = rank_average(_batch(a).reshape(len(_batch(a)), -1))
    rb = rank_average(_batch(b).reshape(len(_batch(b)), -1))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _gaussian_taps() -> np.ndarray:
    r = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    w = np.exp(-0.5 * (r / _SSIM_SIGMA) ** 2)
    return w / w.sum()


def _filter_valid(a: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``(N, H, W)`` over the last two axes."""
    k = len(taps)
    rows = np.lib.stride_tricks.sliding_window_view(a, k, axis=1) @ taps
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=2) @ taps


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean structural similarity of each pair of maps ``(N, H, W)`` -> ``(N,)``.

    Both maps are min-max scaled to [0, 1] first (data range 1); the Gaussian window is
    applied where it fits inside the map (maps need at least 11 x 11 pixels).
    """
    x, y = minmax(a), minmax(b)
    if min(x.shape[1:]) < 2 * _SSIM_RADIUS + 1:
        raise ValueError(f"ssim expects maps of at least 11 x 11 pixels, got {x.shape[1:]}")
    taps = _gaussian_taps()
    mx, my = _filter_valid(x, taps), _filter_valid(y, taps)
    vx = _filter_valid(x * x, taps) - mx * mx
    vy = _filter_valid(y * y, taps) - my * my
    cxy = _filter_valid(x * y, taps) - mx * my
    c1, c2 = _K1**2, _K2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2))


def _top_sets(maps: np.ndarray, k: int) -> np.ndarray:
    flat = _batch(maps).reshape(len(_batch(maps)), -1)
    idx = np.argsort(-flat, axis=1, kind="mergesort")[:, :k]
    sets = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(sets, idx, True, axis=1)
    return sets


def topk_intersection(a: np.ndarray, b: np.ndarray, *, fraction: float = 0.1) -> np.ndarray:
    """Share of the top ``fraction`` pixels of ``a`` that are also top pixels of ``b`` -> ``(N,)``."""
    n_pix = int(np.prod(_batch(a).shape[1:]))
    k = max(1, int(round(fraction * n_pix)))
    return (_top_sets(a, k) & _top_sets(b, k)).sum(axis=1) / k


def relative_change(base: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``||other - base||_2 / ||base||_2`` per map ``(N, H, W)`` -> ``(N,)`` (NaN for a zero map)."""
    b, o = _batch(base), _batch(other)
    num = np.sqrt(((o - b) ** 2).sum(axis=(1, 2)))
    den = np.sqrt((b**2).sum(axis=(1, 2)))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _has_mask(masks: np.ndarray) -> np.ndarray:
    return np.asarray(np.asarray(masks, dtype=bool).reshape(len(masks), -1).any(axis=1))


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1.0 where the map's maximum falls inside the mask, else 0.0; NaN for an empty mask."""
    m = _batch(maps).reshape(len(_batch(maps)), -1)
    k = np.asarray(masks, dtype=bool).reshape(len(m), -1)
    hit = k[np.arange(len(m)), m.argmax(axis=1)].astype(np.float64)
    return np.where(_has_mask(masks), hit, np.nan)


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of the (non-negative) relevance inside the mask; NaN for an empty mask or map."""
    m = np.maximum(_batch(maps).reshape(len(_batch(maps)), -1), 0.0)
    k = np.asarray(masks, dtype=bool).reshape(len(m), -1)
    total = m.sum(axis=1)
    ok = _has_mask(masks) & (total > 0)
    return np.where(ok, (m * k).sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)


def relevance_rank_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of the K most relevant pixels inside the mask, K = mask size; NaN for an empty mask."""
    m = _batch(maps).reshape(len(_batch(maps)), -1)
    k = np.asarray(masks, dtype=bool).reshape(len(m), -1)
    out = np.full(len(m), np.nan)
    for i in np.flatnonzero(_has_mask(masks)):
        size = int(k[i].sum())
        top = np.argsort(-m[i], kind="mergesort")[:size]
        out[i] = k[i, top].mean()
    return out


def deletion_images(
    image: np.ndarray, relevance: np.ndarray, fractions: np.ndarray, *, fill: str = "mean"
) -> np.ndarray:
    """Copies of ``image`` ``(H, W, C)`` with the most relevant pixels removed first.

    Args:
        image: one image in [0, 1].
        relevance: its map ``(H, W)``; ties are broken by pixel order.
        fractions: shares of pixels removed at each step, ``(S,)`` in [0, 1].
        fill: ``mean`` (the image's per-channel mean) or ``black`` (0).

    Returns:
        ``(S, H, W, C)`` float32.
    """
    h, w, c = image.shape
    order = np.argsort(-np.asarray(relevance, dtype=np.float64).ravel(), kind="mergesort")
    value = image.reshape(-1, c).mean(axis=0) if fill == "mean" else np.zeros(c)
    out = np.repeat(image.reshape(1, h * w, c), len(fractions), axis=0).astype(np.float32)
    for s, frac in enumerate(fractions):
        out[s, order[: int(round(frac * h * w))]] = value
    return out.reshape(len(fractions), h, w, c)


def curve_auc(fractions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Trapezoid area under curves ``(N, S)`` over ``fractions`` ``(S,)`` -> ``(N,)``."""
    f = np.asarray(fractions, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    return ((s[:, 1:] + s[:, :-1]) / 2.0 * np.diff(f)).sum(axis=1)


def mask_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's absolute relevance inside its mask: ``(N, H, W)`` x2 -> ``(N,)``.

    ``sum(|m| * mask) / sum(|m|)``; NaN where the mask is empty or the map is all zero.
    A map uniform over the image scores :func:`area_share` of its mask.

    >>> m = np.array([[[1.0, 3.0], [0.0, 0.0]]]); k = np.array([[[True, False], [False, False]]])
    >>> float(mask_share(m, k)[0])
    0.25
    """
    a = np.abs(_batch(maps))
    k = np.asarray(masks, dtype=bool).reshape(a.shape)
    total = a.sum(axis=(1, 2))
    inside = (a * k).sum(axis=(1, 2))
    ok = (total > 0) & _has_mask(k)
    return np.where(ok, inside / np.where(ok, total, 1.0), np.nan)


def area_share(masks: np.ndarray) -> np.ndarray:
    """Share of each image's pixels inside its mask: ``(N, H, W)`` -> ``(N,)`` (NaN if empty)."""
    k = np.asarray(masks, dtype=bool)
    k = k[None] if k.ndim == 2 else k
    return np.where(_has_mask(k), k.mean(axis=(1, 2)), np.nan)
