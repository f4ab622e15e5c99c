"""Study ``calibration``: can the confidence be trusted, can it be fixed, does the fix hold
under shift, and how many cases must be referred for the rest to be safe.

The study's samples are split (seeded, stratified) into a *calibration* split, on which a
temperature is fitted by minimising the NLL (Guo et al. 2017), and a disjoint *evaluation*
split, on which every reported metric is computed, before (no suffix) and after (``_ts``)
scaling. Logits come from the audit's shared clean pass (no extra model pass); a
softmax-ended model is scaled on the logits before its softmax, a sigmoid-ended one on the
logits before its sigmoid (one scalar T fitted by the one-vs-rest binary NLL; top-label
metrics then read the arg-max and its sigmoid value, classwise ones each output one-vs-rest;
:mod:`robustkit.metrics.outputs`). Calibration under shift (Ovadia et al. 2019) applies
:mod:`robustkit.data.transforms` to the evaluation images at several severities. Selective
prediction uses the scaled max probability as confidence. The math lives in
:mod:`robustkit.metrics.calibration`.

Protocol: ``prepare`` (on the driver, before any ``map``) makes the calibration/evaluation
split, each class ordered by a draw keyed by (seed, sample id), so that it depends on the
seed and the samples only. ``map`` computes, per sample, the clean logits and, for the
evaluation samples, the logits under every shift condition (a random transform draws from
``ctx.rng("calibration", "shift", transform, severity, sample id)``); calibration samples
get NaN there, with no model pass. ``reduce`` fits the temperature on the calibration
split and computes every metric, interval, table and check.

A multi-label model is calibrated per finding (:mod:`robustkit.studies.calibration_findings`):
ECE in the binary reliability form and Brier per finding, their macro means, one temperature
fitted by the binary NLL summed over findings; the split is stratified by the first finding
(``Dataset.labels``) and ``map`` runs no shift pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.dataset import stratified_split
from robustkit.errors import DataError, ModelError, check_range, param_error
from robustkit.metrics import calibration as CM
from robustkit.metrics import classification as M
from robustkit.metrics import outputs as OUT
from robustkit.results import Check, StudyResult
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Records, Study, StudyConfig
from robustkit.studies.calibration_findings import optimiser_check, reduce_findings
from robustkit.task import critical_missing_check

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["CalibrationConfig", "CalibrationStudy"]

_WHERE = "study 'calibration'"
_GUO = "Guo et al. 2017, On calibration of modern neural networks"
_NIXON = "Nixon et al. 2019, Measuring calibration in deep learning"
_KUMAR = "Kumar, Liang & Ma 2019, Verified uncertainty calibration"
_GEIFMAN = "Geifman, Uziel & El-Yaniv 2019, Bias-reduced uncertainty estimation for deep neural classifiers"
_BASE_SCORES = ("ece", "ece_equal_mass", "mce", "classwise_ece", "classwise_ece_adaptive",
                "debiased_l2_ce", "brier", "nll")


@dataclass(frozen=True)
class CalibrationConfig(StudyConfig):
    """Options of the calibration study.

    Attributes:
        n_bins: bins of every binned estimator (15, as in Guo et al. 2017).
        calibration_fraction: share of each class used to fit the temperature; the rest
            is the evaluation split.
        n_bootstrap: bootstrap resamples of the evaluation split for the 95% intervals.
        target_risks: error rates among kept cases for ``coverage_at_risk.<r>``.
        referral_fractions: shares of least confident cases referred in the referral table.
        shift_transforms: transforms of :mod:`robustkit.data.transforms` for calibration under
            shift (those not available are skipped, with a check saying so).
        shift_severities: severities (1..5) of each shift transform (0, the clean split, is always drawn).
        min_per_bin: mean samples per populated bin under which ECE is flagged as unreliable.
        max_interval_width: ECE interval width above which it is flagged as inconclusive.
        overconfidence_gap: mean confidence minus accuracy that counts as over-confident.
    """

    n_bins: int = 15
    calibration_fraction: float = 0.5
    n_bootstrap: int = 1000
    target_risks: tuple[float, ...] = (0.01, 0.05)
    referral_fractions: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
    shift_transforms: tuple[str, ...] = ("gaussian", "gaussian_blur", "exposure_down", "jpeg")
    shift_severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    min_per_bin: int = 10
    max_interval_width: float = 0.1
    overconfidence_gap: float = 0.1

    def validate(self) -> None:
        super().validate()
        check_range("n_bins", self.n_bins, low=1, integer=True, where=_WHERE)
        check_range("calibration_fraction", self.calibration_fraction, low=0.0, high=1.0, low_open=True, where=_WHERE)
        if self.calibration_fraction >= 1.0:
            raise param_error("calibration_fraction", "a number in (0, 1)", self.calibration_fraction, where=_WHERE)
        check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where=_WHERE)
        for r in self.target_risks:
            check_range("target_risks", r, low=0.0, high=1.0, low_open=True, where=_WHERE)
        for f in self.referral_fractions:
            check_range("referral_fractions", f, low=0.0, high=0.99, where=_WHERE)
        for s in self.shift_severities:
            check_range("shift_severities", s, low=1, high=5, integer=True, where=_WHERE)
        for t in self.shift_transforms:
            if not isinstance(t, str) or not t:
                raise param_error("shift_transforms", "a list of transform names", t, where=_WHERE)
        check_range("min_per_bin", self.min_per_bin, low=1, integer=True, where=_WHERE)
        check_range("max_interval_width", self.max_interval_width, low=0.0, low_open=True, where=_WHERE)
        check_range("overconfidence_gap", self.overconfidence_gap, low=0.0, low_open=True, where=_WHERE)


def _r(x: float) -> str:
    return f"{x:g}"


@register
class CalibrationStudy(Study):
    name = "calibration"
    description = (
        "Whether the model's probabilities mean what they say (of the cases it gives 90%, "
        "about 90% should be right), how far temperature scaling fixes them, whether the fix "
        "holds when the images shift, and how many of the least confident cases must be "
        "referred to a radiologist for the rest to reach a target error. Temperature is "
        "fitted on a calibration split; every number is measured on a disjoint evaluation split."
    )
    Config = CalibrationConfig
    profiles = {
        "quick": {"n_bootstrap": 200, "shift_transforms": ("gaussian", "gaussian_blur"),
                  "shift_severities": (1, 3, 5), "max_samples": 100},
        "standard": {},
        "full": {"n_bootstrap": 2000},
    }
    metric_docs = {
        "ece": ("top-label expected calibration error, equal-width bins (15 by default; Guo et al. 2017)", "lower"),
        "ece_equal_mass": ("top-label ECE with equal-mass bins", "lower"),
        "mce": ("maximum calibration error: the worst bin's |accuracy - confidence|", "lower"),
        "classwise_ece": ("static calibration error: classwise ECE averaged over classes (Nixon et al. 2019)", "lower"),
        "classwise_ece_adaptive": ("adaptive calibration error: classwise ECE, equal-mass bins", "lower"),
        "debiased_l2_ce": ("debiased top-label L2 calibration error (Kumar et al. 2019)", "lower"),
        "brier": ("multi-class Brier score, in [0, 2]", "lower"),
        "nll": ("negative log-likelihood of the label", "lower"),
        "temperature": ("fitted temperature T: probabilities are softmax(logits / T) (sigmoid heads: "
                        "sigmoid(logits / T), one scalar)", "none"),
        "accuracy": ("accuracy on the evaluation split (under shift: on the shifted images)", "higher"),
        "accuracy_all": ("accuracy over both splits: the mean of the per-sample 'correct' column", "higher"),
        "aurc": ("area under the risk-coverage curve of the scaled max probability", "lower"),
        "e_aurc": ("AURC minus the AURC of a perfect ranking (Geifman et al. 2019)", "lower"),
        "coverage_at_risk": ("largest share of cases kept with error among them at most the target", "higher"),
        "sensitivity_at_risk": ("sensitivity of the class among the cases kept at that target risk", "higher"),
        "n_calibration": ("samples the temperature was fitted on", "none"),
        "n_evaluation": ("samples every metric is computed on", "none"),
    } | {f"{k}_ts": (f"{k} after temperature scaling", "lower") for k in _BASE_SCORES} | {
        "ece.macro": ("multi-label: ECE per finding (ece.{finding}; equal-width bins of the finding's "
                      "probability against its presence, the binary reliability form) and its mean over "
                      "findings; ece_ts.{finding}, ece_ts.macro after temperature scaling", "lower"),
        "brier.macro": ("multi-label: Brier score per finding (brier.{finding}, mean (p - presence)^2 in [0, 1]) "
                        "and its mean over findings; brier_ts.* after temperature scaling", "lower"),
        "prevalence": ("multi-label: per finding, the share of evaluation images with it (a constant "
                       "prediction of it has Brier prevalence * (1 - prevalence))", "none"),
    }
    headline = ("ece", "ece_ts", "temperature", "aurc", "coverage_at_risk.0.05")
    multilabel = True

    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """The calibration/evaluation split of the study's samples (ids of the evaluation side)."""
        y = np.asarray(data.labels, dtype=np.int64)
        _, ev = _split(y, self.config.calibration_fraction, _split_keys(data.ids, ctx))
        self._evaluation = frozenset(str(i) for i in np.asarray(data.ids)[ev])

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> Records:
        """Clean logits ``(B, K)`` (the audit's shared clean pass) and logits under every shift
        condition ``(B, n_conditions, K)`` for the evaluation samples (NaN for calibration ones,
        which are not shifted), each image's draws keyed by its sample id."""
        logits = ctx.clean_logits(model, batch)
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"{model.name}: expected finite logits on the clean data, got NaN or inf.")
        fns, _ = _shift_transforms(self.config.shift_transforms)
        conds = [] if model.output_kind == "multilabel" else _conditions(fns, self.config.shift_severities)
        evaluation = getattr(self, "_evaluation", None)
        rows = np.array([evaluation is None or str(i) in evaluation for i in batch.ids], dtype=bool)
        shift = np.full((len(batch), len(conds), model.num_classes), np.nan, dtype=np.float32)
        if rows.any():
            shift[rows] = _shift_logits(model, batch.subset(np.flatnonzero(rows)), fns, conds, ctx)
        return {"logits": logits, "shift_logits": shift}

    def reduce(self, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
        cfg = self.config
        names = list(data.class_names)
        logits = np.asarray(records["logits"], dtype=np.float64)
        y = np.asarray(data.labels, dtype=np.int64)
        cal, ev = _split(y, cfg.calibration_fraction, _split_keys(data.ids, ctx))
        if len(cal) == 0 or len(ev) == 0:
            raise DataError(f"{data.root}: expected at least 2 images for a calibration and an evaluation split, got {len(y)}.")
        kind = str(ctx.model_info.get("output_kind", "softmax"))
        if kind == "multilabel":
            return reduce_findings(records, data, ctx, cfg, (cal, ev))
        fit = OUT.fit_temperature(logits[cal], y[cal], kind)
        positive = ctx.critical_index  # sensitivity among kept cases is the critical class's
        ev_set = _EvalSet(logits[ev], y[ev], fit.temperature, kind)
        result = StudyResult(name=self.name)
        result.metrics = _scores(ev_set, np.arange(len(ev)), cfg, names, positive)
        result.metrics.update(temperature=fit.temperature, n_calibration=float(len(cal)), n_evaluation=float(len(ev)))
        result.metrics["accuracy_all"] = float(np.mean(logits.argmax(axis=1) == y))
        result.intervals = _intervals(ev_set, cfg, names, positive, ctx)
        _describe(result, ctx.model_info, cfg, fit, ev_set, names, positive, (cal, ev), y)
        shift_checks = _shift(result, np.asarray(records["shift_logits"], dtype=np.float64)[ev], ev_set, cfg)
        n_cal_errors = int(np.sum(logits[cal].argmax(axis=1) != y[cal]))
        result.data["temperature_export"]["identifiable"] = n_cal_errors > 0  # else T is only a bound
        result.checks = _checks(result, fit, cfg, n_cal_errors) + shift_checks
        if positive is None:
            result.checks.append(critical_missing_check("the sensitivity among kept cases"))
        _records(result, logits, y, fit.temperature, cal, kind)
        return result


class _EvalSet:
    """The evaluation split's logits, labels, probabilities before/after scaling, per-sample NLL."""

    def __init__(self, logits: np.ndarray, y: np.ndarray, temperature: float, kind: str) -> None:
        self.logits, self.y, self.t, self.kind = logits, y, temperature, kind
        self.p = OUT.probabilities(logits, kind)
        self.p_ts = OUT.probabilities(logits, kind, temperature)
        self.nll = OUT.sample_nll(logits, y, kind)
        self.nll_ts = OUT.sample_nll(logits, y, kind, temperature)


def _split_keys(ids: np.ndarray, ctx: AuditContext) -> np.ndarray:
    """A uniform draw ``(N,)`` per sample keyed by (seed, sample id): the order of the split."""
    return np.array([ctx.rng("calibration", "split", str(sid)).random() for sid in ids], dtype=np.float64)


def _split(y: np.ndarray, fraction: float, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified positions ``(calibration, evaluation)`` ordered by per-sample ``keys``
    (:func:`robustkit.data.dataset.stratified_split`): independent of the samples' order."""
    return stratified_split(y, fraction, keys=keys)


def _scores(e: _EvalSet, idx: np.ndarray, cfg: CalibrationConfig, names: list[str],
            positive: int | None) -> dict[str, float]:
    """Every evaluation-split metric on the samples ``idx`` of the split."""
    y, b = e.y[idx], cfg.n_bins
    out: dict[str, float] = {}
    for suffix, p, loss in (("", e.p[idx], e.nll[idx]), ("_ts", e.p_ts[idx], e.nll_ts[idx])):
        out["ece" + suffix] = CM.ece(p, y, n_bins=b)
        out["ece_equal_mass" + suffix] = CM.ece_equal_mass(p, y, n_bins=b)
        out["mce" + suffix] = CM.mce(p, y, n_bins=b)
        out["classwise_ece" + suffix] = CM.classwise_ece(p, y, n_bins=b)
        out["classwise_ece_adaptive" + suffix] = CM.classwise_ece_adaptive(p, y, n_bins=b)
        out["debiased_l2_ce" + suffix] = CM.debiased_l2_ce(p, y, n_bins=b)
        out["brier" + suffix] = CM.brier(p, y)
        out["nll" + suffix] = float(np.mean(loss))
    pred = e.p_ts[idx].argmax(axis=1)
    conf, correct = e.p_ts[idx].max(axis=1), pred == y
    out["accuracy"] = float(np.mean(correct))
    out["aurc"] = CM.aurc(conf, correct)
    out["e_aurc"] = CM.e_aurc(conf, correct)
    for r in cfg.target_risks:
        cov, thr = CM.coverage_at_risk(conf, correct, r)
        out[f"coverage_at_risk.{_r(r)}"] = cov
        if positive is not None:
            out[f"sensitivity_at_risk.{names[positive]}.{_r(r)}"] = CM.selective_sensitivity(conf, y, pred, positive, thr)
    return out


def _intervals(e: _EvalSet, cfg: CalibrationConfig, names: list[str], positive: int | None,
               ctx: AuditContext) -> dict[str, list[float]]:
    """Stratified bootstrap 95% intervals over the evaluation split (T held fixed)."""
    if len(e.y) < 2:
        return {}
    keys = list(_scores(e, np.arange(len(e.y)), cfg, names, positive))

    def stat(idx: np.ndarray) -> np.ndarray:
        s = _scores(e, idx, cfg, names, positive)
        return np.array([s[k] for k in keys])

    lo, hi = M.bootstrap_interval(stat, len(e.y), n_boot=cfg.n_bootstrap,
                                  seed=ctx.seed_for("calibration", "bootstrap"), strata=e.y)
    return {k: [float(a), float(c)] for k, a, c in zip(keys, lo, hi) if np.isfinite(a) and np.isfinite(c)}


def _estimators(cfg: CalibrationConfig, metrics: dict[str, float]) -> dict[str, dict[str, Any]]:
    b = cfg.n_bins
    base = {
        "ece": ("top-label binned L1 |accuracy - confidence|", b, "equal_width", _GUO),
        "ece_equal_mass": ("top-label binned L1 |accuracy - confidence|", b, "equal_mass", _NIXON),
        "mce": ("top-label max over populated bins of |accuracy - confidence|", b, "equal_width", _GUO),
        "classwise_ece": ("static calibration error: per-class binned L1, mean over classes", b, "equal_width", _NIXON),
        "classwise_ece_adaptive": ("adaptive calibration error: per-class binned L1, mean over classes", b, "equal_mass", _NIXON),
        "debiased_l2_ce": ("top-label binned L2, per-bin variance subtracted, sqrt", b, "equal_mass", _KUMAR),
        "brier": ("mean over samples of sum_k (p_k - onehot_k)^2", None, "none", "Brier 1950"),
        "nll": ("mean -log softmax(logits / T)[label]; sigmoid heads: mean over samples of the "
                "one-vs-rest binary NLL summed over outputs", None, "none", _GUO),
        "aurc": ("mean risk over coverages k/N, confidence = scaled max probability", None, "none", _GEIFMAN),
        "e_aurc": ("AURC - AURC of the oracle ranking (exact finite-sample)", None, "none", _GEIFMAN),
    }
    out: dict[str, dict[str, Any]] = {}
    for name in metrics:
        root = name.split(".")[0]
        key = root[:-3] if root.endswith("_ts") else root
        if key in base:
            est, n, binning, ref = base[key]
            out[name] = {"estimator": est, "n_bins": n, "binning": binning, "reference": ref}
    return out


def _describe(result: StudyResult, info: dict[str, Any], cfg: CalibrationConfig, fit: CM.TemperatureFit,
              e: _EvalSet, names: list[str], positive: int | None, splits: tuple[np.ndarray, np.ndarray],
              y: np.ndarray) -> None:
    """Fill ``data`` and ``tables`` with what the report draws (``info``: the model's description)."""
    cal, ev = splits
    kind = str(info.get("output_kind", "softmax"))
    cal_counts = np.bincount(y[cal], minlength=len(names))
    ev_counts = np.bincount(y[ev], minlength=len(names))
    result.data.update(
        class_names=names,
        output_kind=kind,
        probability_form=OUT.link_formula(kind)
        + ("; top-label metrics use the arg-max and its sigmoid value, classwise ones each output one-vs-rest"
           if OUT.is_sigmoid(kind) else ""),
        positive_class=None if positive is None else names[positive],
        split={"n_calibration": int(len(cal)), "n_evaluation": int(len(ev)),
               "calibration_fraction": cfg.calibration_fraction,
               "per_class": {n: [int(a), int(b)] for n, a, b in zip(names, cal_counts, ev_counts)}},
        temperature_fit={"temperature": fit.temperature, "nll_before": fit.nll_before, "nll_after": fit.nll_after,
                         "grad_log_t": fit.grad_log_t, "at_bound": fit.at_bound, "n": fit.n},
        temperature_export={"temperature": fit.temperature, "applies_to": "logits",
                            "logits_source": info.get("logits_source", ""),
                            "output_kind": kind, "usage": OUT.link_formula(kind),
                            "fitted_by": ("one-vs-rest binary NLL" if OUT.is_sigmoid(kind) else "multiclass NLL"),
                            "model_name": info.get("name", ""), "model_fingerprint": info.get("fingerprint", ""),
                            "fitted_on": int(len(cal))},
        estimators=_estimators(cfg, result.metrics),
    )
    result.data["reliability"] = {
        "n_bins": cfg.n_bins, "binning": "equal_width",
        "before": CM.reliability_bins(e.p.max(1), e.p.argmax(1) == e.y, n_bins=cfg.n_bins),
        "after": CM.reliability_bins(e.p_ts.max(1), e.p_ts.argmax(1) == e.y, n_bins=cfg.n_bins),
    }
    result.data["classwise_reliability"] = {
        n: {"before": CM.reliability_bins(e.p[:, k], e.y == k, n_bins=cfg.n_bins),
            "after": CM.reliability_bins(e.p_ts[:, k], e.y == k, n_bins=cfg.n_bins)}
        for k, n in enumerate(names)
    }
    _selective(result, e, cfg, names, positive)


def _selective(result: StudyResult, e: _EvalSet, cfg: CalibrationConfig, names: list[str],
               positive: int | None) -> None:
    """Risk-coverage curve, operating points and the referral table (the critical class's
    sensitivity among kept cases where the audit names one)."""
    conf, pred = e.p_ts.max(axis=1), e.p_ts.argmax(axis=1)
    correct = pred == e.y
    cov, risk = CM.risk_coverage(conf, correct)
    _, best = CM.risk_coverage(correct.astype(float), correct)
    keep = np.unique(np.r_[np.linspace(0, len(cov) - 1, min(len(cov), 200)).astype(int), len(cov) - 1])
    result.data["risk_coverage"] = {"coverage": np.round(cov[keep], 5).tolist(),
                                    "risk": np.round(risk[keep], 5).tolist(),
                                    "optimal_risk": np.round(best[keep], 5).tolist()}
    points = []
    for r in cfg.target_risks:
        c, thr = CM.coverage_at_risk(conf, correct, r)
        point = {"target_risk": r, "coverage": c, "threshold": thr if np.isfinite(thr) else None}
        if positive is not None:
            point["sensitivity"] = CM.selective_sensitivity(conf, e.y, pred, positive, thr)
        points.append(point)
    result.data["operating_points"] = points
    rows = []
    for f in cfg.referral_fractions:
        ref = CM.referral(conf, e.y, pred, positive, f)
        row = {"referred": f"{100 * f:g}%", "n_referred": int(ref["n_referred"]), "n_kept": int(ref["n_kept"]),
               "error_of_rest": ref["error"]}
        if positive is not None:
            row[f"sensitivity_of_rest ({names[positive]})"] = ref["sensitivity"]
        rows.append({**row, "confidence_threshold": ref["threshold"]})
    result.tables["referral"] = rows


# ---------------------------------------------------------------- calibration under shift


def _shift_transforms(requested: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
    """The requested transforms that exist, and why none could run (or None)."""
    try:
        from robustkit.data import transforms
    except ImportError:
        return {}, "robustkit.data.transforms is not available in this installation"
    present = {t: transforms.get_transform(t) for t in requested if t in transforms.TRANSFORMS}
    if not present:
        return {}, f"none of {list(requested)} is a known transform (known: {sorted(transforms.TRANSFORMS)})"
    return present, None


def _conditions(fns: dict[str, Any], severities: tuple[int, ...]) -> list[tuple[str, int]]:
    """The shift conditions ``(transform, severity)`` in record order."""
    return [(t, s) for t in fns for s in severities]


def _shift_logits(model: ModelAdapter, batch: Dataset, fns: dict[str, Any], conds: list[tuple[str, int]],
                  ctx: AuditContext) -> np.ndarray:
    """Logits ``(B, n_conditions, K)`` of ``batch``'s images under every (transform, severity);
    each image is loaded once and transformed on its own, with a generator keyed by
    (seed, study, transform, severity, sample id)."""
    out = np.zeros((len(batch), len(conds), model.num_classes), dtype=np.float32)
    if not conds or len(batch) == 0:
        return out
    h, w, c = model.input_shape
    x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
    for j, (t, s) in enumerate(conds):
        xs = np.concatenate([
            np.asarray(fns[t](x[i:i + 1], s, rng=ctx.rng("calibration", "shift", t, s, str(sid))), dtype=np.float32)
            for i, sid in enumerate(batch.ids)
        ])
        out[:, j] = model.logits(np.clip(xs, 0.0, 1.0))
    return out


def _shift(result: StudyResult, shift: np.ndarray, e: _EvalSet, cfg: CalibrationConfig) -> list[Check]:
    """Calibration under shift from the evaluation split's logits ``shift`` ``(n_ev, n_conditions, K)``."""
    fns, why = _shift_transforms(cfg.shift_transforms)
    if why is not None or not cfg.shift_severities:
        why = why or "no shift severities configured"
        result.data["shift"] = {"skipped": why, "transforms": {}}
        return [Check("calibration under shift", "warn", f"not measured: {why}.")]
    column = {cond: j for j, cond in enumerate(_conditions(fns, cfg.shift_severities))}
    curves: dict[str, dict[str, list[float]]] = {}
    rows = []
    clean = _shift_point(e.logits, e.y, e.t, cfg.n_bins, e.kind)
    for t in fns:
        curve = {k: [v] for k, v in clean.items()} | {"severity": [0]}
        for s in cfg.shift_severities:
            point = _shift_point(shift[:, column[(t, s)]], e.y, e.t, cfg.n_bins, e.kind)
            for k in ("ece", "ece_ts", "brier", "brier_ts", "accuracy"):
                result.metrics[f"{k}.{t}.{s}"] = point[k]
            for k, v in point.items():
                curve[k].append(v)
            curve["severity"].append(s)
            rows.append({"transform": t, "severity": s} | point)
        curves[t] = curve
    missing = [t for t in cfg.shift_transforms if t not in fns]
    result.data["shift"] = {"skipped": None, "missing": missing, "transforms": curves}
    result.tables["shift"] = rows
    return _overconfidence_check(rows, cfg.overconfidence_gap, missing)


def _shift_point(logits: np.ndarray, y: np.ndarray, t: float, n_bins: int, kind: str) -> dict[str, float]:
    p, p_ts = OUT.probabilities(logits, kind), OUT.probabilities(logits, kind, t)
    acc = float(np.mean(p.argmax(axis=1) == y))
    return {"accuracy": acc, "ece": CM.ece(p, y, n_bins=n_bins), "ece_ts": CM.ece(p_ts, y, n_bins=n_bins),
            "brier": CM.brier(p, y), "brier_ts": CM.brier(p_ts, y),
            "overconfidence": float(np.mean(p.max(axis=1))) - acc,
            "overconfidence_ts": float(np.mean(p_ts.max(axis=1))) - acc}


def _overconfidence_check(rows: list[dict[str, Any]], gap: float, missing: list[str]) -> list[Check]:
    def where(key: str) -> str:
        bad = [f"{r['transform']} {r['severity']} ({r[key]:+.2f})" for r in rows if r[key] > gap]
        return "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")

    after, before = where("overconfidence_ts"), where("overconfidence")
    note = f" Not measured (unknown transform): {', '.join(missing)}." if missing else ""
    if not after and not before:
        return [Check("over-confidence under shift", "pass",
                      f"mean confidence exceeds accuracy by at most {gap:g} at every shift measured.{note}")]
    parts = []
    if after:
        parts.append(f"after temperature scaling at {after} (the temperature fitted on clean images does not hold there)")
    if before:
        parts.append(f"without scaling at {before}")
    return [Check("over-confidence under shift", "warn",
                  f"mean confidence exceeds accuracy by more than {gap:g} {'; '.join(parts)}.{note}")]


# ---------------------------------------------------------------- checks and records


def _checks(result: StudyResult, fit: CM.TemperatureFit, cfg: CalibrationConfig, n_cal_errors: int) -> list[Check]:
    return [optimiser_check(fit, n_cal_errors), _interval_check(result, cfg), _scaling_check(result)]


def _interval_check(result: StudyResult, cfg: CalibrationConfig) -> Check:
    iv = result.intervals.get("ece")
    width = iv[1] - iv[0] if iv else float("nan")
    counts = [c for c in result.data["reliability"]["before"]["count"] if c > 0]
    per_bin = float(np.mean(counts)) if counts else 0.0
    detail = f"ECE 95% interval width {width:.3f}; {per_bin:.1f} samples per populated bin ({len(counts)} bins)."
    if not np.isfinite(width) or width > cfg.max_interval_width or per_bin < cfg.min_per_bin:
        return Check("ECE precision", "warn", detail + " Too few samples to conclude much about calibration; "
                     "read the reliability diagram's intervals.")
    return Check("ECE precision", "pass", detail)


def _scaling_check(result: StudyResult) -> Check:
    m = result.metrics
    worse = [k for k in ("nll", "ece") if m[k + "_ts"] > m[k] + 1e-9]
    detail = (f"evaluation split: NLL {m['nll']:.4f} -> {m['nll_ts']:.4f}, "
              f"ECE {m['ece']:.4f} -> {m['ece_ts']:.4f} (T = {m['temperature']:.3g}).")
    if worse:
        return Check("temperature scaling helps", "warn",
                     f"scaling made {' and '.join(worse).upper()} worse on the held-out split; {detail}")
    return Check("temperature scaling helps", "pass", detail)


def _records(result: StudyResult, logits: np.ndarray, y: np.ndarray, t: float, cal: np.ndarray, kind: str) -> None:
    p, p_ts = OUT.probabilities(logits, kind), OUT.probabilities(logits, kind, t)
    split = np.ones(len(y), dtype=np.int8)
    split[cal] = 0
    result.records.update(
        confidence=p.max(axis=1).astype(np.float32),
        confidence_ts=p_ts.max(axis=1).astype(np.float32),
        pred=p.argmax(axis=1).astype(np.int16),
        correct=(p.argmax(axis=1) == y)[:, None],
        split=split,
        probs=p.astype(np.float32),
        probs_ts=p_ts.astype(np.float32),
    )
    result.data["correct_metrics"] = ["accuracy_all"]
