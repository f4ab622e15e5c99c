"""Selective prediction: refer the least confident cases and measure the rest.

A classifier that may abstain keeps the cases it is most confident about and refers the
rest (to a radiologist, say). The risk-coverage curve (Geifman & El-Yaniv 2017) gives the
error among the kept cases (risk) for every share kept (coverage); AURC and E-AURC
(Geifman, Uziel & El-Yaniv 2019) summarise it. Only exclusive tasks have one confidence and
one correct/wrong outcome per case, so only they are scored here. Directions: AURC and
E-AURC are lower-is-better; coverage and sensitivity higher-is-better. No TensorFlow here.

Example:
    >>> import numpy as np
    >>> conf = np.array([0.9, 0.8, 0.7, 0.6]); correct = np.array([1, 1, 0, 1])
    >>> coverage_at_risk(conf, correct, 0.0)
    (0.5, 0.8)
    >>> round(aurc(conf, correct), 4)
    0.1458
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "aurc",
    "aurc_counts",
    "coverage_at_risk",
    "coverage_at_risk_counts",
    "e_aurc",
    "optimal_aurc",
    "optimal_aurc_counts",
    "referral",
    "risk_coverage",
    "selective_sensitivity",
    "selective_sensitivity_counts",
    "sort_counts",
    "SortedCounts",
]



def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve (Geifman & El-Yaniv 2017): keep the k most confident samples.

    Samples are sorted by decreasing confidence (stable: ties keep their order); for
    ``k = 1..N`` the coverage is ``k / N`` and the risk the error rate of the k kept.

    Returns:
        ``(coverage, risk)``, each ``(N,)``.
    """
    conf = np.asarray(conf, dtype=np.float64)
    wrong = 1.0 - np.asarray(correct, dtype=np.float64)
    order = np.argsort(-conf, kind="mergesort")
    k = np.arange(1, len(conf) + 1, dtype=np.float64)
    return k / max(len(conf), 1), np.cumsum(wrong[order]) / k


def aurc(conf: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean of the risks at k = 1..N (lower is better).

    Geifman, Uziel & El-Yaniv 2019, "Bias-reduced uncertainty estimation for deep neural
    classifiers" (ICLR).
    """
    if len(np.asarray(conf)) == 0:
        return float("nan")
    return float(np.mean(risk_coverage(conf, correct)[1]))


def optimal_aurc(correct: np.ndarray) -> float:
    """AURC of an oracle confidence that ranks every correct sample above every error.

    The exact finite-sample value (the mean over k of ``max(0, k - n_correct) / k``), which
    tends to Geifman et al.'s ``r + (1 - r) log(1 - r)`` for an error rate r.
    """
    c = np.asarray(correct, dtype=np.float64)
    if len(c) == 0:
        return float("nan")
    return aurc(c, c)


def e_aurc(conf: np.ndarray, correct: np.ndarray) -> float:
    """Excess AURC: ``AURC - optimal AURC`` (lower is better, 0 for a perfect ranking).

    Geifman, Uziel & El-Yaniv 2019; it removes the part of AURC due to the error rate alone.
    """
    return aurc(conf, correct) - optimal_aurc(correct)


def coverage_at_risk(conf: np.ndarray, correct: np.ndarray, target: float) -> tuple[float, float]:
    """The largest coverage whose risk is at most ``target`` (higher is better).

    Only thresholds a deployment can apply are considered: keep every sample whose
    confidence is at least ``t``, for ``t`` a confidence value seen (so tied samples are
    kept or referred together). Geifman & El-Yaniv 2017, "Selective classification for
    deep neural networks".

    Returns:
        ``(coverage, threshold)``; ``(0.0, inf)`` when no threshold meets the target.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if len(conf) == 0:
        return float("nan"), float("nan")
    order = np.argsort(-conf, kind="mergesort")
    s = conf[order]
    wrong = np.cumsum(1.0 - np.asarray(correct, dtype=np.float64)[order])
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last position of each tie group
    k = ends + 1.0
    ok = wrong[ends] / k <= target + 1e-12
    if not np.any(ok):
        return 0.0, float("inf")
    best = ends[ok][-1]
    return float((best + 1) / len(conf)), float(s[best])


def selective_sensitivity(conf: np.ndarray, labels: np.ndarray, pred: np.ndarray,
                          positive: int, threshold: float) -> float:
    """Sensitivity (recall) of class ``positive`` among the kept cases ``conf >= threshold``.

    Higher is better; NaN when no case of the class is kept.
    """
    keep = np.asarray(conf, dtype=np.float64) >= threshold
    pos = keep & (np.asarray(labels) == positive)
    if not np.any(pos):
        return float("nan")
    return float(np.mean(np.asarray(pred)[pos] == positive))


# ---------------------------------------------------------------- under resampling counts
#
# A bootstrap resample given as counts ``(b, N)`` (``w_i`` copies of sample i;
# :func:`robustkit.metrics.resampling.bootstrap_weights`) sorted by decreasing confidence is
# the samples in the order ``order = np.argsort(-conf, kind="mergesort")`` (sorted once by the
# caller, :func:`sort_counts`), each repeated ``w_i`` times: the cumulative sums of the counts
# give the positions, so the risk-coverage curve of every resample comes from cumulative sums,
# without sorting the resample. Each function equals its index version on the drawn rows up to float rounding, up
# to the order of distinct samples with exactly tied confidences (here by sample position, in
# the drawn rows by draw position; AURC is the only one that reads that order).


def _harmonic(n: int) -> np.ndarray:
    """``H[k] = sum_{j <= k} 1 / j`` for ``k = 0..n``."""
    return np.r_[0.0, np.cumsum(1.0 / np.arange(1, n + 1))]


@dataclass(frozen=True)
class SortedCounts:
    """Resamples ``(b, N)`` read in the order of decreasing confidence (:func:`sort_counts`).

    Attributes:
        order: ``(N,)`` the samples by decreasing confidence (stable).
        counts: ``(b, N)`` each resample's counts in that order.
        wrong: ``(N,)`` 1 for an error, in that order.
        kept: ``(b, N)`` integer copies of the first j + 1 sorted samples (the coverage count).
        errors: ``(b, N)`` integer errors among them.
    """

    order: np.ndarray
    counts: np.ndarray
    wrong: np.ndarray
    kept: np.ndarray
    errors: np.ndarray


def sort_counts(order: np.ndarray, correct: np.ndarray, weights: np.ndarray) -> SortedCounts:
    """Read every resample of ``weights`` ``(b, N)`` (integer counts) in ``order`` (the samples by
    decreasing confidence, ``np.argsort(-conf, kind="mergesort")``, sorted once by the caller):
    integer cumulative sums, exact, shared by :func:`aurc_counts` and :func:`coverage_at_risk_counts`."""
    w = np.asarray(weights)[:, order]
    if not np.issubdtype(w.dtype, np.integer):
        w = w.astype(np.int64)
    wrong = (~np.asarray(correct, dtype=bool)[order]).astype(np.int64)
    dtype = np.int32 if w.shape[1] and int(w.sum(axis=1).max()) < 2**31 else np.int64  # exact either way
    return SortedCounts(order, w, wrong, np.cumsum(w, axis=1, dtype=dtype),
                        np.cumsum(w * wrong.astype(w.dtype), axis=1, dtype=dtype))


def aurc_counts(ranked: SortedCounts) -> np.ndarray:
    """:func:`aurc` of each resample ``(b,)``.

    Sample j's copies take positions ``C_{j-1} + 1 .. C_j`` of the sorted resample, where the
    errors grow by ``e_j`` per copy, so ``sum_k risk_k = sum_j (E_j - e_j C_j) (H_{C_j} -
    H_{C_{j-1}}) + e_j w_j`` (``C``: copies kept, ``E``: errors among them, ``H``: harmonic numbers).
    """
    kept, errors, e = ranked.kept, ranked.errors, ranked.wrong
    n = kept[:, -1]
    h = _harmonic(int(n.max()) if n.size else 0)
    step = h[kept] - h[kept - ranked.counts]
    total = ((errors - e * kept) * step).sum(axis=1) + errors[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan)


def optimal_aurc_counts(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`optimal_aurc` of each resample ``(b,)``: with ``m`` correct of ``n``, the risk is
    ``(k - m) / k`` for ``k > m``, so the AURC is ``((n - m) - m (H_n - H_m)) / n``."""
    w = np.asarray(weights, dtype=np.float64)
    n, m = w.sum(axis=1), w @ np.asarray(correct, dtype=np.float64)
    h = _harmonic(int(n.max()))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, ((n - m) - m * (h[n.astype(np.int64)] - h[m.astype(np.int64)])) / n, np.nan)


def coverage_at_risk_counts(ranked: SortedCounts, conf: np.ndarray,
                            targets: list[float] | tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`coverage_at_risk` of each resample for every target: ``(coverage, threshold)``,
    each ``(len(targets), b)`` (``conf``: ``(N,)`` in the samples' own order).

    The thresholds are the confidences present in the resample: the last position of each group
    of tied confidences of the full sample, where that group has copies. Exact, ties included.
    """
    s = np.asarray(conf, dtype=np.float64)[ranked.order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    if len(ends) == len(s):  # no tied confidences: every sample is its own group
        kept, wrong, present = ranked.kept, ranked.errors, ranked.counts > 0
    else:
        kept, wrong = ranked.kept[:, ends], ranked.errors[:, ends]
        present = np.diff(kept, axis=1, prepend=0) > 0
    n, rows = kept[:, -1], np.arange(len(kept))
    with np.errstate(invalid="ignore", divide="ignore"):
        risk = wrong / kept
    coverage, threshold = np.zeros((len(targets), len(kept))), np.full((len(targets), len(kept)), np.inf)
    for t, target in enumerate(targets):
        ok = present & (risk <= target + 1e-12)
        best = len(ends) - 1 - np.argmax(ok[:, ::-1], axis=1)
        found = ok.any(axis=1)
        coverage[t] = np.where(found, kept[rows, best] / n, 0.0)
        threshold[t] = np.where(found, s[ends[best]], np.inf)
    return coverage, threshold


def selective_sensitivity_counts(conf: np.ndarray, labels: np.ndarray, pred: np.ndarray, positive: int,
                                 threshold: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`selective_sensitivity` of each resample ``(b,)`` at its own ``threshold`` ``(b,)``."""
    w = np.asarray(weights, dtype=np.float64)
    pos = w * (np.asarray(labels) == positive)[None, :] * (np.asarray(conf)[None, :] >= np.asarray(threshold)[:, None])
    n = pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, pos @ (np.asarray(pred) == positive).astype(np.float64) / n, np.nan)


def referral(conf: np.ndarray, labels: np.ndarray, pred: np.ndarray, positive: int | None,
             fraction: float) -> dict[str, float]:
    """Refer the least confident ``fraction`` of cases; error and sensitivity of the rest.

    The ``round(fraction * N)`` least confident cases (stable order on ties) are referred.

    Returns:
        ``n_referred``, ``n_kept``, ``error`` (among kept), ``sensitivity`` (of ``positive``
        among kept; NaN when ``positive`` is None) and ``threshold`` (the lowest kept confidence).
    """
    conf = np.asarray(conf, dtype=np.float64)
    labels, pred = np.asarray(labels), np.asarray(pred)
    n_ref = int(np.floor(fraction * len(conf) + 0.5))
    kept = np.argsort(-conf, kind="mergesort")[: len(conf) - n_ref]
    pos = kept[labels[kept] == positive] if positive is not None else kept[:0]
    return {
        "n_referred": float(n_ref),
        "n_kept": float(len(kept)),
        "error": float(np.mean(pred[kept] != labels[kept])) if len(kept) else float("nan"),
        "sensitivity": float(np.mean(pred[pos] == positive)) if len(pos) else float("nan"),
        "threshold": float(conf[kept].min()) if len(kept) else float("nan"),
    }
