"""The calibration study's numbers on its evaluation split: every metric of a set of rows
(:func:`scores`), and the same metrics under resampling counts for the bootstrap intervals
(:class:`Resampled`, :func:`intervals`).

:func:`scores` gives the point metrics (the split itself) and, on drawn rows, what one index
resample would give. The intervals draw the resamples as counts in blocks
(:func:`~robustkit.metrics.resampling.bootstrap_weights`, stratified by the labels) and
:class:`Resampled` computes every metric for a whole block at once: fixed-bin metrics are
weighted bin sums, sort-based ones read the split sorted once with each sample repeated by its
count. Pure numpy and scipy over logits; no model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.sparse import csr_array

from robustkit.metrics import calibration as CM
from robustkit.metrics import multilabel as ML
from robustkit.metrics import outputs as OUT
from robustkit.metrics import selective as SEL
from robustkit.metrics.average import nan_mean
from robustkit.metrics.resampling import weighted_bootstrap_interval

if TYPE_CHECKING:
    from robustkit.studies.base import AuditContext
    from robustkit.studies.calibration import CalibrationConfig

__all__ = ["EvalSet", "Resampled", "intervals", "risk_label", "scores"]


def risk_label(x: float) -> str:
    """A target risk as it appears in metric names (``0.05``)."""
    return f"{x:g}"


class EvalSet:
    """The evaluation split's logits, targets ``(n, K)``, labels ``(n,)`` (the stratification
    key; the class of an exclusive task), probabilities before/after scaling, per-sample NLL."""

    def __init__(self, logits: np.ndarray, targets: np.ndarray, y: np.ndarray, temperature: float, kind: str) -> None:
        self.logits, self.t, self.y, self.temperature, self.kind = logits, targets, y, temperature, kind
        self.p = OUT.probabilities(logits, kind)
        self.p_ts = OUT.probabilities(logits, kind, temperature)
        self.nll = OUT.sample_nll(logits, targets, kind)
        self.nll_ts = OUT.sample_nll(logits, targets, kind, temperature)


def scores(e: EvalSet, idx: np.ndarray, cfg: CalibrationConfig, names: list[str], positive: int | None,
            exclusive: bool) -> dict[str, float]:
    """Every evaluation-split metric on the samples ``idx`` of the split: the per-output block,
    and for an exclusive task the top-label and selective block."""
    out = _output_scores(e, idx, names, cfg.n_bins)
    if exclusive:
        out.update(_top_label_scores(e, idx, cfg, names, positive))
    return out


def _output_scores(e: EvalSet, idx: np.ndarray, names: list[str], n_bins: int) -> dict[str, float]:
    """ECE (binary reliability form) and Brier per output and their macro means, and the NLL,
    before (no suffix) and after (``_ts``) scaling: the same for every task kind."""
    t, out = e.t[idx], {}
    for suffix, p, loss in (("", e.p[idx], e.nll[idx]), ("_ts", e.p_ts[idx], e.nll_ts[idx])):
        for root, values in (("ece", ML.per_finding_ece(t, p, n_bins=n_bins)), ("brier", ML.per_finding_brier(t, p))):
            out.update({f"{root}{suffix}.{n}": float(v) for n, v in zip(names, values)})
            finite = values[np.isfinite(values)]
            out[f"{root}{suffix}.macro"] = float(finite.mean()) if finite.size else float("nan")
        out[f"nll{suffix}"] = float(np.mean(loss)) if len(loss) else float("nan")
    return out


def _top_label_scores(e: EvalSet, idx: np.ndarray, cfg: CalibrationConfig, names: list[str],
                      positive: int | None) -> dict[str, float]:
    """The exclusive block: top-label and classwise estimators, multi-class Brier, accuracy and
    selective prediction of the scaled max probability."""
    y, b = e.y[idx], cfg.n_bins
    out: dict[str, float] = {}
    for suffix, p in (("", e.p[idx]), ("_ts", e.p_ts[idx])):
        out["ece" + suffix] = CM.ece(p, y, n_bins=b)
        out["ece_equal_mass" + suffix] = CM.ece_equal_mass(p, y, n_bins=b)
        out["mce" + suffix] = CM.mce(p, y, n_bins=b)
        out["classwise_ece" + suffix] = CM.classwise_ece(p, y, n_bins=b)
        out["classwise_ece_adaptive" + suffix] = CM.classwise_ece_adaptive(p, y, n_bins=b)
        out["debiased_l2_ce" + suffix] = CM.debiased_l2_ce(p, y, n_bins=b)
        out["brier" + suffix] = CM.brier(p, y)
    pred = e.p_ts[idx].argmax(axis=1)
    conf, correct = e.p_ts[idx].max(axis=1), pred == y
    out["accuracy"] = float(np.mean(correct))
    out["aurc"] = SEL.aurc(conf, correct)
    out["e_aurc"] = SEL.e_aurc(conf, correct)
    for r in cfg.target_risks:
        cov, thr = SEL.coverage_at_risk(conf, correct, r)
        out[f"coverage_at_risk.{risk_label(r)}"] = cov
        if positive is not None:
            out[f"sensitivity_at_risk.{names[positive]}.{risk_label(r)}"] = SEL.selective_sensitivity(conf, y, pred, positive, thr)
    return out


def intervals(e: EvalSet, cfg: CalibrationConfig, names: list[str], positive: int | None, exclusive: bool,
               ctx: AuditContext) -> dict[str, list[float]]:
    """Stratified bootstrap 95% intervals over the evaluation split (T held fixed): one set of
    resamples as counts in blocks (:func:`~robustkit.metrics.resampling.bootstrap_weights`),
    every metric of :func:`scores` computed from the counts by :class:`Resampled`."""
    if len(e.y) < 2:
        return {}
    keys = list(scores(e, np.arange(len(e.y)), cfg, names, positive, exclusive))
    resampled = Resampled(e, cfg, names, positive, exclusive)

    def stat(w: np.ndarray) -> np.ndarray:
        s = resampled(w)
        return np.stack([s[k] for k in keys], axis=1)

    lo, hi = weighted_bootstrap_interval(stat, len(e.y), n_boot=cfg.n_bootstrap,
                                         seed=ctx.seed_for("calibration", "bootstrap"), strata=e.y)
    return {k: [float(a), float(c)] for k, a, c in zip(keys, lo, hi) if np.isfinite(a) and np.isfinite(c)}


class Resampled:
    """Every metric of :func:`scores` under rows of resampling counts ``(b, n)`` of the
    evaluation split, vectorised over the rows: fixed-bin metrics (equal-width ECE and MCE,
    classwise ECE, Brier, NLL, accuracy) are weighted bin sums (a matrix product per block);
    sort-based ones (equal-mass ECE, adaptive classwise ECE, debiased L2, AURC, coverage and
    sensitivity at risk) read each resample as the samples in one order sorted once here, each
    repeated by its count (:func:`robustkit.metrics.calibration.equal_mass_sums_counts`,
    :mod:`robustkit.metrics.selective`'s ``*_counts``). The values equal :func:`scores` on the
    drawn rows (``np.repeat(np.arange(n), counts)``) up to float rounding, up to the order of
    distinct samples with exactly tied confidences."""

    def __init__(self, e: EvalSet, cfg: CalibrationConfig, names: list[str], positive: int | None,
                 exclusive: bool) -> None:
        self.names, self.positive, self.exclusive, self.b = names, positive, exclusive, cfg.n_bins
        self.target_risks = list(cfg.target_risks)
        t = e.t.astype(np.float64)
        self.sides = {suffix: self._side(p, t, e.y, nll, exclusive)
                      for suffix, p, nll in (("", e.p, e.nll), ("_ts", e.p_ts, e.nll_ts))}
        if exclusive:
            self.pred = e.p_ts.argmax(axis=1)
            self.conf = e.p_ts.max(axis=1)
            self.correct = (self.pred == e.y).astype(np.float64)
            self.y = e.y
            self.descending = np.argsort(-self.conf, kind="mergesort")

    def _side(self, p: np.ndarray, t: np.ndarray, y: np.ndarray, nll: np.ndarray, exclusive: bool) -> dict[str, Any]:
        """What one side (before or after scaling) needs, once: a sparse design whose product with
        the counts gives every fixed-bin sum and mean (per output: ECE bins of ``t - p`` and
        ``(p - t)^2``; the NLL; exclusive: classwise ECE bins, the top-label bin counts and gaps,
        the multi-class Brier), and the orders and values of the equal-mass estimators."""
        b, k = self.b, p.shape[1]
        columns = [CM.ece_update(p[:, j], t[:, j], n_bins=b) for j in range(k)]  # (bins, gap) per output
        means = [*((p - t) ** 2).T, nll]
        side: dict[str, Any] = {}
        if exclusive:
            conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
            onehot = np.eye(k)[y]
            classes = [CM.ece_update(p[:, j], onehot[:, j], n_bins=b) for j in range(k)]
            top = CM.equal_width_bins(conf, b)
            columns += [*classes, (top, np.ones(len(conf))), (top, hit - conf)]
            means.append(np.sum((p - onehot) ** 2, axis=1))
            side.update(top=(np.argsort(conf, kind="mergesort"), np.stack([conf, hit], axis=1)),
                        adaptive=[(np.argsort(p[:, j], kind="mergesort"), gap) for j, (_, gap) in enumerate(classes)])
        n = len(p)
        rows = np.tile(np.arange(n), len(columns) + len(means))
        cols = np.concatenate([i * b + bins for i, (bins, _) in enumerate(columns)]
                              + [np.full(n, len(columns) * b + i) for i in range(len(means))])
        vals = np.concatenate([gap for _, gap in columns] + means)
        side["design"] = csr_array((vals, (cols, rows)), shape=(len(columns) * b + len(means), n))  # transposed
        return side

    def __call__(self, w: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        n, counts = w.sum(axis=1), CM.compact_counts(w)  # the sorted reads gather the compact counts
        for suffix, side in self.sides.items():
            sums = (side["design"] @ w.T).T  # (b, columns): every fixed-bin sum, one sparse product
            out.update(self._outputs(suffix, sums, n))
            if self.exclusive:
                out.update(self._top_label(suffix, side, sums, counts, n))
        if self.exclusive:
            out.update(self._selective(w, counts, n))
        return out

    def _outputs(self, suffix: str, sums: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
        """ECE and Brier per output, their macro means, the NLL (:func:`_output_scores`)."""
        b, k = self.b, len(self.names)
        ece = np.stack([CM.l1_of_sums(sums[:, j * b:(j + 1) * b], n) for j in range(k)], axis=1)
        means = sums[:, -(k + 2 if self.exclusive else k + 1):] / n[:, None]  # brier per output, nll(, brier)
        out = {f"nll{suffix}": means[:, k]}
        for root, values in (("ece", ece), ("brier", means[:, :k])):
            out.update({f"{root}{suffix}.{name}": values[:, j] for j, name in enumerate(self.names)})
            out[f"{root}{suffix}.macro"] = nan_mean(values, axis=1)
        return out

    def _top_label(self, suffix: str, side: dict[str, Any], sums: np.ndarray, counts: np.ndarray,
                   n: np.ndarray) -> dict[str, np.ndarray]:
        """The top-label and classwise estimators and the multi-class Brier (:func:`_top_label_scores`)."""
        b, k = self.b, len(self.names)
        block = [sums[:, j * b:(j + 1) * b] for j in range(2 * k + 2)]  # outputs, classes, top count, top gap
        order, values = side["top"]
        count, mass = CM.equal_mass_sums_counts(order, values, counts, n_bins=b)
        adaptive = [CM.l1_of_sums(CM.equal_mass_sums_counts(order, gap, counts, n_bins=b)[1][:, :, 0], n)
                    for order, gap in side["adaptive"]]
        return {
            "ece" + suffix: CM.l1_of_sums(block[-1], n),
            "ece_equal_mass" + suffix: CM.l1_of_sums(mass[:, :, 1] - mass[:, :, 0], n),
            "mce" + suffix: CM.mce_of_sums(block[-2], block[-1]),
            "classwise_ece" + suffix: np.mean([CM.l1_of_sums(g, n) for g in block[k:2 * k]], axis=0),
            "classwise_ece_adaptive" + suffix: np.mean(adaptive, axis=0),
            "debiased_l2_ce" + suffix: CM.debiased_l2_of_sums(count, mass[:, :, 0], mass[:, :, 1]),
            "brier" + suffix: sums[:, -1] / n,
        }

    def _selective(self, w: np.ndarray, counts: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
        """Accuracy and selective prediction of the scaled max probability (:func:`_top_label_scores`)."""
        ranked = SEL.sort_counts(self.descending, self.correct, counts)
        aurc = SEL.aurc_counts(ranked)
        out = {"accuracy": w @ self.correct / n, "aurc": aurc, "e_aurc": aurc - SEL.optimal_aurc_counts(self.correct, w)}
        coverage, threshold = SEL.coverage_at_risk_counts(ranked, self.conf, self.target_risks)
        for j, r in enumerate(self.target_risks):
            out[f"coverage_at_risk.{risk_label(r)}"] = coverage[j]
            if self.positive is not None:
                out[f"sensitivity_at_risk.{self.names[self.positive]}.{risk_label(r)}"] = SEL.selective_sensitivity_counts(
                    self.conf, self.y, self.pred, self.positive, threshold[j], w)
        return out
