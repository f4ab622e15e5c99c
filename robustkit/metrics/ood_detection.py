"""OOD detection metrics and their bootstrap intervals (ID is the positive class).

:func:`ood_metrics` gives AUROC, AUPR-in, AUPR-out, FPR at 95% TPR (ID positive) and
OpenOOD's FPR@95 (OOD positive) of one score on an ID set and an OOD set;
:func:`threshold_at_tpr` the score that keeps a share of the ID images. Intervals:
:func:`ood_intervals` for one score and set (its own resampling) and
:func:`detection_intervals` for every score and set over one shared resampling of counts
(the OOD study's; the two agree within Monte Carlo error, and each equals :func:`ood_metrics`
of the resampled indices on the same counts). The scores themselves are in
:mod:`robustkit.metrics.ood`, which re-exports these names.

Example:
    >>> import numpy as np
    >>> ood_metrics(np.array([3.0, 2.0, 1.5]), np.array([0.1, 0.2]))["auroc"]
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robustkit.metrics.ranking import ranking_rows, sort_scores, weighted_ranking
from robustkit.metrics.resampling import (
    bootstrap_weights,
    percentile_interval,
    weighted_bootstrap_interval,
)

__all__ = ["DETECTION_METRICS", "detection_intervals", "ood_intervals", "ood_metrics", "threshold_at_tpr"]

#: metric name -> (meaning, direction)
DETECTION_METRICS: dict[str, tuple[str, str]] = {
    "auroc": ("ROC AUC of telling ID (positive) from the OOD set by the score", "higher"),
    "aupr_in": ("average precision with ID as the positive class", "higher"),
    "aupr_out": ("average precision with the OOD set as the positive class (score negated)", "higher"),
    "fpr95": ("share of the OOD set accepted at the threshold that keeps 95% of ID images", "lower"),
    "fpr95_openood": ("share of ID images rejected when 95% of the OOD set is rejected (OpenOOD's FPR@95)",
                      "lower"),
}


# -- detection metrics -----------------------------------------------------------------------
def _labelled(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.r_[np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)]
    y = np.r_[np.ones(len(id_scores), dtype=bool), np.zeros(len(ood_scores), dtype=bool)]
    return y, s


def threshold_at_tpr(id_scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """The largest threshold that keeps at least ``tpr_level`` of the ID scores (``score >= t``)."""
    s = np.sort(np.asarray(id_scores, dtype=np.float64))[::-1]
    if not len(s):
        return float("nan")
    return float(s[max(0, math.ceil(tpr_level * len(s) - 1e-9) - 1)])


def _batch_metrics(scores: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, average precision and FPR at 95% TPR of each row ``(B,)`` of ``scores`` ``(B, n)``
    (:func:`robustkit.metrics.ranking.ranking_rows`); NaN for a row without both ID and OOD."""
    out = ranking_rows(scores, positive)
    p = np.asarray(positive, dtype=bool).sum(axis=1)
    bad = np.where((p == 0) | (p == np.shape(positive)[1]), np.nan, 0.0)
    return {k: v + bad for k, v in out.items()}


def _all_metrics(scores: np.ndarray, is_id: np.ndarray) -> dict[str, np.ndarray]:
    inn = _batch_metrics(scores, is_id)
    out = _batch_metrics(-scores, ~is_id)
    return {"auroc": inn["auroc"], "aupr_in": inn["ap"], "aupr_out": out["ap"], "fpr95": inn["fpr95"],
            "fpr95_openood": out["fpr95"]}


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out, FPR@95 (ID positive) and OpenOOD's FPR@95 (OOD positive).

    Args:
        id_scores: ``(N_id,)`` scores of in-distribution images (higher = more ID).
        ood_scores: ``(N_ood,)`` scores of one OOD set.
    """
    y, s = _labelled(id_scores, ood_scores)
    return {k: float(v[0]) for k, v in _all_metrics(s[None, :], y[None, :]).items()}


def ood_intervals(id_scores: np.ndarray, ood_scores: np.ndarray, *, n_boot: int, seed: int,
                  level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of :func:`ood_metrics`, resampling ID and OOD separately
    (:func:`~robustkit.metrics.resampling.bootstrap_weights` with the two as strata: resampled
    counts in blocks, each score column sorted once); NaN where a metric is undefined in more
    than half of the resamples."""
    y, s = _labelled(id_scores, ood_scores)
    inn, out = sort_scores(s, y), sort_scores(-s, ~y)

    def stat(w: np.ndarray) -> np.ndarray:
        a, b = weighted_ranking(inn, w), weighted_ranking(out, w)
        values = {"auroc": a["auroc"], "aupr_in": a["ap"], "aupr_out": b["ap"], "fpr95": a["fpr95"],
                  "fpr95_openood": b["fpr95"]}
        return np.stack([values[k] for k in DETECTION_METRICS], axis=1)

    lo, hi = weighted_bootstrap_interval(stat, len(s), n_boot=n_boot, seed=seed, level=level, strata=y)
    return {k: [float(a), float(b)] for k, a, b in zip(DETECTION_METRICS, lo, hi)}


# -- detection intervals of every score and set over one shared resampling --------------------
@dataclass(frozen=True)
class _IdColumn:
    """One score's ID values sorted high to low (stable), for :func:`detection_intervals`.

    Attributes:
        order: ``(P,)`` the ID sample at each sorted position.
        desc: ``(P,)`` the sorted scores negated (ascending, for ``searchsorted``).
        end: ``(P,)`` the last position tied with each position's score (its threshold).
    """

    order: np.ndarray
    desc: np.ndarray
    end: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray) -> _IdColumn:
        s = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-s, kind="stable")
        desc = -s[order]
        return cls(order, desc, np.searchsorted(desc, desc, side="right") - 1)


@dataclass(frozen=True)
class _OodColumn:
    """One OOD set's values of a score, sorted high to low and placed among the ID values.

    Attributes:
        order: ``(Q,)`` the OOD sample at each sorted position.
        id_above, id_at_or_above: ``(Q,)`` ID samples with a higher score than each sorted
            OOD score (strictly; or tied).
        ood_above: ``(Q,)`` OOD samples with a strictly higher score than each.
        ood_at_or_above: ``(P,)`` OOD samples at or above each sorted ID position's score.
    """

    order: np.ndarray
    id_above: np.ndarray
    id_at_or_above: np.ndarray
    ood_above: np.ndarray
    ood_at_or_above: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, ids: _IdColumn) -> _OodColumn:
        s = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-s, kind="stable")
        desc = -s[order]
        return cls(order, np.searchsorted(ids.desc, desc, side="left"), np.searchsorted(ids.desc, desc, side="right"),
                   np.searchsorted(desc, desc, side="left"), np.searchsorted(desc, ids.desc, side="right"))


@dataclass(frozen=True)
class _IdBlock:
    """One score's ID side under a block of ID counts ``(b, P)``, shared by every OOD set.

    Attributes:
        weights: ``(b, P)`` the counts in sorted order.
        cum: ``(b, P + 1)`` their cumulative sums (column ``j``: the first ``j`` positions).
        tp: ``(b, P)`` the ID weight at or above each position's threshold.
        first: ``(b,)`` the first position whose TPR reaches the level (FPR@95's threshold).
    """

    weights: np.ndarray
    cum: np.ndarray
    tp: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, col: _IdColumn, w_id: np.ndarray, tpr_level: float) -> _IdBlock:
        weights = w_id[:, col.order]
        cum = np.zeros((len(weights), weights.shape[1] + 1))
        np.cumsum(weights, axis=1, out=cum[:, 1:])
        tp = cum[:, col.end + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            first = (tp / cum[:, -1:] >= tpr_level - 1e-12).argmax(axis=1)
        return cls(weights, cum, tp, first)


def _weighted_detection(ids: _IdBlock, ood: _OodColumn, w_ood: np.ndarray, tpr_level: float) -> np.ndarray:
    """:data:`DETECTION_METRICS` ``(b, 5)`` of one score and set under ID counts (``ids``) and
    OOD counts ``(b, Q)``: the weighted form of :func:`ood_metrics` (a count of 2: the sample
    twice; the same curves as :func:`~robustkit.metrics.ranking.weighted_ranking`), equal to it
    on the resampled indices to float rounding. Cost: ``O(b P)`` for AUPR-in, ``O(b Q)`` else."""
    cum, n_id, rows = ids.cum, ids.cum[:, -1], np.arange(len(w_ood))
    wo = w_ood[:, ood.order]
    cum_o = np.zeros((len(wo), wo.shape[1] + 1))
    np.cumsum(wo, axis=1, out=cum_o[:, 1:])
    n_ood = cum_o[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        # ID positive. AUROC from the OOD side: the ID weight above each OOD score, ties one half
        auroc = np.einsum("bq,bq->b", wo, cum[:, ood.id_above] + cum[:, ood.id_at_or_above]) / (2 * n_id * n_ood)
        ratio = cum_o[:, ood.ood_at_or_above]  # (b, P) false positives at each ID threshold
        fpr95 = ratio[rows, ids.first] / n_ood
        ratio += ids.tp
        np.divide(ids.tp, np.maximum(ratio, np.finfo(np.float64).tiny, out=ratio), out=ratio)  # precision
        aupr_in = np.einsum("bp,bp->b", ids.weights, ratio) / n_id
        # OOD positive (the score negated): at each OOD score, the OOD and ID weight at or below it
        tp_o = n_ood[:, None] - cum_o[:, ood.ood_above]
        fp_o = n_id[:, None] - cum[:, ood.id_above]
        aupr_out = np.einsum("bq,bq->b", wo, tp_o / np.maximum(tp_o + fp_o, np.finfo(np.float64).tiny)) / n_ood
        first_o = (tp_o[:, ::-1] / n_ood[:, None] >= tpr_level - 1e-12).argmax(axis=1)  # from the lowest score up
        fpr95_openood = fp_o[:, ::-1][rows, first_o] / n_id
    both = (n_id > 0) & (n_ood > 0)
    values = np.stack([auroc, aupr_in, aupr_out, fpr95, fpr95_openood], axis=1)
    return np.where(both[:, None], values, np.nan)


def detection_intervals(id_scores: dict[str, np.ndarray], ood_scores: dict[str, dict[str, np.ndarray]], *,
                        n_boot: int, id_seed: int, set_seeds: dict[str, int], level: float = 0.95,
                        tpr_level: float = 0.95) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Percentile bootstrap intervals of :func:`ood_metrics` for every score and OOD set over one
    shared resampling, vectorised over the resamples of a block.

    The ID images are resampled once for every score and set (counts from
    :func:`~robustkit.metrics.resampling.bootstrap_weights` seeded ``id_seed``), each OOD set
    once for all its scores (seeded ``set_seeds[set]``); each score's ID values are sorted
    once and their cumulative counts shared by the sets. ID and OOD are resampled apart, as in
    :func:`ood_intervals`, whose stratified draws (one stream for both groups, one resampling
    per score and set) are other draws of the same bootstrap: the intervals agree within
    Monte Carlo error. On the same counts, every resampled value equals :func:`ood_metrics` of
    the resampled indices to float rounding (tests/test_ood_metrics.py checks both).

    Args:
        id_scores: score name -> ID scores ``(P,)``, higher = more ID (every score the same ``P``).
        ood_scores: set name -> score name -> the set's scores ``(Q,)``; a score without ID
            scores, and an empty set, are left out.
        n_boot, level: resamples and coverage; ``tpr_level``: the TPR of ``fpr95``.
        id_seed, set_seeds: the seeds of the ID resampling and of each set's.

    Returns:
        ``(score, set)`` -> metric -> ``[low, high]``; NaN where undefined in more than half of
        the resamples. Memory: a few ``(64, P)`` arrays (:data:`~robustkit.metrics.resampling.BOOTSTRAP_BLOCK`).
    """
    pairs = [(sc, s) for s, by_score in ood_scores.items() for sc, v in by_score.items()
             if sc in id_scores and len(v) and len(id_scores[sc])]
    if not pairs:
        return {}
    id_cols = {sc: _IdColumn.of(id_scores[sc]) for sc, _ in pairs}
    ood_cols = {(sc, s): _OodColumn.of(ood_scores[s][sc], id_cols[sc]) for sc, s in pairs}
    streams = {s: bootstrap_weights(len(ood_scores[s][sc]), n_boot, seed=set_seeds[s]) for sc, s in pairs}
    values: dict[tuple[str, str], list[np.ndarray]] = {p: [] for p in pairs}
    for w_id in bootstrap_weights(len(id_scores[pairs[0][0]]), n_boot, seed=id_seed):
        w_sets = {s: next(stream) for s, stream in streams.items()}
        for sc, col in id_cols.items():
            ids = _IdBlock.of(col, w_id, tpr_level)
            for s in (s for sc2, s in pairs if sc2 == sc):
                values[(sc, s)].append(_weighted_detection(ids, ood_cols[(sc, s)], w_sets[s], tpr_level))
    out = {}
    for p, blocks in values.items():
        lo, hi = percentile_interval(np.concatenate(blocks), level=level)
        out[p] = {k: [float(a), float(b)] for k, a, b in zip(DETECTION_METRICS, lo, hi)}
    return out
