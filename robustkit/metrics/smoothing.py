"""Randomized smoothing: CERTIFY and PREDICT from Monte Carlo counts (pure numpy/scipy).

Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
ICML 2019. The smoothed classifier is ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, s^2 I)``.

* :func:`certify` is the paper's CERTIFY from the counts of its two samples: the class
  ``cA`` with most of the ``n0`` selection draws, its count ``nA`` among the ``n`` estimation
  draws, the one-sided Clopper-Pearson lower bound ``pA_lower`` at level ``1 - alpha``, and
  the L2 radius ``s * Phi^-1(pA_lower)``, or an abstention when ``pA_lower < 1/2``.
* :func:`predict` is PREDICT: the top class when a two-sided binomial test of the two largest
  counts rejects equality at ``alpha``, an abstention otherwise.

Both take counts over their last axis, so an ``(N, K)`` array certifies ``N`` multi-class
decisions and an ``(N, K, 2)`` array ``N * K`` binary ones (each finding of a multi-label
model: absent, present). Abstention is the class ``-1`` with radius ``0``.

Example:
    >>> cert = certify(np.array([[0, 10]]), np.array([[3, 97]]), sigma=0.5, alpha=0.001)
    >>> int(cert.label[0]), round(float(cert.radius[0]), 3)
    (1, 0.577)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest, norm

__all__ = ["ABSTAIN", "Certificate", "certified_radius", "certified_rate", "certify", "clopper_pearson_lower", "predict",
           "radius_ceiling"]

#: the class index of an abstention
ABSTAIN = -1


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for each decision (arrays of the counts' leading shape).

    Attributes:
        label: the certified class, or :data:`ABSTAIN`.
        radius: the certified L2 radius (0 where it abstains).
        p_lower: the one-sided Clopper-Pearson lower bound of ``pA``.
        count: ``nA``, the selected class's count among the estimation draws.
    """

    label: np.ndarray
    radius: np.ndarray
    p_lower: np.ndarray
    count: np.ndarray


def clopper_pearson_lower(successes: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` lower confidence bound of a binomial proportion.

    ``Beta(alpha; k, n - k + 1)``, the lower end of statsmodels'
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")`` that the reference code uses;
    0 when ``k = 0``.
    """
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.where(k > 0, bound, 0.0)


def certify(counts0: np.ndarray, counts: np.ndarray, *, sigma: float, alpha: float) -> Certificate:
    """CERTIFY from the selection counts ``(..., K)`` and the estimation counts ``(..., K)``.

    Ties in the selection go to the lowest index (as ``argmax``). ``n`` is the estimation
    counts' row sum, the same for every decision.
    """
    counts0, counts = np.asarray(counts0), np.asarray(counts)
    n = int(counts.sum(axis=-1).reshape(-1)[0]) if counts.size else 0
    top = counts0.argmax(axis=-1)
    n_a = np.take_along_axis(counts, top[..., None], axis=-1)[..., 0]
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    certified = p_lower >= 0.5
    radius = np.where(certified, certified_radius(p_lower, sigma), 0.0)
    return Certificate(label=np.where(certified, top, ABSTAIN), radius=radius, p_lower=p_lower,
                       count=n_a.astype(np.int64))


def certified_radius(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """The L2 radius ``sigma * Phi^-1(pA_lower)`` that a lower bound ``pA_lower >= 1/2`` certifies
    (Cohen et al. 2019, Theorem 1; 0 at 1/2)."""
    return np.asarray(sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)))


def predict(counts: np.ndarray, *, alpha: float) -> np.ndarray:
    """PREDICT: the top class of ``counts`` ``(..., K)``, or :data:`ABSTAIN` when the two-sided
    binomial test of the two largest counts (``scipy.stats.binomtest``, p = 1/2) gives
    ``p > alpha``. Ties in the top count go to the lowest index."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, axis=-1, kind="stable")
    n_a = np.take_along_axis(counts, order[..., :1], axis=-1)[..., 0]
    n_b = np.take_along_axis(counts, order[..., 1:2], axis=-1)[..., 0]
    p = _binom_pvalues(n_a.reshape(-1), (n_a + n_b).reshape(-1)).reshape(n_a.shape)
    return np.where(p <= alpha, order[..., 0], ABSTAIN)


def _binom_pvalues(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided exact binomial p-values at 1/2, computed once per distinct ``(k, n)``."""
    pairs, inverse = np.unique(np.column_stack([k, n]), axis=0, return_inverse=True)
    values = np.array([binomtest(int(a), int(b), 0.5).pvalue if b > 0 else 1.0 for a, b in pairs])
    return values[np.asarray(inverse).reshape(-1)] if len(values) else np.zeros(0)


def certified_rate(correct: np.ndarray, radius: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``(R,)``: the share of decisions that are right and certified at least each radius.

    ``correct`` and ``radius`` have the same shape ``(N,)``; a radius ``r`` counts a decision
    when ``correct`` and ``radius >= r`` (the paper's certified accuracy at ``r``).
    """
    hits = certified_at(correct, radius, radii)
    return hits.mean(axis=0) if len(hits) else np.full(len(radii), np.nan)


def certified_at(correct: np.ndarray, radius: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``(N, R)`` bool: decision ``i`` is right and certified at radius ``radii[j]`` or more."""
    return np.asarray(correct, bool)[:, None] & (np.asarray(radius)[:, None] >= np.asarray(radii)[None, :])


def radius_ceiling(n: int, *, sigma: float, alpha: float) -> float:
    """The largest radius ``n`` estimation draws can certify: every draw right gives
    ``pA_lower = alpha ** (1 / n)``, so the radius is ``sigma * Phi^-1(alpha ** (1 / n))``."""
    return float(sigma * norm.ppf(clopper_pearson_lower(np.array([n]), n, alpha)[0]))
