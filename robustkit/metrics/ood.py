"""Out-of-distribution detection: post hoc scores from logits and features, and their metrics.

Every score is *higher = more in-distribution* (ID). The detection metrics treat ID as the
positive class (the convention of Hendrycks & Gimpel 2017 and of ``FPR at 95% TPR`` in
Liang et al. 2018); OpenOOD (Yang et al. 2022) reports FPR@95 with OOD as the positive
class, given here too as ``fpr95_openood``.

Scores (``(N,)`` from logits ``(N, K)`` and features ``(N, D)``):

* :func:`msp_score`: maximum softmax probability (Hendrycks & Gimpel, ICLR 2017);
* :func:`max_logit_score`: maximum logit (Hendrycks et al., ICML 2022);
* :func:`energy_score`: ``logsumexp`` of the logits, the negative free energy (Liu et al.,
  NeurIPS 2020);
* :func:`mahalanobis_score`: minus the smallest Mahalanobis distance to a class mean under
  a shared covariance (Lee et al., NeurIPS 2018), fitted by :func:`fit_gaussian` (shrunk by
  ``shrinkage = 0.01`` by default: the OOD study's ``mahalanobis_shrinkage``);
* :func:`knn_score`: minus the cosine distance to the k-th nearest reference feature
  (Sun et al., ICML 2022), exact, comparing each feature only with the bank rows a bound
  leaves possible (the bank sorted along its principal axis);
* :func:`vim_score`: energy minus the scaled norm of the feature's residual outside the
  principal subspace (ViM, Wang et al., CVPR 2022), fitted by :func:`fit_vim`;
* :func:`react_score`: energy of the logits recomputed from features clipped at a
  percentile of the reference activations (ReAct, Sun et al., NeurIPS 2021).

Detection metrics (:func:`ood_metrics`, ID positive) and their percentile bootstrap
intervals: :func:`ood_intervals` for one score and set (its own resampling), and
:func:`detection_intervals` for every score and set over one shared resampling of resampled
counts (the OOD study's; the two agree within Monte Carlo error, and each equals
:func:`ood_metrics` of the resampled indices on the same counts).

Example:
    >>> import numpy as np
    >>> ood_metrics(np.array([3.0, 2.0, 1.5]), np.array([0.1, 0.2]))["auroc"]
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from robustkit.errors import check_range, param_error
from robustkit.metrics.outputs import probabilities
from robustkit.metrics.ranking import ranking_rows, sort_scores, weighted_ranking
from robustkit.metrics.resampling import (
    bootstrap_weights,
    percentile_interval,
    weighted_bootstrap_interval,
)

__all__ = [
    "DETECTION_METRICS",
    "ViMFit",
    "detection_intervals",
    "energy_score",
    "fit_gaussian",
    "fit_vim",
    "joint_energy",
    "knn_score",
    "mahalanobis_score",
    "max_logit_score",
    "msp_score",
    "ood_intervals",
    "ood_metrics",
    "react_clip",
    "react_score",
    "shrunk_covariance",
    "threshold_at_tpr",
    "vim_score",
]

#: metric name -> (meaning, direction)
DETECTION_METRICS: dict[str, tuple[str, str]] = {
    "auroc": ("ROC AUC of telling ID (positive) from the OOD set by the score", "higher"),
    "aupr_in": ("average precision with ID as the positive class", "higher"),
    "aupr_out": ("average precision with the OOD set as the positive class (score negated)", "higher"),
    "fpr95": ("share of the OOD set accepted at the threshold that keeps 95% of ID images", "lower"),
    "fpr95_openood": ("share of ID images rejected when 95% of the OOD set is rejected (OpenOOD's FPR@95)",
                      "lower"),
}


# -- scores --------------------------------------------------------------------------------
def _logsumexp(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def msp_score(logits: np.ndarray, kind: str = "softmax") -> np.ndarray:
    """Maximum probability ``(N,)`` of logits ``(N, K)`` read as the model's ``kind``."""
    return probabilities(np.asarray(logits, dtype=np.float64), kind).max(axis=1)


def max_logit_score(logits: np.ndarray) -> np.ndarray:
    """Maximum logit ``(N,)``."""
    return np.asarray(logits, dtype=np.float64).max(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Negative free energy ``logsumexp(z)`` ``(N,)`` at temperature 1."""
    return _logsumexp(logits)


def joint_energy(logits: np.ndarray) -> np.ndarray:
    """JointEnergy ``(N,)`` of a multi-label head's pre-sigmoid logits ``(N, K)``:
    ``sum_k log(1 + exp(z_k))`` (Wang et al. 2021, "Can multi-label classification networks
    know what they don't know?"); higher = more in-distribution."""
    return np.logaddexp(0.0, np.asarray(logits, dtype=np.float64)).sum(axis=1)


def fit_gaussian(features: np.ndarray, labels: np.ndarray, num_classes: int,
                 *, shrinkage: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(K, D)`` and the inverse of the shared (pooled within-class) covariance
    ``(D, D)`` of reference features ``(N, D)`` with labels ``(N,)``.

    The covariance is shrunk towards its mean variance, ``(1 - s) S + s tr(S)/D I``, so that
    fewer reference images than feature dimensions still give a stable inverse (``s = 0``:
    the pseudo-inverse of ``S``, Lee et al.'s estimator).

    Raises:
        ConfigError: when a class has no reference sample.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    counts = np.bincount(y, minlength=num_classes)
    if np.any(counts == 0):
        raise param_error("reference labels", f"at least one reference sample of each of {num_classes} classes",
                          f"none of class(es) {np.flatnonzero(counts == 0).tolist()}")
    means = np.stack([f[y == k].mean(axis=0) for k in range(num_classes)])
    centred = f - means[y]
    cov = shrunk_covariance(centred.T @ centred / len(f), shrinkage)
    return means, (np.linalg.pinv(cov, hermitian=True) if shrinkage == 0 else np.linalg.inv(cov))


def shrunk_covariance(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    """``(1 - s) S + s tr(S)/D I`` of a covariance ``(D, D)``."""
    check_range("shrinkage", shrinkage, low=0.0, high=1.0, where="fit_gaussian")
    scale = max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    return (1 - shrinkage) * cov + shrinkage * scale * np.eye(cov.shape[0])


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Minus the smallest squared Mahalanobis distance ``(N,)`` to a class mean."""
    f = np.asarray(features, dtype=np.float64)
    fp = f @ precision  # (f - mu) P (f - mu) = f P f - 2 f P mu + mu P mu, one product for every class
    mp = np.asarray(means, dtype=np.float64) @ precision
    d2 = (fp * f).sum(axis=1)[:, None] - 2 * f @ mp.T + (mp * means).sum(axis=1)[None, :]
    return -d2.min(axis=1)


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn_score(features: np.ndarray, bank: np.ndarray, k: int, *, chunk: int = 128) -> np.ndarray:
    """Minus the cosine distance ``(N,)`` to the ``k``-th nearest of the reference ``bank``
    ``(M, D)`` (both L2-normalised).

    Exact (the float64 brute force to float rounding), without comparing every feature with
    every bank row where a bound rules rows out: bank and features are sorted by their
    projection on the bank's first principal axis ``u``, and since unit vectors ``q``, ``b``
    have ``q . b <= 1 - ((q - b) . u)^2 / 2``, a bank row whose projection is farther than
    ``sqrt(2 (1 - t))`` from a feature's cannot reach a similarity ``t``. Each block of
    ``chunk`` features (consecutive in that order) takes ``t`` from a probe (the
    :data:`_KNN_PROBE` bank rows nearest in projection: their ``k``-th largest similarity is
    a lower bound of the ``k``-th over the bank), and compares itself with the bank rows of
    its window only (:func:`_kth_similarity`). The cost depends on the data: near neighbours
    (a large bank, tight clusters) give narrow windows; spread features fall back to every
    pair, as before.
    """
    check_range("k", k, low=1, high=max(len(bank), 1), integer=True, where="knn_score")
    b, f = _unit(bank), _unit(features)
    axis = _principal_axis(b)
    by = np.argsort(b @ axis, kind="stable")
    b = b[by]
    pb, pf = b @ axis, f @ axis
    out = np.empty(len(f))
    order = np.argsort(pf, kind="stable")
    # one BLAS thread: a block's (chunk, D) @ (D, window) products are too small to share out, and
    # the hand-off between threads cost more than they brought (bench_reduce at N = 100,000 on a
    # busy 2-core machine: 7 s against 22 to 48 s). threadpoolctl comes with scikit-learn.
    with threadpool_limits(limits=1, user_api="blas"):
        for s in range(0, len(f), chunk):
            rows = order[s:s + chunk]
            out[rows] = _kth_similarity(f[rows], pf[rows], b, pb, k)
    return -(1.0 - out)


#: bank rows (nearest in projection) whose ``k``-th largest similarity bounds a block's window,
#: and the columns of the window (spread) that bound each row's candidates
_KNN_PROBE = 512


def _principal_axis(b: np.ndarray, steps: int = 12) -> np.ndarray:
    """A unit vector ``(D,)`` along which the rows of ``b`` spread most (power iteration on
    their covariance; any unit vector keeps :func:`knn_score` exact, this one makes it fast)."""
    c = b - b.mean(axis=0)
    v = c[np.argmax((c * c).sum(axis=1))] if len(c) else np.zeros(b.shape[1])
    for _ in range(steps):
        v = c.T @ (c @ v)
        v = v / max(float(np.linalg.norm(v)), 1e-300)
    return v if np.linalg.norm(v) > 0.5 else np.eye(b.shape[1])[0]


def _kth_similarity(f: np.ndarray, pf: np.ndarray, b: np.ndarray, pb: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest similarity ``(c,)`` of unit rows ``f`` ``(c, D)`` (projections ``pf``)
    to the unit bank ``b`` ``(M, D)`` sorted by projection ``pb`` (see :func:`knn_score`).
    NaN for a row with fewer than ``k`` finite similarities."""
    m = min(len(b), max(k, _KNN_PROBE))
    lo = int(np.clip(np.searchsorted(pb, np.median(pf)) - m // 2, 0, len(b) - m))
    probe = f @ b[lo:lo + m].T
    bound = np.partition(probe, m - k, axis=1)[:, m - k] - 1e-12  # below float rounding of the same products
    reach = np.sqrt(2 * np.maximum(1.0 - bound, 0.0)) + 1e-7
    ok = np.isfinite(reach) & np.isfinite(pf)
    if not ok.any():
        return np.full(len(f), np.nan)
    start = np.searchsorted(pb, np.min((pf - reach)[ok]), side="left")
    stop = np.searchsorted(pb, np.max((pf + reach)[ok]), side="right")
    sims = f @ b[start:stop].T
    every = sims[:, ::max(1, sims.shape[1] // _KNN_PROBE)]  # a tighter bound per row: a spread subset of the window
    if every.shape[1] >= k:
        bound = np.maximum(bound, np.partition(every, every.shape[1] - k, axis=1)[:, every.shape[1] - k])
    idx = np.flatnonzero(sims >= bound[:, None])
    return _kth_by_row(idx // max(sims.shape[1], 1), sims.ravel()[idx], k, len(f))


def _kth_by_row(rows: np.ndarray, values: np.ndarray, k: int, n_rows: int) -> np.ndarray:
    """The ``k``-th largest of ``values`` in each row ``(n_rows,)`` (``rows`` ascending, as
    ``flatnonzero`` gives them): one partition of the rows padded to the longest; NaN for a row
    with fewer than ``k`` values."""
    counts = np.bincount(rows, minlength=n_rows)
    width = max(int(counts.max(initial=0)), k)
    padded = np.full((n_rows, width), -np.inf)
    padded[rows, np.arange(len(rows)) - np.r_[0, np.cumsum(counts)[:-1]][rows]] = values
    kth = np.partition(padded, width - k, axis=1)[:, width - k]
    return np.where(counts >= k, kth, np.nan)


@dataclass(frozen=True)
class ViMFit:
    """ViM's fitted statistics: origin ``u`` ``(D,)``, principal basis ``(D, dim)``, ``alpha``."""

    origin: np.ndarray
    principal_basis: np.ndarray
    alpha: float
    dim: int


def vim_dim(d: int) -> int:
    """The principal subspace's dimension for features of width ``d`` (ViM's choices)."""
    return 1000 if d >= 2048 else 512 if d >= 768 else max(1, d // 2)


def fit_vim(features: np.ndarray, logits: np.ndarray, kernel: np.ndarray, bias: np.ndarray,
            *, dim: int | None = None) -> ViMFit:
    """Fit ViM on reference features ``(N, D)`` and logits ``(N, K)`` of the final layer
    ``z = f @ kernel + bias`` (``kernel`` ``(D, K)``, ``bias`` ``(K,)``). The default
    principal dimension (:func:`vim_dim`) is capped at ``N - 1`` so that the principal
    subspace never takes arbitrary directions of the covariance's null space."""
    f = np.asarray(features, dtype=np.float64)
    d = f.shape[1]
    dim = min(vim_dim(d), max(1, len(f) - 1), d - 1) if dim is None else dim
    check_range("dim", dim, low=1, high=d - 1, integer=True, where="fit_vim")
    origin = -np.linalg.pinv(np.asarray(kernel, dtype=np.float64).T) @ np.asarray(bias, dtype=np.float64)
    c = f - origin
    _, _, vt = np.linalg.svd(c, full_matrices=False)  # rows: eigenvectors of c.T @ c, largest first
    basis = vt[:dim].T
    residual = _residual_norm(c, basis)
    alpha = float(np.asarray(logits, dtype=np.float64).max(axis=1).mean() / max(residual.mean(), 1e-12))
    return ViMFit(origin=origin, principal_basis=basis, alpha=alpha, dim=dim)


def _residual_norm(c: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``||c - c B B^T||`` per row, for an orthonormal ``B`` ``(D, dim)``."""
    proj = c @ basis
    return np.sqrt(np.maximum((c * c).sum(axis=1) - (proj * proj).sum(axis=1), 0.0))


def vim_score(features: np.ndarray, logits: np.ndarray, fit: ViMFit,
              energy: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """ViM score ``(N,)``: ``logsumexp(z) - alpha * ||(f - u)`` outside the principal subspace``||``
    (``energy`` replaces ``logsumexp``: :func:`joint_energy` for a multi-label head)."""
    residual = _residual_norm(np.asarray(features, dtype=np.float64) - fit.origin, fit.principal_basis)
    return (energy or _logsumexp)(logits) - fit.alpha * residual


def react_clip(features: np.ndarray, percentile: float = 90.0) -> float:
    """ReAct's clipping level: the ``percentile`` of every reference activation ``(N, D)``."""
    check_range("percentile", percentile, low=0.0, high=100.0, where="react_clip")
    return float(np.percentile(np.asarray(features, dtype=np.float64), percentile))


def react_score(features: np.ndarray, clip: float, kernel: np.ndarray, bias: np.ndarray,
                energy: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Energy ``(N,)`` of ``min(f, clip) @ kernel + bias`` (``energy``: as in :func:`vim_score`)."""
    f = np.minimum(np.asarray(features, dtype=np.float64), clip)
    return (energy or _logsumexp)(f @ np.asarray(kernel, dtype=np.float64) + np.asarray(bias, dtype=np.float64))


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
