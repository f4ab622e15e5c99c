"""The one decision-statistics kernel: tp/fp/tn/fn per output, and the rates read from them.

Every thresholded metric of the package (sensitivity, specificity, precision, F1, accuracy
of each class or finding) is computed here in two stages, as torchmetrics does: *update*
counts the four outcomes per output (:func:`decision_counts` from calls, or
:func:`counts_from_confusion` from a single-label confusion matrix, whose classes are read
one-vs-rest), and *compute* turns counts into rates (:func:`decision_scores`) with an
``average=``: None (one value per output), ``"macro"`` (the nan-aware mean of the defined
values), ``"weighted"`` (by positives) or ``"micro"`` (counts pooled over outputs).

Example:
    >>> t = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    >>> called = np.array([[1, 0], [0, 1], [0, 1], [1, 0]], dtype=bool)
    >>> decision_scores(decision_counts(t, called))["sensitivity"].tolist()
    [0.5, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np

from robustkit.errors import param_error
from robustkit.metrics.average import AVERAGES, nan_mean, weighted_nan_mean

__all__ = ["DECISION_SCORES", "DecisionCounts", "counts_from_confusion", "decision_counts", "decision_scores"]

#: the rates :func:`decision_scores` returns
DECISION_SCORES = ("sensitivity", "specificity", "precision", "f1", "accuracy")


@dataclass(frozen=True)
class DecisionCounts:
    """Outcome counts per output, each ``(K,)`` float64: true/false positives and negatives."""

    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray

    def pooled(self) -> DecisionCounts:
        """The counts summed over outputs, each ``(1,)`` (micro averaging)."""
        return DecisionCounts(*(np.atleast_1d(np.sum(c)) for c in (self.tp, self.fp, self.tn, self.fn)))


def decision_counts(targets: np.ndarray, called: np.ndarray, *, weights: np.ndarray | None = None) -> DecisionCounts:
    """Counts per output of targets ``(N, K)`` bool against the calls ``(N, K)`` bool.

    With ``weights`` ``(b, N)`` (bootstrap counts, one row per resample) each count is the
    weighted sum, ``(b, K)``: one matrix product per outcome; :func:`decision_scores` with
    ``average=None`` then gives ``(b, K)`` rates.
    """
    t, c = np.asarray(targets, dtype=bool), np.asarray(called, dtype=bool)
    pairs = ((c, t), (c, ~t), (~c, ~t), (~c, t))
    if weights is None:
        return DecisionCounts(*((a & b).sum(axis=0).astype(np.float64) for a, b in pairs))
    w = np.asarray(weights, dtype=np.float64)
    return DecisionCounts(*(w @ (a & b).astype(np.float64) for a, b in pairs))


def counts_from_confusion(cm: np.ndarray) -> DecisionCounts:
    """One-vs-rest counts per class of a confusion matrix ``(K, K)`` (rows true, columns predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    return DecisionCounts(tp, fp, cm.sum() - tp - fp - fn, fn)


def _rates(c: DecisionCounts) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = c.tp / (c.tp + c.fp)
        sensitivity = c.tp / (c.tp + c.fn)
        f1 = 2 * precision * sensitivity / (precision + sensitivity)
        return {"sensitivity": sensitivity, "specificity": c.tn / (c.tn + c.fp), "precision": precision,
                "f1": np.where((precision + sensitivity) == 0, 0.0, f1),
                "accuracy": (c.tp + c.tn) / (c.tp + c.fp + c.tn + c.fn)}


@overload
def decision_scores(counts: DecisionCounts, *, average: None = None) -> dict[str, np.ndarray]: ...


@overload
def decision_scores(counts: DecisionCounts, *, average: str) -> dict[str, float]: ...


def decision_scores(counts: DecisionCounts, *, average: str | None = None) -> dict[str, np.ndarray] | dict[str, float]:
    """Sensitivity (recall), specificity, precision, F1 and accuracy from counts.

    Args:
        counts: per-output counts (:func:`decision_counts`, :func:`counts_from_confusion`).
        average: None: ``(K,)`` per output, NaN where undefined (F1 is 0 where precision and
            sensitivity are both 0); ``"macro"``, ``"weighted"`` (by ``tp + fn``), ``"micro"``
            (counts pooled): one number each.

    Returns:
        ``{name: value}`` for every name of :data:`DECISION_SCORES`.
    """
    if average not in AVERAGES:
        raise param_error("average", "one of None, 'macro', 'micro', 'weighted'", average, where="decision_scores")
    if average == "micro":
        return {k: float(v[0]) for k, v in _rates(counts.pooled()).items()}
    rates = _rates(counts)
    if average == "macro":
        return {k: nan_mean(v) for k, v in rates.items()}
    if average == "weighted":
        return {k: weighted_nan_mean(v, counts.tp + counts.fn) for k, v in rates.items()}
    return dict(rates)
