"""Non-inferiority of paired proportions: Tango's score interval of a paired difference.

Two models scored on the same samples give, per sample, a pair of 0/1 outcomes (correct,
or a case of the critical class found). Their difference of proportions
``delta = p_candidate - p_baseline`` is estimated by ``(gained - lost) / n`` from the
discordant pairs alone: ``gained`` samples only the candidate gets right, ``lost`` samples
only the baseline gets right. Tango (1998) inverts the score test of ``delta = delta0``,
with the variance evaluated at the maximum-likelihood cell probabilities under that
constraint (closed form, his eq. 3); the interval is every ``delta0`` the test does not
reject. It keeps its coverage near the nominal level with few discordant pairs and near
the boundaries, where the Wald interval does not (Tango 1998; Newcombe 1998, method 10, is
its close relative).

A non-inferiority test with margin ``m`` (higher is better) rejects ``delta <= -m`` when
the one-sided ``1 - alpha`` lower bound of ``delta`` lies above ``-m``; its p-value is the
score test's at ``delta0 = -m``, so the bound and the p-value always agree.

Tango T. (1998), Equivalence test and confidence interval for the difference in
proportions for the paired-sample design. Statistics in Medicine 17:891-908.

Pure numpy and scipy.
"""

from __future__ import annotations

import math

from robustkit.errors import check_range

__all__ = ["tango_interval", "tango_pvalue", "tango_score"]

_EDGE = 1e-12


def _check(gained: int, lost: int, n: int) -> None:
    for name, v in (("gained", gained), ("lost", lost), ("n", n)):
        check_range(name, v, low=0, integer=True, where="tango_score")
    if gained + lost > n or n == 0:
        raise ValueError(f"expected 0 < n and gained + lost <= n, got gained={gained}, lost={lost}, n={n}")


def _restricted_lost(gained: int, lost: int, n: int, delta0: float) -> float:
    """Maximum-likelihood probability of a 'lost' pair given ``p_gained - p_lost = delta0``."""
    a = 2.0 * n
    b = -(gained + lost) + (2.0 * n - gained + lost) * delta0
    c = -lost * delta0 * (1.0 - delta0)
    return (math.sqrt(max(b * b - 4.0 * a * c, 0.0)) - b) / (2.0 * a)


def tango_score(gained: int, lost: int, n: int, delta0: float) -> float:
    """Tango's score statistic of ``delta = delta0``; decreasing in ``delta0``.

    Args:
        gained: pairs where only the candidate succeeds.
        lost: pairs where only the baseline succeeds.
        n: all pairs (concordant ones included).
        delta0: the hypothesised ``p_candidate - p_baseline`` in (-1, 1).

    >>> round(tango_score(10, 10, 100, 0.0), 6)
    0.0
    """
    _check(gained, lost, n)
    q = _restricted_lost(gained, lost, n, delta0)
    var = n * (2.0 * q + delta0 * (1.0 - delta0))
    num = gained - lost - n * delta0
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_pvalue(gained: int, lost: int, n: int, delta0: float, *, alternative: str = "greater") -> float:
    """One-sided p-value of the score test: H1 ``delta > delta0`` (``greater``) or ``delta < delta0``.

    >>> tango_pvalue(0, 0, 100, -0.05) < 0.05  # 100 concordant pairs exclude a 5-point drop
    True
    """
    from scipy.stats import norm

    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    t = tango_score(gained, lost, n, delta0)
    return float(norm.sf(t) if alternative == "greater" else norm.cdf(t))


def tango_interval(gained: int, lost: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Two-sided score interval of ``p_candidate - p_baseline`` at ``level``.

    A one-sided ``1 - alpha`` bound is an end of the two-sided ``1 - 2 alpha`` interval.

    >>> lo, hi = tango_interval(5, 15, 300)
    >>> lo < (5 - 15) / 300 < hi
    True
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    check_range("level", level, low=0.0, high=1.0, low_open=True, high_open=True, where="tango_interval")
    _check(gained, lost, n)
    z = float(norm.isf((1.0 - level) / 2.0))
    est = (gained - lost) / n

    def root(target: float, lo: float, hi: float) -> float:
        f = lambda d: tango_score(gained, lost, n, d) - target  # noqa: E731
        if f(lo) * f(hi) > 0:  # the statistic never reaches the target: the bound is the edge
            return lo if abs(f(lo)) < abs(f(hi)) else hi
        return float(brentq(f, lo, hi, xtol=1e-12))

    low = root(z, -1.0 + _EDGE, est) if est > -1.0 + _EDGE else -1.0
    high = root(-z, est, 1.0 - _EDGE) if est < 1.0 - _EDGE else 1.0
    return float(low), float(high)
