"""Non-inferiority of a candidate audit against a baseline, metric by metric.

The question a release asks: is the candidate no worse than the released model by more
than a margin? Pass only when the data show it: the one-sided ``1 - alpha`` upper
confidence bound of the **drop** (baseline minus candidate for a higher-is-better metric,
candidate minus baseline for a lower-is-better one) lies below the margin. Samples are
paired by id as in :mod:`robustkit.compare`, with the same per-sample records:

* a metric that is the mean of a 0/1 column over the same samples in both audits
  (accuracies, per-class sensitivities: :func:`~robustkit.metrics.paired.binary_column`):
  Tango's score interval for paired proportions
  (:func:`robustkit.metrics.noninferiority.tango_interval`), method ``tango-score``;
* any other metric a paired statistic recomputes from the records
  (:func:`~robustkit.metrics.paired_statistics.find_statistic`: ECE, AUROC, ...): the
  paired bootstrap percentile bound, method ``paired-bootstrap``;
* a metric neither recomputes is not shown non-inferior: method ``none``, no bound.

Each metric's one-sided p-value (the score test at the margin; for the bootstrap, the
share of resampled drops at or above the margin) is Holm-adjusted over the metrics of
one rule; a metric passes when its adjusted p-value is below ``alpha``. For one metric
that is the same as its bound lying below the margin. No TensorFlow here.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from robustkit.compare import paired_records
from robustkit.metrics.noninferiority import tango_interval, tango_pvalue
from robustkit.metrics.paired import (
    PairedRecords,
    binary_column,
    holm,
    paired_bootstrap,
    resample_indices,
)
from robustkit.metrics.paired_statistics import find_statistic
from robustkit.results import AuditResult

__all__ = ["NonInferiority", "noninferiority"]


@dataclass(frozen=True)
class NonInferiority:
    """One metric's non-inferiority test.

    Attributes:
        metric: full dotted name.
        baseline, candidate: the stored values; ``difference = candidate - baseline``.
        drop: the difference in the metric's bad direction (positive: worse).
        interval: the two-sided ``1 - 2 alpha`` interval of ``difference``; its end on the
            bad side is the one-sided ``1 - alpha`` bound of the drop. None when untested.
        drop_bound: the one-sided upper bound of the drop (NaN when untested).
        method: ``tango-score``, ``paired-bootstrap`` or ``none``.
        p_value, p_adjusted: one-sided p of "the drop is at least the margin" (Holm over
            the rule's metrics); None when untested.
        n: the pairs the test read; ``discordant`` the (gained, lost) pairs for Tango.
        note: why a metric was not tested.
    """

    metric: str
    baseline: float
    candidate: float
    difference: float
    drop: float
    interval: tuple[float, float] | None
    drop_bound: float
    method: str
    p_value: float | None
    p_adjusted: float | None
    n: int = 0
    discordant: tuple[int, int] | None = None
    note: str = ""


def noninferiority(base: AuditResult, cand: AuditResult, metrics: Sequence[str], *, margin: float,
                   alpha: float = 0.05, n_boot: int = 1000, seed: int = 0) -> list[NonInferiority]:
    """Test each named metric of ``cand`` for non-inferiority to ``base`` within ``margin``.

    The audits must be comparable (:func:`robustkit.compare.check_comparable`) and every
    metric must have a direction (``higher`` or ``lower``).
    """
    pairs: dict[str, tuple[PairedRecords, PairedRecords] | None] = {}
    raw = []
    for name in metrics:
        study = name.partition(".")[0]
        if study not in pairs:
            pairs[study] = paired_records(base, cand, study)
        raw.append(_one(name, base, cand, pairs[study], margin=margin, alpha=alpha, n_boot=n_boot, seed=seed))
    p_adj = holm([r.p_value if r.p_value is not None else math.nan for r in raw])
    return [r if r.p_value is None else _with_adjusted(r, p) for r, p in zip(raw, p_adj)]


def _with_adjusted(r: NonInferiority, p: float) -> NonInferiority:
    return replace(r, p_adjusted=float(p))


def _one(name: str, base: AuditResult, cand: AuditResult, pair: tuple[PairedRecords, PairedRecords] | None, *,
         margin: float, alpha: float, n_boot: int, seed: int) -> NonInferiority:
    va, vb = base.metrics()[name], cand.metrics()[name]
    sign = 1.0 if base.direction(name) == "higher" else -1.0  # drop = sign * (baseline - candidate)
    out = NonInferiority(name, va, vb, vb - va, sign * (va - vb) + 0.0, None, math.nan, "none", None, None)
    if not (math.isfinite(va) and math.isfinite(vb)):
        return _note(out, "a value is not finite")
    if pair is None:
        return _note(out, "no per-sample records to pair")
    metric = name.partition(".")[2]
    cols = binary_column(pair[0], metric), binary_column(pair[1], metric)
    if cols[0] is not None and cols[1] is not None and np.array_equal(cols[0][1], cols[1][1]):
        found = _tango(out, cols[0], cols[1], sign=sign, margin=margin, alpha=alpha)
        if found is not None:
            return found
    return _bootstrap(out, pair, sign=sign, margin=margin, alpha=alpha, n_boot=n_boot, seed=seed)


def _note(out: NonInferiority, note: str) -> NonInferiority:
    return replace(out, note=note)


def _tango(out: NonInferiority, col_a: tuple[np.ndarray, np.ndarray], col_b: tuple[np.ndarray, np.ndarray], *,
           sign: float, margin: float, alpha: float) -> NonInferiority | None:
    """Tango's interval on the discordant pairs, when the columns reproduce the stored values."""
    m = col_a[1]
    a, b = col_a[0][m].astype(bool), col_b[0][m].astype(bool)
    n = int(m.sum())
    if n == 0 or abs(a.mean() - out.baseline) > 1e-6 or abs(b.mean() - out.candidate) > 1e-6:
        return None
    gained, lost = int(np.sum(~a & b)), int(np.sum(a & ~b))
    low, high = tango_interval(gained, lost, n, level=1.0 - 2.0 * alpha)
    bound = -low if sign > 0 else high
    # H1: the difference lies above -margin (higher is better) or below +margin (lower is better)
    p = tango_pvalue(gained, lost, n, -sign * margin, alternative="greater" if sign > 0 else "less")
    return replace(out, interval=(low, high), drop_bound=float(bound), method="tango-score", p_value=p, n=n,
                   discordant=(gained, lost))


def _bootstrap(out: NonInferiority, pair: tuple[PairedRecords, PairedRecords], *, sign: float, margin: float,
               alpha: float, n_boot: int, seed: int) -> NonInferiority:
    pa, pb = pair
    stat_a = find_statistic(out.metric, pa, check=out.baseline)
    stat_b = find_statistic(out.metric, pb, check=out.candidate)
    if stat_a is None or stat_b is None:
        return replace(out, n=pa.n, note="the records do not recompute this metric")
    study = out.metric.partition(".")[0]
    idx = resample_indices(pa.n, n_boot, seed=(seed + zlib.crc32(study.encode())) % 2**32)
    boot = paired_bootstrap(stat_a, stat_b, pa.n, indices=idx, level=1.0 - 2.0 * alpha)
    if not math.isfinite(boot.low):
        return replace(out, n=pa.n, note="too few resamples where the metric is defined")
    drops = -sign * boot.diffs
    bound = -boot.low if sign > 0 else boot.high
    p = float(np.mean(drops >= margin))
    return replace(out, interval=(boot.low, boot.high), drop_bound=float(bound), method="paired-bootstrap",
                   p_value=p, n=pa.n)
