"""Classification metrics as pure numpy functions, with seeded bootstrap intervals.

Every metric here has one home and a direction: ``*_score`` and accuracies are
higher-is-better; ``*_error``/``*_loss`` are lower-is-better. Studies call these; compare and
gate read the stored numbers. No TensorFlow here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

__all__ = [
    "accuracy",
    "bootstrap_interval",
    "bootstrap_indices",
    "confusion_matrix",
    "precision_recall_f1",
    "roc_auc_ovr",
    "specificity",
    "roc_curve",
]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of samples whose predicted class equals the label; NaN for no samples."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == np.asarray(y_pred)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(K, K)``: rows are true classes, columns predicted classes."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from a confusion matrix; NaN where undefined."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / cm.sum(axis=0)
        recall = tp / cm.sum(axis=1)
        f1 = 2 * precision * recall / (precision + recall)
    f1 = np.where((precision + recall) == 0, 0.0, f1)
    return precision, recall, f1


def specificity(cm: np.ndarray) -> np.ndarray:
    """Per-class one-vs-rest specificity ``TN / (TN + FP)`` from a confusion matrix ``(K, K)``.

    For class ``k``: of the images whose label is not ``k``, the share not predicted as ``k``.
    NaN where no image has another label.

    >>> specificity(np.array([[8, 2], [1, 9]])).round(3).tolist()
    [0.9, 0.8]
    """
    cm = np.asarray(cm, dtype=np.float64)
    negatives = cm.sum() - cm.sum(axis=1)
    false_pos = cm.sum(axis=0) - np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (negatives - false_pos) / negatives


def roc_curve(y_bin: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates of a binary problem, thresholds at every distinct score."""
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, y = np.asarray(score)[order], np.asarray(y_bin, dtype=np.float64)[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = y.sum(), len(y) - y.sum()
    tpr = np.r_[0.0, tps / pos] if pos > 0 else np.full(len(tps) + 1, np.nan)
    fpr = np.r_[0.0, fps / neg] if neg > 0 else np.full(len(fps) + 1, np.nan)
    return fpr, tpr


def _binary_auc(y_bin: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney form of the ROC AUC (ties count one half)."""
    y_bin = np.asarray(y_bin, dtype=bool)
    n_pos, n_neg = int(y_bin.sum()), int((~y_bin).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    s_sorted = np.asarray(score)[order]
    # average ranks over ties
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_bin].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class ``(K,)``; NaN for a class absent or alone in ``y_true``."""
    probs = np.asarray(probs)
    return np.array([_binary_auc(np.asarray(y_true) == k, probs[:, k]) for k in range(probs.shape[1])])


def bootstrap_indices(n: int, n_boot: int, *, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """Resampling indices ``(n_boot, n)``, drawn with replacement (within strata if given)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_boot, n))
    strata = np.asarray(strata)
    out = np.empty((n_boot, n), dtype=np.int64)
    for s in np.unique(strata):
        pos = np.flatnonzero(strata == s)
        out[:, pos] = pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))]
    return out


def bootstrap_interval(
    stat: Callable[[np.ndarray], float | np.ndarray],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``stat(indices)``.

    Args:
        stat: maps an index array ``(n,)`` to a number or an array of numbers.
        n: number of samples.
        n_boot: resamples.
        seed: seed of the resampling.
        level: coverage of the interval.
        strata: optional labels; resampling is done within each stratum so that every
            class keeps its count (the usual choice for per-class metrics).

    Returns:
        ``(low, high)``, each shaped like ``stat``'s output; NaN where the statistic was
        undefined in more than half of the resamples.
    """
    idx = bootstrap_indices(n, n_boot, seed=seed, strata=strata)
    values = np.asarray([np.asarray(stat(row), dtype=np.float64) for row in idx])
    alpha = (1.0 - level) / 2.0
    finite = np.where(np.isfinite(values), values, np.nan)
    valid = np.mean(np.isfinite(values), axis=0) >= 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as wanted
        lo = np.nanquantile(finite, alpha, axis=0)
        hi = np.nanquantile(finite, 1 - alpha, axis=0)
    return np.where(valid, lo, np.nan), np.where(valid, hi, np.nan)
