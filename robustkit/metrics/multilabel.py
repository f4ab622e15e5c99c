"""Per-finding metrics of multi-label models: AUROC, AUPRC, sensitivity and specificity.

A multi-label model (CheXNet's 14 findings, CheXpert's observations) gives every finding its
own probability; findings co-occur, so accuracy over an arg-max means nothing. Each finding
is scored as its own binary problem (``targets[:, k]`` against ``probs[:, k]``), and the
means come in two forms: *macro* (the mean of the findings' values, every finding counted
once) and *micro* (every image-finding pair pooled, so common findings weigh more).

Thresholded metrics (sensitivity, specificity, the flip rate of a finding) need a decision
threshold per finding: given by the user, or chosen by Youden's J on a calibration half of
the images (:func:`threshold_split`, decided by each sample's id so that a subset or a
shard of the images puts every image on the same side) and reported on the other half.

Pure numpy; the AUROC and AUPRC come from the one ranking kernel
(:mod:`robustkit.metrics.ranking`), sensitivity and specificity from the decision kernel
(:mod:`robustkit.metrics.decisions`).

Example:
    >>> t = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    >>> p = np.array([[0.9, 0.2], [0.3, 0.8], [0.7, 0.6], [0.1, 0.4]])
    >>> finding_summary(t, p, np.array([0.5, 0.5])).sensitivity.tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from robustkit.metrics import calibration as CM
from robustkit.metrics.average import nan_mean
from robustkit.metrics.decisions import decision_counts, decision_scores
from robustkit.metrics.ranking import auprc, auroc, binary_auroc, ranking_counts

__all__ = [
    "DeLongResult",
    "delong_paired",
    "finding_summary",
    "per_finding_brier",
    "per_finding_ece",
    "sensitivity_specificity",
    "stored_thresholds",
    "threshold_split",
    "youden_thresholds",
]


def per_finding_ece(targets: np.ndarray, probs: np.ndarray, *, n_bins: int = 15) -> np.ndarray:
    """Expected calibration error per finding ``(K,)``, the binary reliability form (lower is better).

    Each finding's probability ``probs[:, k]`` is put in ``n_bins`` equal-width bins and
    compared with the finding's presence ``targets[:, k]``: ``sum_b n_b / N * |freq_b - conf_b|``
    over populated bins, with the binning of :func:`robustkit.metrics.calibration.ece_update`
    (the classwise ECE of Nixon et al. 2019 with presence as the outcome). NaN without images.
    """
    t, p = np.asarray(targets, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    out = np.full(t.shape[1], np.nan)
    if len(t) == 0:
        return out
    everyone = np.arange(len(t))[None, :]
    for k in range(t.shape[1]):
        bins, gap = CM.ece_update(p[:, k], t[:, k], n_bins=n_bins)
        out[k] = CM.ece_compute(bins, gap, everyone, n_bins=n_bins)[0]
    return out


def per_finding_brier(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Brier score per finding ``(K,)``: ``mean_i (p_ik - t_ik)^2`` in [0, 1] (lower is better;
    scikit-learn's ``brier_score_loss`` of each column). NaN without images."""
    t, p = np.asarray(targets, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if len(t) == 0:
        return np.full(t.shape[1], np.nan)
    return np.mean((p - t) ** 2, axis=0)


def sensitivity_specificity(
    targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per finding ``(K,)``: the share of images with the finding called positive
    (``prob >= threshold``) and the share without it called negative; NaN where undefined."""
    called = np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]
    r = decision_scores(decision_counts(targets, called))
    return np.asarray(r["sensitivity"]), np.asarray(r["specificity"])


def youden_thresholds(targets: np.ndarray, probs: np.ndarray, *, default: float = 0.5) -> np.ndarray:
    """Per finding, the threshold maximising Youden's J = sensitivity + specificity - 1.

    Candidates are the finding's distinct scores (a call is ``prob >= threshold``); ties
    in J go to the highest threshold (fewest positive calls), and the threshold returned
    lies halfway between that score and the next lower one, so that the calls on these
    images are the same and a new image is not decided by a hair. A finding without both
    positive and negative images gets ``default``.
    """
    t, p = np.asarray(targets, dtype=bool), np.asarray(probs, dtype=np.float64)
    out = np.full(t.shape[1], float(default))
    for k in range(t.shape[1]):
        y, s = t[:, k], p[:, k]
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        c = ranking_counts(s[None, :], y[None, :])
        last = np.flatnonzero(c.is_end[0])
        s_sorted, tps = c.scores[0], c.tps[0][last]
        fps = (last + 1) - tps
        j = tps / n_pos - fps / n_neg
        best = int(np.argmax(j))  # the first: the highest threshold with the best J
        below = s_sorted[last[best + 1]] if best + 1 < len(last) else s_sorted[last[best]]
        out[k] = float((s_sorted[last[best]] + below) / 2)  # halfway to the next lower score
    return out


def threshold_split(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """bool (N,): whether each sample is in the calibration half (where thresholds are chosen).

    Decided by a hash of the sample id alone, so any subset, shard or order of the images
    puts each image on the same side; about half the images land on each side.
    """
    return np.array([hashlib.sha256(f"threshold/{sid}".encode()).digest()[0] < 128 for sid in ids], dtype=bool)


def stored_thresholds(model: Mapping[str, Any], names: Sequence[str],
                      ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The audit's decision thresholds ``(K,)`` in output order, and which samples ``(N,)``
    thresholded metrics are read on; the one reader of the stored thresholds.

    Args:
        model: the audit's model block (``{"thresholds": {output: t}, "threshold_source": ...}``).
        names: the outputs, in order.
        ids: the sample ids the metrics are read on.

    Returns:
        The thresholds (0.5 for an output without one) and a mask: every sample when the
        thresholds were given or incomplete; the half :func:`threshold_split` did not use to
        choose them when they were chosen on the data.
    """
    given = model.get("thresholds") or {}
    thresholds = np.array([float(given.get(n, 0.5)) for n in names], dtype=np.float64)
    everyone = np.ones(len(ids), dtype=bool)
    if len(given) != len(names) or not str(model.get("threshold_source", "")).startswith("chosen"):
        return thresholds, everyone
    return thresholds, ~threshold_split(np.asarray(ids).astype(str))


@dataclass(frozen=True)
class FindingSummary:
    """Per-finding scores and their means (see :func:`finding_summary`)."""

    auroc: np.ndarray
    auprc: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    micro_auroc: float
    micro_auprc: float

    def flat(self, names: Sequence[str]) -> dict[str, float]:
        """``{"auroc.<finding>": ..., "auroc.macro": ..., "auroc.micro": ..., ...}``."""
        out: dict[str, float] = {}
        for key in ("auroc", "auprc", "sensitivity", "specificity"):
            values = getattr(self, key)
            for name, v in zip(names, values, strict=True):
                out[f"{key}.{name}"] = float(v)
            out[f"{key}.macro"] = nan_mean(values)
        out["auroc.micro"], out["auprc.micro"] = self.micro_auroc, self.micro_auprc
        return out


def finding_summary(targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> FindingSummary:
    """AUROC, AUPRC (threshold-free) and sensitivity, specificity at ``thresholds``, per finding."""
    sens, spec = sensitivity_specificity(targets, probs, thresholds)
    return FindingSummary(
        auroc=np.asarray(auroc(targets, probs)),
        auprc=np.asarray(auprc(targets, probs)),
        sensitivity=sens,
        specificity=spec,
        micro_auroc=float(auroc(targets, probs, average="micro")),
        micro_auprc=float(auprc(targets, probs, average="micro")),
    )


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of two correlated ROC AUCs on the same images.

    Attributes:
        auc_a, auc_b: The two AUCs.
        delta: ``auc_b - auc_a``.
        se: Standard error of ``delta`` (from the structural components).
        p_value: Two-sided normal p-value of ``delta = 0``; NaN when undefined.
    """

    auc_a: float
    auc_b: float
    delta: float
    se: float
    p_value: float


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per positive, the share of negatives it outranks
    (ties one half), and per negative, the share of positives that outrank it."""
    both = np.r_[pos, neg]
    rank_all = stats.rankdata(both)
    rank_pos, rank_neg = stats.rankdata(pos), stats.rankdata(neg)
    m, n = len(pos), len(neg)
    v10 = (rank_all[:m] - rank_pos) / n
    v01 = 1.0 - (rank_all[m:] - rank_neg) / m
    return v10, v01


def delong_paired(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DeLongResult:
    """DeLong, DeLong and Clarke-Pearson (1988): are two models' AUCs on the same images different?"""
    y = np.asarray(y, dtype=bool)
    a, b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        nan = float("nan")
        return DeLongResult(binary_auroc(y, a), binary_auroc(y, b), nan, nan, nan)
    va10, va01 = _placements(a[y], a[~y])
    vb10, vb01 = _placements(b[y], b[~y])
    auc_a, auc_b = binary_auroc(y, a), binary_auroc(y, b)
    s10 = np.cov(np.vstack([va10, vb10]))
    s01 = np.cov(np.vstack([va01, vb01]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    delta = auc_b - auc_a
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        p = 1.0 if delta == 0 else 0.0
    else:
        p = float(2 * stats.norm.sf(abs(delta) / se))
    return DeLongResult(auc_a, auc_b, float(delta), se, p)
