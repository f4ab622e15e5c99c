"""The one ranking kernel: ROC curve, AUROC, average precision and FPR at a TPR.

Every threshold-free score of the package comes from :func:`ranking_counts`: each row of
scores is sorted once (descending, stable), and the cumulative true and false positives are
read at the *last* row of every distinct score, so tied scores always move together (a tie
between a positive and a negative counts one half in the AUROC, as in the Mann-Whitney
statistic, and adds one step to the precision-recall curve). From those counts:

* :func:`roc_curve`: false and true positive rates at every distinct threshold;
* :func:`binary_auroc` / :func:`auroc`: the trapezoid area under that curve (equal to the
  Mann-Whitney U / (P N); scikit-learn's ``roc_auc_score``);
* :func:`average_precision` / :func:`auprc`: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct
  scores (scikit-learn's ``average_precision_score``);
* :func:`ranking_rows`: the three at once for many rows ``(B, n)`` (bootstrap resamples, OOD
  sets, the columns of a multi-label head), FPR at 95% TPR included;
* :func:`sort_scores` and :func:`weighted_ranking`: the same three for one column of scores
  under many rows of sample weights ``(b, n)`` (bootstrap counts,
  :func:`robustkit.metrics.resampling.bootstrap_weights`): the column is sorted once, each
  row of weights only gathered and summed cumulatively. With integer counts every number
  equals :func:`ranking_rows` of the resampled indices (a sample drawn twice is two tied rows);
  :func:`weighted_aurocs` is its AUROC alone (of several columns),
  cheaper where only the AUROC is read; :func:`counted_mann_whitney` the exact integers behind it
  (twice U, the positives' and negatives' weights), for statistics that add and subtract the U
  of subsets (a slice's and its rest's, :mod:`robustkit.metrics.slices`).

Per-output scores take ``average=`` as scikit-learn does: None (one value per output),
``"macro"`` (:func:`robustkit.metrics.average.nan_mean` of the defined values),
``"weighted"`` (by positives) or ``"micro"`` (every image-output pair pooled). Single-label
data is the multi-label case with one-hot targets (:func:`one_hot`).

Example:
    >>> y = np.array([1, 0, 1, 0])
    >>> binary_auroc(y, np.array([0.9, 0.5, 0.5, 0.1]))
    0.875
    >>> t = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    >>> auroc(t, np.array([[0.9, 0.2], [0.3, 0.8], [0.7, 0.6], [0.1, 0.4]]), average="macro")
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from robustkit.errors import param_error
from robustkit.metrics.average import AVERAGES, nan_mean, weighted_nan_mean

__all__ = [
    "RankingCounts",
    "auprc",
    "auroc",
    "average_precision",
    "binary_auroc",
    "counted_mann_whitney",
    "cumulative_counts",
    "one_hot",
    "ranking_counts",
    "ranking_rows",
    "roc_curve",
    "sort_scores",
    "weighted_aurocs",
    "weighted_ranking",
]


@dataclass(frozen=True)
class RankingCounts:
    """Cumulative counts of rows of scores sorted high to low (see :func:`ranking_counts`).

    Attributes:
        scores: ``(B, n)`` the sorted scores.
        tps: ``(B, n)`` positives at or above each sorted position.
        is_end: ``(B, n)`` whether the position is the last of its distinct score (a threshold).
        prev_end: ``(B, n)`` the previous threshold's position (-1 before the first).
        positives, negatives: ``(B,)`` counts per row.
    """

    scores: np.ndarray
    tps: np.ndarray
    is_end: np.ndarray
    prev_end: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray

    @property
    def fps(self) -> np.ndarray:
        """``(B, n)`` negatives at or above each sorted position."""
        return np.arange(1, self.tps.shape[1] + 1)[None, :] - self.tps

    def at_prev_end(self, values: np.ndarray) -> np.ndarray:
        """``values`` ``(B, n)`` read at each position's previous threshold (0 before the first)."""
        prev = self.prev_end
        return np.where(prev >= 0, np.take_along_axis(values, np.maximum(prev, 0), 1), 0.0)


def ranking_counts(scores: np.ndarray, positive: np.ndarray) -> RankingCounts:
    """Sort each row of ``scores`` ``(B, n)`` high to low and count the 0/1 ``positive``
    ``(B, n)``; ties end at the last row of their score. The one place ties are handled."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = np.atleast_2d(np.asarray(positive, dtype=bool))
    n = s.shape[1]
    order = np.argsort(-s, axis=1, kind="stable")
    ss, yy = np.take_along_axis(s, order, 1), np.take_along_axis(y, order, 1)
    tps = np.cumsum(yy, axis=1, dtype=np.float64)
    is_end = np.ones_like(yy)
    is_end[:, :-1] = ss[:, :-1] != ss[:, 1:]
    last = np.maximum.accumulate(np.where(is_end, np.arange(n)[None, :], -1), axis=1)
    prev = np.concatenate([np.full((len(s), 1), -1), last[:, :-1]], axis=1)
    p = y.sum(axis=1).astype(np.float64)
    return RankingCounts(ss, tps, is_end, prev, p, n - p)


def _auroc(c: RankingCounts) -> np.ndarray:
    """Trapezoid area under the ROC curve per row ``(B,)``; NaN without both classes."""
    fps = c.fps
    steps = c.is_end * (fps - c.at_prev_end(fps)) * (c.tps + c.at_prev_end(c.tps)) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        out = steps.sum(axis=1) / (c.positives * c.negatives)
    return np.where((c.positives > 0) & (c.negatives > 0), out, np.nan)


def _average_precision(c: RankingCounts) -> np.ndarray:
    """Step-wise area under the precision-recall curve per row ``(B,)``; NaN without positives."""
    precision = c.tps / np.arange(1, c.tps.shape[1] + 1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (c.is_end * (c.tps - c.at_prev_end(c.tps)) * precision).sum(axis=1) / c.positives
    return np.where(c.positives > 0, out, np.nan)


def _fpr_at_tpr(c: RankingCounts, level: float) -> np.ndarray:
    """False positive rate at the highest threshold whose TPR reaches ``level`` ``(B,)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        reach = c.is_end & (c.tps / c.positives[:, None] >= level - 1e-12)
        first = reach.argmax(axis=1)
        out = (first + 1 - c.tps[np.arange(len(first)), first]) / c.negatives
    return np.where((c.positives > 0) & (c.negatives > 0), out, np.nan)


def ranking_rows(scores: np.ndarray, positive: np.ndarray, *, tpr_level: float = 0.95) -> dict[str, np.ndarray]:
    """AUROC, average precision and FPR at ``tpr_level`` TPR of each row ``(B,)`` of
    ``scores`` ``(B, n)`` with 0/1 ``positive`` ``(B, n)``: one sort per row.

    Returns:
        ``{"auroc", "ap", "fpr95"}``, each ``(B,)``; NaN where a row lacks the class(es) the
        number needs (AP needs positives, the others both classes).
    """
    c = ranking_counts(scores, positive)
    return {"auroc": _auroc(c), "ap": _average_precision(c), "fpr95": _fpr_at_tpr(c, tpr_level)}


@dataclass(frozen=True)
class SortedScores:
    """One column of scores sorted once, for :func:`weighted_ranking`: the positives' and the
    negatives' samples high to low, and where each positive stands among them.

    Attributes:
        pos, neg: ``(P,)``, ``(Q,)`` the sample (weight index) of each positive / negative
            score, sorted high to low (stable).
        pos_end: ``(P,)`` index of the last positive tied with each positive's score.
        neg_above: ``(P,)`` negatives with a strictly higher score than each positive.
        neg_tied_above: ``(P,)`` negatives with a score at or above each positive's.
    """

    pos: np.ndarray
    neg: np.ndarray
    pos_end: np.ndarray
    neg_above: np.ndarray
    neg_tied_above: np.ndarray


def sort_scores(scores: np.ndarray, positive: np.ndarray, *, sample: np.ndarray | None = None) -> SortedScores:
    """Sort ``scores`` ``(m,)`` with their 0/1 ``positive`` ``(m,)`` once (tied scores form
    one threshold, as in :func:`ranking_counts`). ``sample`` ``(m,)``: the sample each score's
    weight comes from when several scores share one (the pooled image-output pairs of a micro
    average); by default score ``i`` is sample ``i``."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(positive, dtype=bool).reshape(-1)
    owner = np.arange(len(s)) if sample is None else np.asarray(sample).reshape(-1)
    order = np.argsort(-s, kind="stable")
    sp, sn = s[order][y[order]], s[order][~y[order]]
    neg_desc = -sn  # ascending, for searchsorted
    return SortedScores(
        pos=owner[order][y[order]], neg=owner[order][~y[order]],
        pos_end=np.searchsorted(-sp, -sp, side="right") - 1,
        neg_above=np.searchsorted(neg_desc, -sp, side="left"),
        neg_tied_above=np.searchsorted(neg_desc, -sp, side="right"),
    )


def _cumulative(w: np.ndarray) -> np.ndarray:
    """``(b, m + 1)``: column ``j`` the sum of the first ``j`` entries of each row of ``w`` ``(b, m)``."""
    cum = np.zeros((len(w), w.shape[1] + 1))
    np.cumsum(w, axis=1, out=cum[:, 1:])
    return cum


def weighted_aurocs(columns: Sequence[SortedScores], weights: np.ndarray) -> np.ndarray:
    """:func:`weighted_ranking`'s AUROC alone ``(b, len(columns))`` of several columns under the same
    weights ``(b, n)`` (NaN where a class is missing), at under half its cost where it is all that is read.

    Integer weights (bootstrap counts) are turned once into int32 with the samples along the
    first axis (each sample's ``b`` weights contiguous, so that gathering samples in score order
    moves whole rows) and summed as integers: every sum is exact, and so each AUROC equals
    :func:`weighted_ranking`'s to the bit. Other weights go through :func:`weighted_ranking` itself.

    Example:
        >>> col = sort_scores(np.array([0.9, 0.5, 0.1]), np.array([1, 0, 1]))
        >>> weighted_aurocs([col], np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 0.0]]))[:, 0].tolist()
        [0.5, 1.0]
    """
    w = np.asarray(weights, dtype=np.float64)
    counts = _small_counts(w)
    if counts is None:  # not small integers: weighted_ranking's float sums
        return np.stack([weighted_ranking(col, w)["auroc"] for col in columns], axis=1).reshape(len(w), len(columns))
    by_sample = np.ascontiguousarray(counts.T)  # (n, b)
    return np.stack([_counted_auroc(col, by_sample) for col in columns], axis=1).reshape(len(w), len(columns))


def _counted_auroc(col: SortedScores, by_sample: np.ndarray) -> np.ndarray:
    """The AUROC ``(b,)`` under int32 counts ``(n, b)`` (:func:`weighted_aurocs`)."""
    twice_u, n_pos, n_neg = counted_mann_whitney(col, by_sample)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = twice_u / (2.0 * n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auroc, np.nan)


def counted_mann_whitney(col: SortedScores, by_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twice the Mann-Whitney U, the positives' and the negatives' total weight, each ``(b,)`` int64,
    of one column under integer counts ``by_sample`` ``(n, b)`` (samples along the first axis, int32
    where every product stays below 2**31: :func:`weighted_aurocs`' check): the exact integers
    whose ratio ``2U / (2 P Q)`` is the AUROC (a tied pair counts one half, so twice U is whole).

    Example:
        >>> col = sort_scores(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 0, 1, 0]))
        >>> [v.tolist() for v in counted_mann_whitney(col, np.ones((4, 1), dtype=np.int32))]
        [[7], [2], [2]]
    """
    wp = by_sample[col.pos]
    cum = cumulative_counts(by_sample[col.neg])
    n_pos, n_neg = wp.sum(axis=0, dtype=np.int64), cum[-1].astype(np.int64)
    twice_above = cum[col.neg_tied_above]  # (P, b): negatives above each positive, ties one half, twice
    twice_above += cum[col.neg_above]
    np.multiply(wp, twice_above, out=twice_above)
    return 2 * n_pos * n_neg - twice_above.sum(axis=0, dtype=np.int64), n_pos, n_neg  # pairs less those out of order


def cumulative_counts(counts: np.ndarray) -> np.ndarray:
    """``(m + 1, b)``: row ``j`` the sum of the first ``j`` rows of integer counts ``(m, b)`` (its dtype).

    For non-negative int32 counts with an even ``b`` whose sums surely stay below 2**31
    (``m * max < 2**31``: a block of bootstrap counts) two columns are summed per int64 word: the
    low half never carries into the high half, so the words hold the same two running sums, for
    half the additions (about three times as fast as int32 ``cumsum`` along the first axis).

    Example:
        >>> cumulative_counts(np.array([[1, 2], [3, 4]], dtype=np.int32)).tolist()
        [[0, 0], [1, 2], [4, 6]]
    """
    w = np.ascontiguousarray(counts)
    cum = np.zeros((len(w) + 1, w.shape[1]), dtype=w.dtype)
    if w.dtype == np.int32 and w.shape[1] % 2 == 0 and w.size and w.min() >= 0 and int(w.max()) * len(w) < 2**31:
        np.cumsum(w.view(np.int64), axis=0, out=cum[1:].view(np.int64))
    else:
        np.cumsum(w, axis=0, out=cum[1:])
    return cum


def _small_counts(w: np.ndarray) -> np.ndarray | None:
    """``w`` ``(b, n)`` as int32 when every weight is a non-negative integer small enough that a
    weight times twice a row's total stays below 2**31 (bootstrap counts); None otherwise."""
    if not w.size or w.min() < 0 or w.max() * 2.0 * w.sum(axis=1).max() >= 2**31:
        return None
    counts = w.astype(np.int32)
    return counts if np.array_equal(counts, w) else None


def weighted_ranking(sorted_scores: SortedScores, weights: np.ndarray, *,
                     tpr_level: float = 0.95) -> dict[str, np.ndarray]:
    """AUROC, average precision and FPR at ``tpr_level`` TPR under each row of sample weights.

    The counts' form of :func:`ranking_rows`' curve: at each positive's threshold (the last
    row of its score), the weight of positives at or above it ``tp`` and of negatives at or
    above it ``fp``; AUROC is the weighted Mann-Whitney statistic (a tied negative counts one
    half), average precision ``sum w_pos * tp / (tp + fp) / P``, FPR the ``fp / Q`` of the
    first threshold whose ``tp / P`` reaches the level.

    Args:
        sorted_scores: the column (:func:`sort_scores`).
        weights: ``(b, n)`` non-negative weights per sample (bootstrap counts), in the
            samples' order.
        tpr_level: the TPR of ``fpr95``.

    Returns:
        ``{"auroc", "ap", "fpr95"}``, each ``(b,)``, equal to :func:`ranking_rows` of the rows
        the weights count (a weight of 2: the sample twice); NaN where a class is missing.
        Cost: two gathers and two cumulative sums per row over the column.

    Example:
        >>> col = sort_scores(np.array([0.9, 0.5, 0.1]), np.array([1, 0, 1]))
        >>> weighted_ranking(col, np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 0.0]]))["auroc"].tolist()
        [0.5, 1.0]
    """
    col = sorted_scores
    w = np.asarray(weights, dtype=np.float64)
    wp = w[:, col.pos]
    cum_pos, cum_neg = _cumulative(wp), _cumulative(w[:, col.neg])
    n_pos, n_neg = cum_pos[:, -1], cum_neg[:, -1]
    tp = cum_pos[:, col.pos_end + 1]  # (b, P) positives at or above each positive's threshold
    fp, above = cum_neg[:, col.neg_tied_above], cum_neg[:, col.neg_above]  # negatives at or above it, strictly above
    with np.errstate(divide="ignore", invalid="ignore"):
        below = n_neg[:, None] - (fp + above) / 2  # negatives below, ties one half
        auroc = np.einsum("bp,bp->b", wp, below) / (n_pos * n_neg)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = np.einsum("bp,bp->b", wp, precision) / n_pos
        reach = tp / n_pos[:, None] >= tpr_level - 1e-12
        first = reach.argmax(axis=1) if col.pos.size else np.zeros(len(w), dtype=np.int64)
        fpr = (fp[np.arange(len(w)), first] if col.pos.size else np.zeros(len(w))) / n_neg
    both = (n_pos > 0) & (n_neg > 0)
    return {"auroc": np.where(both, auroc, np.nan), "ap": np.where(n_pos > 0, ap, np.nan),
            "fpr95": np.where(both, fpr, np.nan)}


def roc_curve(y_bin: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates ``(T + 1,)`` of a binary problem at every distinct score,
    from (0, 0); NaN rates for a class that is absent."""
    c = ranking_counts(np.asarray(score).reshape(1, -1), np.asarray(y_bin).reshape(1, -1))
    ends = c.is_end[0]
    tps, fps = c.tps[0][ends], c.fps[0][ends]
    pos, neg = c.positives[0], c.negatives[0]
    tpr = np.r_[0.0, tps / pos] if pos > 0 else np.full(len(tps) + 1, np.nan)
    fpr = np.r_[0.0, fps / neg] if neg > 0 else np.full(len(fps) + 1, np.nan)
    return fpr, tpr


def binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of one binary problem (ties count one half); NaN without both classes."""
    return float(_auroc(ranking_counts(np.asarray(score).reshape(1, -1), np.asarray(y).reshape(1, -1)))[0])


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum, ``sum_n (R_n - R_{n-1}) P_n`` over
    the distinct scores (scikit-learn's ``average_precision_score``); NaN without positives."""
    c = ranking_counts(np.asarray(score).reshape(1, -1), np.asarray(y).reshape(1, -1))
    return float(_average_precision(c)[0])


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Targets ``(N, K)`` bool of class indices ``(N,)``: single-label as multi-label."""
    return np.asarray(labels, dtype=np.int64).reshape(-1, 1) == np.arange(num_classes)[None, :]


def _per_output(kind: str, targets: np.ndarray, scores: np.ndarray, average: str | None) -> float | np.ndarray:
    if average not in AVERAGES:
        raise param_error("average", "one of None, 'macro', 'micro', 'weighted'", average, where=kind)
    t, s = np.asarray(targets, dtype=bool), np.asarray(scores, dtype=np.float64)
    if average is not None and s.ndim != 2:
        raise param_error("scores", f"shape (N, K) with average={average!r}", s.shape, where=kind)
    if average == "micro":
        c = ranking_counts(s.reshape(1, -1), t.reshape(1, -1))
    else:  # one row per output (and per leading condition of an (N, ..., K) array)
        rows = np.moveaxis(s, 0, -1)
        c = ranking_counts(rows.reshape(-1, len(s)), np.broadcast_to(t.T, rows.shape).reshape(-1, len(s)))
    values = _auroc(c) if kind == "auroc" else _average_precision(c)
    if average == "micro":
        return float(values[0])
    values = values.reshape(s.shape[1:])
    if average == "macro":
        return nan_mean(values)
    if average == "weighted":
        return weighted_nan_mean(values, t.sum(axis=0))
    return values


@overload
def auroc(targets: np.ndarray, scores: np.ndarray, *, average: None = None) -> np.ndarray: ...


@overload
def auroc(targets: np.ndarray, scores: np.ndarray, *, average: str) -> float: ...


def auroc(targets: np.ndarray, scores: np.ndarray, *, average: str | None = None) -> float | np.ndarray:
    """ROC AUC per output of targets ``(N, K)`` bool and scores ``(N, K)``.

    Args:
        targets: ``(N, K)`` presence of each output (:func:`one_hot` of single-label classes).
        scores: ``(N, K)`` the model's probabilities (or any score, higher = more present);
            with ``average=None`` also ``(N, ..., K)``, e.g. ``(N, C, K)`` under ``C``
            conditions, each scored against the same targets.
        average: None: ``scores.shape[1:]`` (NaN for an output every or no image has);
            ``"macro"``, ``"weighted"``, ``"micro"``: one number.
    """
    return _per_output("auroc", targets, scores, average)


@overload
def auprc(targets: np.ndarray, scores: np.ndarray, *, average: None = None) -> np.ndarray: ...


@overload
def auprc(targets: np.ndarray, scores: np.ndarray, *, average: str) -> float: ...


def auprc(targets: np.ndarray, scores: np.ndarray, *, average: str | None = None) -> float | np.ndarray:
    """Average precision per output (NaN for an output no image has); ``average`` as :func:`auroc`."""
    return _per_output("ap", targets, scores, average)
