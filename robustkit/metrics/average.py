"""The one nan-aware mean, and the ``average=`` of every per-output metric.

A per-output metric (AUROC, AUPRC, sensitivity ... of each class or finding) is undefined
for an output without positives or without negatives (NaN). Its *macro* mean is the mean of
the defined values, every output counted once; its *weighted* mean weights each defined
value by the output's support (its positives), as scikit-learn's ``average="weighted"``.
*Micro* pools the image-output pairs and is computed by the metric itself, not here.

Example:
    >>> nan_mean(np.array([0.5, np.nan, 1.0]))
    0.75
    >>> nan_mean(np.array([[1.0, np.nan], [3.0, np.nan]]), axis=0).tolist()
    [2.0, nan]
"""

from __future__ import annotations

from typing import overload

import numpy as np

__all__ = ["AVERAGES", "nan_mean", "weighted_nan_mean"]

#: the choices of ``average=`` (None: one value per output)
AVERAGES: tuple[str | None, ...] = (None, "macro", "micro", "weighted")


@overload
def nan_mean(values: np.ndarray, axis: None = None) -> float: ...


@overload
def nan_mean(values: np.ndarray, axis: int) -> np.ndarray: ...


def nan_mean(values: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Mean of the finite entries (NaN and inf count as undefined); NaN where none is finite.

    Args:
        values: any shape.
        axis: None for one number over all entries, else the axis to average over.

    Returns:
        A float (``axis=None``) or an array without ``axis``; no RuntimeWarning for empty
        or all-undefined slices.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    total = np.where(finite, v, 0.0).sum(axis=axis)
    count = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(mean) if axis is None else np.asarray(mean)


def weighted_nan_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Mean of the finite ``values`` ``(K,)`` weighted by ``weights`` ``(K,)``; NaN when no
    finite value has a positive weight."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(v) & (w > 0)
    return float(np.sum(v[keep] * w[keep]) / np.sum(w[keep])) if keep.any() else float("nan")
