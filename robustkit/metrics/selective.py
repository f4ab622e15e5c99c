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

import numpy as np

__all__ = [
    "aurc",
    "coverage_at_risk",
    "e_aurc",
    "optimal_aurc",
    "referral",
    "risk_coverage",
    "selective_sensitivity",
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
