"""Slices of the samples by metadata, per-slice metrics, slice-vs-complement tests, BH q-values.

Pure numpy/scipy (scikit-learn for the site probe, imported when used). A slice is a
conjunction of ``column=value`` conditions over the per-sample metadata (``site=B``,
``site=B&view=AP``); numeric columns with many values are binned (age in decades:
``age=40-49``). Per slice: accuracy, sensitivity and specificity of the positive class
(the audit's critical class) and the top-label ECE (:mod:`robustkit.metrics.calibration`'s binning), each with
a percentile bootstrap interval; the accuracy gap to the complement is tested with Fisher's
exact test (the two groups are disjoint), and the p-values of all slices are adjusted with
Benjamini-Hochberg (1995). Directions: accuracy, sensitivity, specificity higher is better;
ECE lower; the gap higher (negative = worse than the rest).

The per-slice intervals (:func:`metrics_per_slice`) share one resampling of all ``N`` samples
(counts in blocks, :func:`~robustkit.metrics.resampling.bootstrap_weights`): a slice's
resample is the drawn samples that fall in it, so its size varies between resamples. The
slices cut the samples into cells (the samples in exactly the same slices); per block of
resamples one sparse product gives every cell's weighted counts of (right, positive, called
positive) and ECE gap per bin, and each slice sums its cells: the cost is about that of one
resampling of ``N``, whatever the number of slices. Until this scheme each slice drew its own
``n_s`` samples from itself with its own seed; the point values are unchanged and the
intervals agree within Monte Carlo error (``tests/test_resampling_weights.py``).

The probe (:func:`site_probe`) asks whether a column (the site) can be read from the model's
penultimate features: a cross-validated logistic regression, its out-of-fold AUROC and a
bootstrap interval, against chance 0.5 (DeGrave et al. 2021 on the source shortcut);
:func:`site_probes` fits the plain and the within-class probe and resamples both from the
same counts (the numbers of one :func:`site_probe` call each).

Per output, for every task (single-label with one-hot targets): :func:`aurocs_per_slice`
(:func:`slice_aurocs`: one slice) scores each slice by each output's ROC AUC on its images and
their macro mean (outputs without both positive and negative images in the slice left out), each
with a percentile bootstrap 95% interval, and tests the slice's macro AUROC against the rest's:
the gap's two-sided p-value (``p = 2 min(P*(gap <= 0), P*(gap >= 0))``, with the +1 correction)
comes from the same resamples. They too share one resampling of all ``N`` samples (within a
stratification key): every output sorted once, per block one cumulative sum over all the samples
for the whole set's Mann-Whitney U, and per slice its own U; the rest's U is the whole set's less
the pairs touching the slice plus the slice's own (:func:`_slice_and_rest_aurocs`, exact integer
sums), about ``N + sum of the slice sizes`` per resample and output. Until this scheme the slice
and its rest were resampled separately and independently (each from itself, seeds of their own);
the points are unchanged, the intervals and p-values agree within Monte Carlo error
(``tests/test_resampling_weights.py``).

Example:
    >>> [round(q, 3) for q in bh_qvalues([0.01, 0.04, 0.03, 0.5])]
    [0.04, 0.053, 0.053, 0.5]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from robustkit.errors import ConfigError
from robustkit.metrics.average import nan_mean
from robustkit.metrics.calibration import ece_compute, ece_update
from robustkit.metrics.classification import roc_auc_ovr
from robustkit.metrics.paired import bh_qvalues  # the multiple-testing home (with Holm)
from robustkit.metrics.ranking import (
    SortedScores,
    counted_mann_whitney,
    cumulative_counts,
    sort_scores,
    weighted_aurocs,
)
from robustkit.metrics.ranking import auroc as per_output_auroc
from robustkit.metrics.resampling import bootstrap_weights

__all__ = [
    "SLICE_METRICS",
    "Slice",
    "aurocs_per_slice",
    "bh_qvalues",
    "cramers_v",
    "dependence_within",
    "discretize",
    "enumerate_slices",
    "finding_sets",
    "metrics_per_slice",
    "parse_slice",
    "site_probe",
    "site_probes",
    "slice_aurocs",
    "slice_mask",
    "slice_metrics",
    "slice_test",
]

#: the per-slice metrics, with their directions
SLICE_METRICS: dict[str, str] = {"accuracy": "higher", "sensitivity": "higher", "specificity": "higher",
                                 "ece": "lower"}


@dataclass(frozen=True)
class Slice:
    """A named subset of the samples.

    Attributes:
        name: ``col=value`` conditions joined by ``&`` (``site=B&view=AP``).
        conditions: the ``(column, value label)`` pairs.
        mask: ``(N,)`` bool membership.
    """

    name: str
    conditions: tuple[tuple[str, str], ...]
    mask: np.ndarray


def _label(lo: float, width: float, integer: bool) -> str:
    return f"{lo:g}-{lo + width - 1:g}" if integer else f"{lo:g}-{lo + width:g}"


def discretize(values: np.ndarray, *, bin_width: float, max_levels: int = 10,
               missing: str | None = None) -> np.ndarray:
    """Value labels ``(N,)`` str: a numeric column with more than ``max_levels`` distinct
    values is binned into ``[k*w, (k+1)*w)`` labelled ``40-49`` (ints) or ``40-50``.

    ``missing`` names the value of an absent entry (a metadata sheet's ``missing``): a column
    whose other values are all numbers is then binned as a numeric column, and ``missing``
    stays a label of its own.

    >>> discretize(np.array(["61", "missing"] + [str(a) for a in range(20, 80, 5)]), bin_width=10,
    ...            missing="missing")[:4].tolist()
    ['60-69', 'missing', '20-29', '20-29']
    """
    values = np.asarray(values)
    if missing is not None and values.dtype.kind == "U" and (values == missing).any():
        return _discretize_present(values, values == missing, bin_width, max_levels)
    if not np.issubdtype(values.dtype, np.number) or len(np.unique(values)) <= max_levels:
        return values.astype(str)
    integer = np.issubdtype(values.dtype, np.integer) and float(bin_width).is_integer()
    lo = np.floor(values.astype(np.float64) / bin_width) * bin_width
    return np.asarray([_label(v, bin_width, integer) for v in lo])


def _discretize_present(values: np.ndarray, absent: np.ndarray, bin_width: float, max_levels: int) -> np.ndarray:
    """:func:`discretize` of the entries not ``absent`` when they all read as numbers (ints
    first); the absent ones keep their value. Otherwise the values as they are."""
    for kind in (np.int64, np.float64):
        try:
            numbers = values[~absent].astype(kind)
        except ValueError:
            continue
        out = values.astype(object)
        if len(np.unique(numbers)) > max_levels:
            out[~absent] = discretize(numbers, bin_width=bin_width, max_levels=max_levels)
        return out.astype(str)
    return values.astype(str)


def parse_slice(text: str) -> tuple[tuple[str, str], ...]:
    """``"site=B&view=AP"`` -> ``(("site", "B"), ("view", "AP"))``; ConfigError if malformed."""
    parts = [p.strip() for p in str(text).split("&")]
    out = []
    for p in parts:
        col, sep, val = p.partition("=")
        if not sep or not col.strip() or not val.strip():
            raise ConfigError(f"The 'slices' parameter of study 'slices' must be 'column=value' conditions "
                              f"joined by '&'. Got {text!r} instead.")
        out.append((col.strip(), val.strip()))
    return tuple(out)


def slice_mask(labels: Mapping[str, np.ndarray], conditions: Sequence[tuple[str, str]]) -> np.ndarray:
    """Membership ``(N,)`` of the samples meeting every ``(column, value label)`` condition."""
    n = len(next(iter(labels.values()))) if labels else 0
    mask = np.ones(n, dtype=bool)
    for col, val in conditions:
        mask &= labels[col] == val
    return mask


def _name(conditions: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{c}={v}" for c, v in conditions)


def enumerate_slices(labels: Mapping[str, np.ndarray], *, depth: int = 2, min_size: int = 30) -> list[Slice]:
    """Every value of every column, and conjunctions of up to ``depth`` columns, keeping the
    slices with at least ``min_size`` samples and at least ``min_size`` outside.

    Args:
        labels: column -> ``(N,)`` value labels (see :func:`discretize`).
        depth: the most columns in one slice (1 or 2 typically).
        min_size: the fewest samples in the slice and in its complement.
    """
    cols = sorted(labels)
    n = len(labels[cols[0]]) if cols else 0
    coded = {c: np.unique(np.asarray(labels[c]), return_inverse=True) for c in cols}  # (values, code (N,))
    out: list[Slice] = []
    for k in range(1, depth + 1):
        for group in combinations(cols, k):
            shape = tuple(len(coded[c][0]) for c in group)
            key = np.ravel_multi_index(tuple(coded[c][1].reshape(-1) for c in group), shape)
            for combo in np.unique(key):  # in the order of the sorted value tuples
                values = np.unravel_index(combo, shape)
                conditions = tuple((c, str(coded[c][0][v])) for c, v in zip(group, values))
                mask = key == combo
                if mask.sum() >= min_size and n - mask.sum() >= min_size:
                    out.append(Slice(_name(conditions), conditions, mask))
    return out


def _rates(correct: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row means of ``correct`` over ``keep`` (both ``(B, n)``); NaN for an empty row."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(keep, correct, 0).sum(axis=1) / keep.sum(axis=1)


def _stats(rows: np.ndarray, y: np.ndarray, pred: np.ndarray, conf: np.ndarray, positive: int,
           n_bins: int) -> np.ndarray:
    """Accuracy, sensitivity, specificity, ECE ``(B, 4)`` for each row of sample indices ``(B, n)``."""
    hit = pred == y
    pos, said = y == positive, pred == positive
    bins, gap = ece_update(conf, hit, n_bins=n_bins)
    return np.stack([
        hit[rows].mean(axis=1),
        _rates(said[rows], pos[rows]),
        _rates(~said[rows], ~pos[rows]),
        ece_compute(bins, gap, rows, n_bins=n_bins),
    ], axis=1)


def _cells(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The finest partition the slices ``(S, N)`` cut the samples into: the cell ``(N,)`` of each
    sample and the membership ``(C, S)`` of each cell (a cell lies wholly inside or outside a slice)."""
    rows = np.ascontiguousarray(np.packbits(masks, axis=0).T)  # (N, ceil(S / 8)): each sample's slices
    _, first, cell = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    return cell.reshape(-1), masks[:, first].T


def _design(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, cell: np.ndarray, n_cells: int, positive: int,
            n_bins: int) -> Any:
    """Sparse ``(N, C * (8 + n_bins))``: a sample's 1 at its (cell, right, positive, called positive)
    column and its signed ECE gap at its (cell, ECE bin) column, so that resampling counts ``w``
    ``(b, N)`` give every cell's weighted sums as one product ``w @ design``."""
    from scipy.sparse import csr_array

    hit = pred == y
    combo = hit.astype(np.int64) + 2 * (y == positive) + 4 * (pred == positive)
    bins, gap = ece_update(conf, hit, n_bins=n_bins)
    n = len(y)
    cols = np.stack([cell * 8 + combo, n_cells * 8 + cell * n_bins + bins], axis=1).reshape(-1)
    vals = np.stack([np.ones(n), gap], axis=1).reshape(-1)
    return csr_array((vals, cols, np.arange(0, 2 * n + 1, 2)), shape=(n, n_cells * (8 + n_bins)))


#: the (right, positive, called positive) combinations (bits 1, 2, 4) summed by each rate's numerator
#: and denominator: accuracy, sensitivity (called positive among positives), specificity
_RIGHT, _POS, _CALLED_POS, _NEG, _CALLED_NEG = [1, 3, 5, 7], [2, 3, 6, 7], [6, 7], [0, 1, 4, 5], [0, 1]


def _slice_stats(sums: np.ndarray, member: np.ndarray, n_bins: int) -> np.ndarray:
    """Accuracy, sensitivity, specificity, ECE ``(b, S, 4)`` of every slice from the cells' weighted
    sums ``(b, C * (8 + n_bins))`` (``w @`` :func:`_design`) and their membership ``(C, S)``."""
    n_cells = len(member)
    counts = np.einsum("bck,cs->bsk", sums[:, : 8 * n_cells].reshape(len(sums), n_cells, 8), member)
    gaps = np.einsum("bck,cs->bsk", sums[:, 8 * n_cells:].reshape(len(sums), n_cells, n_bins), member)
    total = counts.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([
            counts[..., _RIGHT].sum(axis=2) / total,
            counts[..., _CALLED_POS].sum(axis=2) / counts[..., _POS].sum(axis=2),
            counts[..., _CALLED_NEG].sum(axis=2) / counts[..., _NEG].sum(axis=2),
            np.abs(gaps).sum(axis=2) / total,
        ], axis=2)


def _resampled_slices(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, masks: np.ndarray, *, positive: int,
                      n_bins: int, n_boot: int, seed: int) -> np.ndarray:
    """:func:`_stats` of every slice ``(S, N)`` in each resample ``(n_boot, S, 4)``: one resampling
    of all ``N`` samples (:func:`~robustkit.metrics.resampling.bootstrap_weights`), a slice's
    resample being the counts of its own samples; per block one sparse product and two small sums."""
    cell, member = _cells(masks)
    design = _design(y, pred, conf, cell, len(member), positive, n_bins)
    member = member.astype(np.float64)
    return np.concatenate([_slice_stats(np.asarray(w @ design), member, n_bins)
                           for w in bootstrap_weights(len(y), n_boot, seed=seed)])


def metrics_per_slice(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, masks: np.ndarray, *, positive: int = 0,
                      n_bins: int = 15, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> list[tuple[dict[str, float], dict[str, list[float]]]]:
    """Every slice's metrics (:data:`SLICE_METRICS`) and their percentile bootstrap intervals.

    The resampling is shared: each resample draws ``N`` samples with replacement from all the
    samples (counts, :func:`~robustkit.metrics.resampling.bootstrap_weights` with ``seed``), and a
    slice's statistic is that of the drawn samples that fall in it, so its size varies between
    resamples as it would in a new sample of ``N``. (Before, each slice drew its own ``n_s``
    samples from itself with a seed of its own; both are percentile bootstraps of the same
    statistic and agree within Monte Carlo error for slices of tens of samples or more, as a
    test checks.) A resample where a metric is undefined (no positive drawn) is left out; an
    interval needs at least half the resamples defined, and a slice at least two samples.

    Args:
        y, pred: ``(N,)`` labels and predicted classes (ints).
        conf: ``(N,)`` top-label confidence.
        masks: ``(S, N)`` bool slice membership (each slice at least one sample).
        positive: the class whose sensitivity and specificity are reported.
        n_bins: ECE bins (equal width).
        n_boot: bootstrap resamples of all the samples (0: no intervals).
        seed: resampling seed.

    Returns:
        Per slice ``({metric: value}, {metric: [low, high]})``; NaN where undefined (no positives).
        The values are exactly those of the slice's own samples (:func:`_stats`).
    """
    y, pred = np.asarray(y), np.asarray(pred)
    conf, masks = np.asarray(conf, dtype=np.float64), np.asarray(masks, dtype=bool).reshape(-1, len(y))
    out: list[tuple[dict[str, float], dict[str, list[float]]]] = []
    for mask in masks:
        idx = np.flatnonzero(mask)
        point = _stats(np.arange(len(idx))[None], y[idx], pred[idx], conf[idx], positive, n_bins)[0]
        out.append(({k: float(v) for k, v in zip(SLICE_METRICS, point)}, {}))
    if n_boot < 1 or not len(masks):
        return out
    boot = _resampled_slices(y, pred, conf, masks, positive=positive, n_bins=n_bins, n_boot=n_boot, seed=seed)
    alpha = (1.0 - level) / 2.0
    for s, (_, intervals) in enumerate(out):
        if masks[s].sum() < 2:
            continue
        for j, k in enumerate(SLICE_METRICS):
            col = boot[:, s, j][np.isfinite(boot[:, s, j])]
            if len(col) >= n_boot / 2:
                intervals[k] = [float(np.quantile(col, alpha)), float(np.quantile(col, 1 - alpha))]
    return out


def slice_metrics(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, mask: np.ndarray, *, positive: int = 0,
                  n_bins: int = 15, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One slice's :func:`metrics_per_slice` (``mask`` ``(N,)``): its metrics and intervals, the
    resamples drawn from all ``N`` samples.

    Returns:
        ``({metric: value}, {metric: [low, high]})``; NaN where undefined (no positives).
    """
    return metrics_per_slice(y, pred, conf, np.asarray(mask, dtype=bool)[None], positive=positive, n_bins=n_bins,
                             n_boot=n_boot, seed=seed, level=level)[0]


def slice_test(correct: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Accuracy gap of the slice to its complement and Fisher's exact two-sided p-value.

    Args:
        correct: ``(N,)`` bool, the prediction was right.
        mask: ``(N,)`` bool, the slice (slice and complement both non-empty).

    Returns:
        ``(accuracy(slice) - accuracy(complement), p)``.
    """
    from scipy.stats import fisher_exact

    correct, mask = np.asarray(correct, dtype=bool), np.asarray(mask, dtype=bool)
    a, b = int(np.sum(correct & mask)), int(np.sum(~correct & mask))
    c, d = int(np.sum(correct & ~mask)), int(np.sum(~correct & ~mask))
    gap = a / max(a + b, 1) - c / max(c + d, 1)
    return float(gap), float(fisher_exact([[a, b], [c, d]]).pvalue)


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramér's V of two categorical columns (0: independent, 1: one determines the other)."""
    _, ia = np.unique(np.asarray(a).astype(str), return_inverse=True)
    _, ib = np.unique(np.asarray(b).astype(str), return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), 1)
    k = min(table.shape) - 1
    if k < 1:
        return 0.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(np.sum((table - expected) ** 2 / expected))
    return math.sqrt(chi2 / (table.sum() * k))


def dependence_within(pred: np.ndarray, column: np.ndarray, groups: np.ndarray) -> float:
    """How much the predictions depend on ``column`` (the site) among samples of the same class.

    The size-weighted mean over the groups (classes) of Cramér's V between the predicted class
    and the column within the group. 0: within every class the prediction does not change
    with the site; 1: within every class the site decides the prediction (a model that reads
    the source). Groups with one site or one prediction count as 0; NaN with no samples.
    """
    pred, column, groups = np.asarray(pred), np.asarray(column).astype(str), np.asarray(groups)
    total, weight = 0.0, 0
    for g in np.unique(groups):
        m = groups == g
        total += m.sum() * cramers_v(pred[m], column[m])
        weight += int(m.sum())
    return total / weight if weight else math.nan


def _oof_probs(x: np.ndarray, t: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold probabilities ``(N, L)`` of the probe.

    The fits run on one BLAS thread: their products are skinny (``(n, D)`` by ``(D, L)``, a
    handful of levels), which one thread does about as fast, while several threads contend for
    the cores with whatever else runs (``benchmarks/bench_reduce.py``, slices at N = 100,000 on a
    shared 2-core machine: 30 s on one BLAS thread against 57 s on two, side by side)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    out = np.zeros((len(t), int(t.max()) + 1))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, t):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore")  # convergence chatter on tiny folds
            clf.fit(x[train], t[train])
        out[np.ix_(test, clf.classes_)] = clf.predict_proba(x[test])
    return out


def _auroc(t: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUROC of class 1, or the macro one-vs-rest AUROC of several classes."""
    auc = roc_auc_ovr(t, probs)
    return float(auc[1]) if probs.shape[1] == 2 else nan_mean(auc)


def _probe_resamples(t: np.ndarray, probs: Sequence[np.ndarray], *, n_boot: int, seed: int) -> np.ndarray:
    """:func:`_auroc` of each bootstrap resample ``(n_boot, len(probs))`` for each matrix of
    probabilities ``(N, L)``, all from the same resampled counts in blocks
    (:func:`~robustkit.metrics.resampling.bootstrap_weights`; each class column sorted once)."""
    # binary: the AUROC of class 1 alone (class 0's is the same ranking reversed)
    read = [[1] if p.shape[1] == 2 else list(range(p.shape[1])) for p in probs]
    cols = [sort_scores(p[:, k], t == k) for p, ks in zip(probs, read) for k in ks]
    ends = np.cumsum([0] + [len(ks) for ks in read])
    parts = []
    for w in bootstrap_weights(len(t), n_boot, seed=seed):
        auc = weighted_aurocs(cols, w)
        parts.append(np.stack([nan_mean(auc[:, a:b], axis=1) for a, b in zip(ends, ends[1:])], axis=1))
    return np.concatenate(parts) if parts else np.empty((0, len(probs)))


def _centred(x: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """``x`` ``(N, D)`` less the mean of its group in each group (a copy); ``x`` itself without groups."""
    if groups is None:
        return x
    out, g = x.copy(), np.asarray(groups)
    for v in np.unique(g):
        out[g == v] -= out[g == v].mean(axis=0)
    return out


def site_probe(features: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0,
               n_boot: int = 1000, groups: np.ndarray | None = None) -> dict[str, Any]:
    """How well ``target`` (the site) can be read from the model's features.

    A standardised, L2-regularised (C=0.1) logistic regression, stratified ``folds``-fold
    cross-validated; the AUROC (binary, or macro one-vs-rest) of its out-of-fold
    probabilities, with a percentile bootstrap interval over samples (the fits are not
    repeated, so the interval ignores the variability of the fit and is somewhat narrow).
    Chance is 0.5. With ``groups`` (the class labels), the features are first
    centred within each group, so that site information carried only by the class (a
    class-site confound) does not count.

    Args:
        features: ``(N, D)`` penultimate features.
        target: ``(N,)`` the column to predict.
        folds: cross-validation folds (reduced to the smallest value count when fewer).
        seed: fold and bootstrap seed.
        n_boot: bootstrap resamples for the interval.
        groups: optional ``(N,)`` labels to centre the features within.

    Returns:
        ``{"auroc", "low", "high", "folds", "n", "levels"}``; ``auroc`` NaN (and a ``note``)
        when a level has fewer than 2 samples or there is only one level.
    """
    return site_probes(features, target, [groups], folds=folds, seed=seed, n_boot=n_boot)[0]


def site_probes(features: np.ndarray, target: np.ndarray, groupings: Sequence[np.ndarray | None], *,
                folds: int = 5, seed: int = 0, n_boot: int = 1000) -> list[dict[str, Any]]:
    """:func:`site_probe` once per entry of ``groupings`` (None: the features as they are; labels
    ``(N,)``: centred within them), the same folds and the same bootstrap resamples for all (one
    draw of the counts): each result equals its own :func:`site_probe` call with that ``groups``.
    """
    levels, t = np.unique(np.asarray(target).astype(str), return_inverse=True)
    counts = np.bincount(t)
    folds = int(min(folds, counts.min())) if len(counts) else 0
    base: dict[str, Any] = {"n": int(len(t)), "levels": levels.tolist(), "folds": folds,
                            "auroc": math.nan, "low": math.nan, "high": math.nan}
    if len(levels) < 2 or folds < 2:
        return [{**base, "note": "needs two values with at least two samples each"} for _ in groupings]
    x = np.asarray(features, dtype=np.float64).reshape(len(t), -1)
    probs = [_oof_probs(_centred(x, g), t, folds, seed) for g in groupings]
    resampled = _probe_resamples(t, probs, n_boot=n_boot, seed=seed)
    out = []
    for p, values in zip(probs, resampled.T):
        values = values[np.isfinite(values)]
        low, high = (np.quantile(values, [0.025, 0.975]) if len(values) else (math.nan, math.nan))
        out.append({**base, "auroc": _auroc(t, p), "low": float(low), "high": float(high)})
    return out


def finding_sets(targets: np.ndarray) -> np.ndarray:
    """int (N,): one code per distinct set of findings (rows of ``targets`` ``(N, K)``)."""
    return np.unique(np.asarray(targets, bool), axis=0, return_inverse=True)[1].reshape(-1)


def _interval(values: np.ndarray) -> list[float]:
    """Percentile 95% interval of resampled values ``(n_boot,)``; NaN when more than half are undefined."""
    ok = np.isfinite(values)
    if ok.mean() <= 0.5:
        return [math.nan, math.nan]
    lo, hi = np.percentile(values[ok], [2.5, 97.5])
    return [float(lo), float(hi)]


@dataclass(frozen=True)
class _Ranked:
    """One output's scores sorted once for :func:`_slice_and_rest_aurocs`.

    Attributes:
        all: every sample (:func:`~robustkit.metrics.ranking.sort_scores`).
        swapped: the same with the classes swapped (for each negative, the positives above it).
        own: each slice's own samples (weights still indexed by sample).
        member_pos, member_neg: sparse ``(S, P)``, ``(S, Q)`` int64: whether each positive
            (negative) of ``all``, in its sorted order, is in each slice.
    """

    all: SortedScores
    swapped: SortedScores
    own: list[SortedScores]
    member_pos: Any
    member_neg: Any


def _ranked(scores: np.ndarray, positive: np.ndarray, masks: np.ndarray) -> _Ranked:
    """:class:`_Ranked` of one output's ``scores`` ``(N,)`` and ``positive`` ``(N,)`` for the slices ``(S, N)``."""
    from scipy.sparse import csr_array

    col = sort_scores(scores, positive)
    own = [sort_scores(scores[idx], positive[idx], sample=idx) for idx in (np.flatnonzero(m) for m in masks)]
    return _Ranked(col, sort_scores(scores, ~positive), own, csr_array(masks[:, col.pos].astype(np.int64)),
                   csr_array(masks[:, col.neg].astype(np.int64)))


def _ratio(twice_u: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """AUROC ``2U / (2 P Q)``; NaN where a class is missing."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), twice_u / (2.0 * n_pos * n_neg), np.nan)


def _slice_and_rest_aurocs(r: _Ranked, by_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One output's AUROC of every slice and of its rest ``(S, b)``, ``(S, b)`` under the counts
    ``by_sample`` ``(N, b)`` (integers; samples along the first axis).

    The whole set's U counts every (positive, negative) pair once (twice U: a tie counts 1, a
    pair in order 2). The rest's pairs are all the pairs less those whose positive is in the
    slice, less those whose negative is, plus those with both, taken away twice (the slice's own U):
    ``U_rest = U_all - touch_pos - touch_neg + U_slice``. ``touch_pos`` sums, over the slice's
    positives, each one's weight times the negatives below it in the whole set (read from one
    cumulative sum over the sorted negatives), ``touch_neg`` likewise over its negatives; one
    sparse product gives them for every slice. The slice's own U needs its own cumulative sum
    (:func:`~robustkit.metrics.ranking.counted_mann_whitney`, a gather of its samples). All sums
    are integers, exact."""
    wp, wn = by_sample[r.all.pos], by_sample[r.all.neg]
    cum_neg, cum_pos = cumulative_counts(wn), cumulative_counts(wp)
    below = 2 * cum_neg[-1:] - cum_neg[r.all.neg_tied_above] - cum_neg[r.all.neg_above]  # (P, b)
    above = cum_pos[r.swapped.neg_above] + cum_pos[r.swapped.neg_tied_above]  # (Q, b): positives above, ties 1/2
    pairs_pos, pairs_neg = (wp * below).astype(np.int64), (wn * above).astype(np.int64)
    u_all, p_all, n_all = pairs_pos.sum(axis=0), cum_pos[-1].astype(np.int64), cum_neg[-1].astype(np.int64)
    touch_pos, touch_neg = np.asarray(r.member_pos @ pairs_pos), np.asarray(r.member_neg @ pairs_neg)
    own = [counted_mann_whitney(c, by_sample) for c in r.own]
    u_in, p_in, n_in = (np.stack([o[i] for o in own]) if own else np.zeros((0, len(u_all)), np.int64)
                        for i in range(3))
    u_rest = u_all[None] - touch_pos - touch_neg + u_in
    return _ratio(u_in, p_in, n_in), _ratio(u_rest, p_all[None] - p_in, n_all[None] - n_in)


def _as_counts(w: np.ndarray) -> np.ndarray:
    """Bootstrap counts ``(b, N)`` as integers ``(N, b)`` (int32 where every product of a count and
    twice a row's total fits, as :func:`~robustkit.metrics.ranking.weighted_aurocs` does; int64 otherwise)."""
    small = w.size == 0 or w.max() * 2.0 * w.sum(axis=1).max() < 2**31
    return np.ascontiguousarray(w.T.astype(np.int32 if small else np.int64))


def _resampled_aurocs(ranked: list[_Ranked], strata: np.ndarray, *, n_boot: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output AUROC of every slice and of its rest in each resample, ``(n_boot, S, K)`` each:
    one stratified resampling of all ``N = len(strata)`` samples in blocks
    (:func:`~robustkit.metrics.resampling.bootstrap_weights`), shared by every slice; each
    output (``ranked``: :func:`_ranked`) sorted once (:func:`_slice_and_rest_aurocs`)."""
    inside, rest = [], []
    for w in bootstrap_weights(len(strata), n_boot, seed=seed, strata=strata):
        by_sample = _as_counts(w)
        pairs = [_slice_and_rest_aurocs(r, by_sample) for r in ranked]  # K of ((S, b), (S, b))
        inside.append(np.stack([a for a, _ in pairs], axis=-1).transpose(1, 0, 2))
        rest.append(np.stack([b for _, b in pairs], axis=-1).transpose(1, 0, 2))
    empty = np.empty((0, ranked[0].member_pos.shape[0] if ranked else 0, len(ranked)))
    return (np.concatenate(inside), np.concatenate(rest)) if inside else (empty, empty)


def _gap_p(gaps: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a gap from its resampled values (NaN left out; +1 correction)."""
    gaps = gaps[np.isfinite(gaps)]
    if not len(gaps):
        return math.nan
    tail = min(int((gaps <= 0).sum()), int((gaps >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (len(gaps) + 1)))


def aurocs_per_slice(targets: np.ndarray, probs: np.ndarray, masks: np.ndarray, strata: np.ndarray, *,
                     n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Every slice against its rest: per-output AUROC ``(K,)`` and macro AUROC of the slice with
    bootstrap intervals, the rest's macro AUROC, the gap and its bootstrap p-value.

    The values are those of the slice's (the rest's) own samples: the slice's from
    :func:`~robustkit.metrics.ranking.auroc`, the rest's from the whole set's U less the slice's
    terms under unit weights (:func:`_slice_and_rest_aurocs`), the same whole U divided by the same
    ``P Q``, so equal to ``auroc`` of the rest's samples to the bit (tested). The resampling is shared: each resample draws
    ``N`` samples with replacement from all the samples within ``strata`` (counts,
    :func:`~robustkit.metrics.resampling.bootstrap_weights` with ``seed``), and a slice's and
    its rest's statistics are those of the drawn samples that fall in each, so both come from the
    same draw and their sizes vary between resamples, as in a new sample of ``N``. The gap's
    two-sided p-value is ``2 min(P*(gap <= 0), P*(gap >= 0))`` over the resamples (+1 correction).
    Cost: per block of resamples and per output one cumulative sum over all ``N`` and one over
    each slice (:func:`_slice_and_rest_aurocs`), so about ``N + sum of the slice sizes`` per
    resample and output. (Before, each slice drew ``n_s`` samples from itself and its rest
    ``N - n_s`` from itself, independently, with seeds of their own: the points are the same and
    the intervals and p-values agree within Monte Carlo error, as a test checks.)

    Args:
        targets: bool ``(N, K)`` (one-hot for a single-label task).
        probs: ``(N, K)`` probabilities.
        masks: bool ``(S, N)``: the slices.
        strata: ``(N,)`` resampling strata.
        n_boot: bootstrap resamples (0: the point values only, no intervals or test).
        seed: seed of the shared resampling.

    Returns:
        Per slice ``{"auroc", "macro", "auroc_intervals", "macro_interval", "rest_macro", "gap", "p"}``
        (NaN where undefined; the rest's fields NaN for a slice of every sample).
    """
    t, p = np.asarray(targets, bool), np.asarray(probs, np.float64)
    masks = np.asarray(masks, dtype=bool).reshape(-1, len(t))
    out: list[dict[str, Any]] = []
    for mask in masks:
        auroc = per_output_auroc(t[mask], p[mask])
        out.append({"auroc": auroc, "macro": nan_mean(auroc), "auroc_intervals": [[math.nan, math.nan]] * t.shape[1],
                    "macro_interval": [math.nan, math.nan], "rest_macro": math.nan, "gap": math.nan, "p": math.nan})
    if not n_boot or not len(masks):
        return out
    ranked = [_ranked(p[:, k], t[:, k], masks) for k in range(t.shape[1])]
    unit = np.ones((len(t), 1), dtype=np.int32)  # the samples themselves: the rest's own AUROCs (S, K)
    rest_values = np.stack([_slice_and_rest_aurocs(r, unit)[1][:, 0] for r in ranked], axis=1)
    inside, rest = _resampled_aurocs(ranked, np.asarray(strata), n_boot=n_boot, seed=seed)
    macro_in, macro_rest = nan_mean(inside, axis=-1), nan_mean(rest, axis=-1)  # (n_boot, S)
    for s, (mask, row) in enumerate(zip(masks, out)):
        row.update(auroc_intervals=[_interval(inside[:, s, k]) for k in range(t.shape[1])],
                   macro_interval=_interval(macro_in[:, s]))
        if mask.all():
            continue
        rest_macro = nan_mean(rest_values[s])
        row.update(rest_macro=rest_macro, gap=row["macro"] - rest_macro, p=_gap_p(macro_in[:, s] - macro_rest[:, s]))
    return out


def slice_aurocs(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray, strata: np.ndarray, *,
                 n_boot: int, seed: int) -> dict[str, Any]:
    """One slice's :func:`aurocs_per_slice` (``mask`` ``(N,)``), the resamples drawn from all ``N`` samples.

    Example:
        >>> t = np.array([[1], [0], [1], [0], [1], [0]], dtype=bool)
        >>> r = slice_aurocs(t, np.array([[0.9], [0.2], [0.4], [0.6], [0.8], [0.1]]),
        ...                  np.array([1, 1, 1, 1, 0, 0], bool), np.zeros(6, int), n_boot=0, seed=0)
        >>> float(r["macro"]), r["p"]
        (0.75, nan)
    """
    return aurocs_per_slice(targets, probs, np.asarray(mask, dtype=bool)[None], strata, n_boot=n_boot, seed=seed)[0]
