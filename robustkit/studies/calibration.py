"""Study ``calibration``: can the confidence be trusted, can it be fixed, does the fix hold
under shift, and how many cases must be referred for the rest to be safe.

The study's samples are split (seeded, stratified) into a *calibration* split, on which a
temperature is fitted by minimising the NLL (Guo et al. 2017), and a disjoint *evaluation*
split, on which every reported metric is computed, before (no suffix) and after (``_ts``)
scaling. Logits come from the audit's shared clean pass (no extra model pass); a
softmax-ended model is scaled on the logits before its softmax, a sigmoid-ended one on the
logits before its sigmoid (one scalar T fitted by the one-vs-rest binary NLL;
:mod:`robustkit.metrics.temperature`).

One path for every task (single-label is multi-label with one-hot targets): the targets
``(N, K)`` (``Dataset.targets``) give, for every kind, the per-output block: ECE per output
in the binary reliability form (equal-width bins of ``p[:, k]`` against ``t[:, k]``) and
Brier per output, their macro means (``ece.<output>``, ``ece.macro``, ``brier.*``), the
prevalence and the NLL, before and after scaling. What exists only for an exclusive task (one
label per image: ``ctx.task.exclusive``) is a block of the same reduce: the top-label and
classwise estimators (ECE, MCE, the multi-class Brier ...), selective prediction with the
scaled max probability as confidence (:mod:`robustkit.metrics.selective`) and calibration
under shift (Ovadia et al. 2019: :mod:`robustkit.data.transforms` on the evaluation images at
several severities). For a multi-label task ``map`` runs no shift pass and a check says what
was not measured. The estimators live in :mod:`robustkit.metrics.calibration`.

Protocol: ``prepare`` (on the driver, before any ``map``) makes the calibration/evaluation
split, each class ordered by a draw keyed by (seed, sample id), so that it depends on the
seed and the samples only. ``map`` computes, per sample, the clean logits and, for the
evaluation samples, the logits under every shift condition (a random transform draws from
``ctx.rng("calibration", "shift", transform, severity, sample id)``); calibration samples
get NaN there, with no model pass. ``reduce`` fits the temperature on the calibration
split and computes every metric, interval, table and check. The split is stratified by
``Dataset.labels`` (a multi-label sample's first finding).

Intervals: percentile bootstrap 95% intervals over the evaluation split, T held fixed, drawn
as resampled counts (:func:`robustkit.metrics.resampling.bootstrap_weights`, stratified by the
labels, blocks of 64 resamples) shared by every metric. Each metric is computed from the counts
for a whole block at once (:class:`~robustkit.studies.calibration_scores.Resampled`): the
fixed-bin ones (equal-width ECE, MCE, classwise ECE, Brier, NLL, accuracy) as weighted bin sums,
the sort-based ones (equal-mass ECE, adaptive classwise ECE, debiased L2, AURC, E-AURC, coverage
and sensitivity at risk) from one sort of the split and cumulative counts. On a given resample
they equal :func:`~robustkit.studies.calibration_scores.scores` of the drawn rows up to float rounding (up to the order of exactly tied confidences, which the index
version breaks by draw position); against the index bootstrap this replaced, the intervals agree
within Monte Carlo error, not exactly (``tests/test_calibration_resampling.py`` checks both).
The point metrics are :func:`~robustkit.studies.calibration_scores.scores` of the split itself,
as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.dataset import stratified_split
from robustkit.errors import DataError, ModelError, check_range, param_error
from robustkit.metrics import calibration as CM
from robustkit.metrics import outputs as OUT
from robustkit.metrics import selective as SEL
from robustkit.metrics.temperature import TemperatureFit, fit_temperature
from robustkit.results import Check, StudyResult
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Records, Study, StudyConfig
from robustkit.studies.calibration_scores import EvalSet, intervals, scores
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
_FORM = ("per output, binary reliability form: equal-width bins of the output's probability against its "
         "presence; macro = mean over outputs")
_NOT_MEASURED = ("not measured for multi-label models: top-label ECE, selective prediction and calibration "
                 "under shift assume one class per image")
_HEADLINE_PER_OUTPUT = ("ece.macro", "ece_ts.macro", "brier.macro", "temperature")
#: what the shared metric roots mean in a multi-label result (results.json ``data.metric_docs``)
_PER_OUTPUT_DOCS = {
    "ece": "multi-label: per finding (ece.<finding>) and macro (ece.macro), equal-width binned L1 of the "
           "finding's probability against its presence",
    "ece_ts": "multi-label: ece.<finding> and ece.macro after temperature scaling",
    "brier": "multi-label: per finding, mean (p - presence)^2 in [0, 1], and the macro mean",
    "brier_ts": "multi-label: brier.<finding> and brier.macro after temperature scaling",
    "nll": "multi-label: mean over images of the binary NLL summed over findings",
    "nll_ts": "multi-label: nll after temperature scaling",
    "prevalence": "multi-label: share of evaluation images with the finding",
    "temperature": "fitted temperature T: probabilities are sigmoid(logits / T), one scalar for every finding",
    "n_calibration": "samples the temperature was fitted on",
    "n_evaluation": "samples every metric is computed on",
}
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
        "ece.macro": ("ECE per output (ece.{output}; equal-width bins of the output's probability against "
                      "its presence, the binary reliability form, for every task kind) and its mean over "
                      "outputs; ece_ts.{output}, ece_ts.macro after temperature scaling", "lower"),
        "brier.macro": ("Brier score per output (brier.{output}, mean (p - presence)^2 in [0, 1]) and its mean "
                        "over outputs; brier_ts.* after temperature scaling", "lower"),
        "prevalence": ("per output, the share of evaluation images with it (a constant prediction of it has "
                       "Brier prevalence * (1 - prevalence))", "none"),
    }
    headline = ("ece", "ece_ts", "temperature", "aurc", "coverage_at_risk.0.05")
    multilabel = True

    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """The calibration/evaluation split of the study's samples (ids of the evaluation side)."""
        y = np.asarray(data.labels, dtype=np.int64)
        _, ev = _split(y, self.config.calibration_fraction, _split_keys(data.ids, ctx))
        self._evaluation = frozenset(str(i) for i in np.asarray(data.ids)[ev])

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> Records:
        """Clean logits ``(B, K)`` (the audit's shared clean pass) and, for an exclusive task,
        logits under every shift condition ``(B, n_conditions, K)`` for the evaluation samples
        (NaN for calibration ones, which are not shifted), each image's draws keyed by its
        sample id."""
        logits = ctx.clean_logits(model, batch)
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"{model.name}: expected finite logits on the clean data, got NaN or inf.")
        fns, _ = _shift_transforms(self.config.shift_transforms)
        conds = _conditions(fns, self.config.shift_severities) if _exclusive(ctx, model.output_kind) else []
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
        targets = np.asarray(data.targets, dtype=bool)
        cal, ev = _split(y, cfg.calibration_fraction, _split_keys(data.ids, ctx))
        if len(cal) == 0 or len(ev) == 0:
            raise DataError(f"{data.root}: expected at least 2 images for a calibration and an evaluation split, got {len(y)}.")
        kind = str(ctx.model_info.get("output_kind", "softmax"))
        exclusive = _exclusive(ctx, kind)
        fit = fit_temperature(logits[cal], targets[cal], kind)
        positive = ctx.critical_index if exclusive else None  # sensitivity among kept cases is the critical class's
        e = EvalSet(logits[ev], targets[ev], y[ev], fit.temperature, kind)
        result = StudyResult(name=self.name)
        result.metrics = scores(e, np.arange(len(ev)), cfg, names, positive, exclusive)
        result.metrics.update({f"prevalence.{n}": float(v) for n, v in zip(names, targets[ev].mean(axis=0))})
        result.metrics.update(temperature=fit.temperature, n_calibration=float(len(cal)), n_evaluation=float(len(ev)))
        if exclusive:
            result.metrics["accuracy_all"] = float(np.mean(logits.argmax(axis=1) == y))
        result.intervals = intervals(e, cfg, names, positive, exclusive, ctx)
        _describe(result, ctx.model_info, cfg, fit, e, names, (cal, ev), targets, positive, exclusive)
        n_wrong = _n_wrong(logits[cal], targets[cal], exclusive)
        result.data["temperature_export"]["identifiable"] = n_wrong > 0  # else T is only a bound
        result.checks = [_optimiser_check(fit, n_wrong),
                         _interval_check(result, cfg) if exclusive else _output_precision_check(result, cfg),
                         _scaling_check(result, exclusive)]
        if exclusive:
            _selective(result, e, cfg, names, positive)
            result.checks += _shift(result, np.asarray(records["shift_logits"], dtype=np.float64)[ev], e, cfg)
            if positive is None:
                result.checks.append(critical_missing_check("the sensitivity among kept cases"))
        else:
            result.checks.append(Check("top-label and shift calibration", "warn", _NOT_MEASURED + "."))
        _records(result, logits, targets, fit.temperature, cal, kind, exclusive)
        return result


def _exclusive(ctx: AuditContext, kind: str) -> bool:
    """Whether the task has one label per image (the audit's task; outside an audit, the output kind)."""
    return ctx.exclusive if ctx.task is not None or "output_kind" in ctx.model_info else kind != "multilabel"


def _split_keys(ids: np.ndarray, ctx: AuditContext) -> np.ndarray:
    """A uniform draw ``(N,)`` per sample keyed by (seed, sample id): the order of the split."""
    return np.array([ctx.rng("calibration", "split", str(sid)).random() for sid in ids], dtype=np.float64)


def _split(y: np.ndarray, fraction: float, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified positions ``(calibration, evaluation)`` ordered by per-sample ``keys``
    (:func:`robustkit.data.dataset.stratified_split`): independent of the samples' order."""
    return stratified_split(y, fraction, keys=keys)


def _n_wrong(logits: np.ndarray, targets: np.ndarray, exclusive: bool) -> int:
    """Calibration-split errors that make T identifiable: wrong arg-max calls of an exclusive
    task, wrong signs of a multi-label task's logits (each output's binary NLL)."""
    if exclusive:
        return int(np.sum(logits.argmax(axis=1) != OUT.class_indices(targets)))
    return int(np.sum((logits > 0) != targets))


# ---------------------------------------------------------------- what the report draws


def _estimators(cfg: CalibrationConfig, metrics: dict[str, float], names: list[str],
                exclusive: bool) -> dict[str, dict[str, Any]]:
    """How each metric is estimated: the per-output block for every task, the top-label and
    selective estimators of an exclusive task (its ``nll`` is the multiclass one)."""
    b = cfg.n_bins
    out: dict[str, dict[str, Any]] = {
        "ece.<output>": {"estimator": "per output: binned L1 |presence frequency - mean probability|; macro: mean "
                                      "over outputs", "n_bins": b, "binning": "equal_width", "reference": _NIXON},
        "brier.<output>": {"estimator": "per output: mean over images of (p - presence)^2; macro: mean over outputs",
                           "n_bins": None, "binning": "none", "reference": "Brier 1950"},
    }
    if not exclusive:
        out["nll"] = {"estimator": "mean over images of the binary NLL summed over findings", "n_bins": None,
                      "binning": "none", "reference": _GUO}
        return out
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
    per_output = {f"{root}.{n}" for root in ("ece", "ece_ts", "brier", "brier_ts") for n in [*names, "macro"]}
    for name in metrics:
        root = name.split(".")[0]
        key = root[:-3] if root.endswith("_ts") else root
        if key in base and name not in per_output:
            est, n, binning, ref = base[key]
            out[name] = {"estimator": est, "n_bins": n, "binning": binning, "reference": ref}
    return out


def _fitted_by(kind: str, exclusive: bool) -> str:
    if not OUT.is_sigmoid(kind):
        return "multiclass NLL"
    return "one-vs-rest binary NLL" if exclusive else "binary NLL summed over findings"


def _describe(result: StudyResult, info: dict[str, Any], cfg: CalibrationConfig, fit: TemperatureFit,
              e: EvalSet, names: list[str], splits: tuple[np.ndarray, np.ndarray], targets: np.ndarray,
              positive: int | None, exclusive: bool) -> None:
    """Fill ``data`` and ``tables`` with what the report draws (``info``: the model's description)."""
    cal, ev = splits
    kind = str(info.get("output_kind", "softmax"))
    m, b = result.metrics, cfg.n_bins
    result.data.update(
        class_names=names,
        multilabel=not exclusive,
        output_kind=kind,
        probability_form=OUT.link_formula(kind)
        + ("; top-label metrics use the arg-max and its sigmoid value, classwise ones each output one-vs-rest"
           if exclusive and OUT.is_sigmoid(kind) else ""),
        calibration_form=_FORM,
        temperature_form=f"one scalar T on the logits, fitted by the {_fitted_by(kind, exclusive)}",
        split={"n_calibration": int(len(cal)), "n_evaluation": int(len(ev)),
               "calibration_fraction": cfg.calibration_fraction,
               "per_output": {n: [int(a), int(c)] for n, a, c in zip(names, targets[cal].sum(0), targets[ev].sum(0))}},
        temperature_fit={"temperature": fit.temperature, "nll_before": fit.nll_before, "nll_after": fit.nll_after,
                         "grad_log_t": fit.grad_log_t, "at_bound": fit.at_bound, "n": fit.n},
        temperature_export={"temperature": fit.temperature, "applies_to": "logits",
                            "logits_source": info.get("logits_source", ""),
                            "output_kind": kind, "usage": OUT.link_formula(kind),
                            "fitted_by": _fitted_by(kind, exclusive),
                            "model_name": info.get("name", ""), "model_fingerprint": info.get("fingerprint", ""),
                            "fitted_on": int(len(cal))},
        estimators=_estimators(cfg, m, names, exclusive),
        output_reliability={n: {"before": CM.reliability_bins(e.p[:, k], e.t[:, k], n_bins=b),
                                "after": CM.reliability_bins(e.p_ts[:, k], e.t[:, k], n_bins=b)}
                            for k, n in enumerate(names)},
    )
    result.tables["per_output"] = [
        {"output": n, "positives": int(e.t[:, k].sum()), "prevalence": m[f"prevalence.{n}"],
         "ece": m[f"ece.{n}"], "ece_ts": m[f"ece_ts.{n}"], "brier": m[f"brier.{n}"], "brier_ts": m[f"brier_ts.{n}"]}
        for k, n in enumerate(names)
    ]
    if not exclusive:
        result.data.update(not_measured=_NOT_MEASURED, metric_docs=dict(_PER_OUTPUT_DOCS),
                           headline=[h for h in _HEADLINE_PER_OUTPUT if h in m])
        return
    result.data["positive_class"] = None if positive is None else names[positive]
    result.data["reliability"] = {
        "n_bins": b, "binning": "equal_width",
        "before": CM.reliability_bins(e.p.max(1), e.p.argmax(1) == e.y, n_bins=b),
        "after": CM.reliability_bins(e.p_ts.max(1), e.p_ts.argmax(1) == e.y, n_bins=b),
    }


def _selective(result: StudyResult, e: EvalSet, cfg: CalibrationConfig, names: list[str],
               positive: int | None) -> None:
    """Risk-coverage curve, operating points and the referral table (the critical class's
    sensitivity among kept cases where the audit names one)."""
    conf, pred = e.p_ts.max(axis=1), e.p_ts.argmax(axis=1)
    correct = pred == e.y
    cov, risk = SEL.risk_coverage(conf, correct)
    _, best = SEL.risk_coverage(correct.astype(float), correct)
    keep = np.unique(np.r_[np.linspace(0, len(cov) - 1, min(len(cov), 200)).astype(int), len(cov) - 1])
    result.data["risk_coverage"] = {"coverage": np.round(cov[keep], 5).tolist(),
                                    "risk": np.round(risk[keep], 5).tolist(),
                                    "optimal_risk": np.round(best[keep], 5).tolist()}
    points = []
    for r in cfg.target_risks:
        c, thr = SEL.coverage_at_risk(conf, correct, r)
        point = {"target_risk": r, "coverage": c, "threshold": thr if np.isfinite(thr) else None}
        if positive is not None:
            point["sensitivity"] = SEL.selective_sensitivity(conf, e.y, pred, positive, thr)
        points.append(point)
    result.data["operating_points"] = points
    rows = []
    for f in cfg.referral_fractions:
        ref = SEL.referral(conf, e.y, pred, positive, f)
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


def _shift(result: StudyResult, shift: np.ndarray, e: EvalSet, cfg: CalibrationConfig) -> list[Check]:
    """Calibration under shift from the evaluation split's logits ``shift`` ``(n_ev, n_conditions, K)``."""
    fns, why = _shift_transforms(cfg.shift_transforms)
    if why is not None or not cfg.shift_severities:
        why = why or "no shift severities configured"
        result.data["shift"] = {"skipped": why, "transforms": {}}
        return [Check("calibration under shift", "warn", f"not measured: {why}.")]
    column = {cond: j for j, cond in enumerate(_conditions(fns, cfg.shift_severities))}
    curves: dict[str, dict[str, list[float]]] = {}
    rows = []
    clean = _shift_point(e.logits, e.y, e.temperature, cfg.n_bins, e.kind)
    for t in fns:
        curve = {k: [v] for k, v in clean.items()} | {"severity": [0]}
        for s in cfg.shift_severities:
            point = _shift_point(shift[:, column[(t, s)]], e.y, e.temperature, cfg.n_bins, e.kind)
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


def _optimiser_check(fit: TemperatureFit, n_wrong: int) -> Check:
    """Whether the temperature fit reached an interior minimum (``n_wrong``: the calibration
    split's errors, without which the NLL keeps falling as T shrinks)."""
    t, g = fit.temperature, fit.grad_log_t
    if n_wrong == 0:
        return Check("temperature fit", "warn",
                     f"T = {t:.4g}, but every one of the {fit.n} calibration images is classified correctly: "
                     "the NLL keeps falling as T shrinks, so T is not identifiable; use a larger or harder split.")
    if abs(g) < 1e-4 and not fit.at_bound and 0.05 <= t <= 20:
        return Check("temperature fit", "pass", f"T = {t:.4g}; |dNLL/dlogT| = {abs(g):.1e} at the optimum.")
    return Check("temperature fit", "fail",
                 f"T = {t:.4g} (sane range 0.05-20), |dNLL/dlogT| = {abs(g):.1e}, at a search bound: {fit.at_bound}; "
                 "the optimiser did not reach an interior minimum.")


def _interval_check(result: StudyResult, cfg: CalibrationConfig) -> Check:
    """ECE precision of an exclusive task: the top-label ECE's interval and bin counts."""
    iv = result.intervals.get("ece")
    width = iv[1] - iv[0] if iv else float("nan")
    counts = [c for c in result.data["reliability"]["before"]["count"] if c > 0]
    per_bin = float(np.mean(counts)) if counts else 0.0
    detail = f"ECE 95% interval width {width:.3f}; {per_bin:.1f} samples per populated bin ({len(counts)} bins)."
    if not np.isfinite(width) or width > cfg.max_interval_width or per_bin < cfg.min_per_bin:
        return Check("ECE precision", "warn", detail + " Too few samples to conclude much about calibration; "
                     "read the reliability diagram's intervals.")
    return Check("ECE precision", "pass", detail)


def _output_precision_check(result: StudyResult, cfg: CalibrationConfig) -> Check:
    """ECE precision of a multi-label task: the widest per-output ECE interval and bin counts."""
    widths = {n: iv[1] - iv[0] for n, iv in result.intervals.items() if n.startswith("ece.") and n != "ece.macro"}
    counts = [c for rel in result.data["output_reliability"].values() for c in rel["before"]["count"] if c > 0]
    per_bin = float(np.mean(counts)) if counts else 0.0
    widest = max(widths.values(), default=float("nan"))
    detail = f"widest per-finding ECE 95% interval {widest:.3f}; {per_bin:.1f} images per populated bin."
    if not np.isfinite(widest) or widest > cfg.max_interval_width or per_bin < cfg.min_per_bin:
        return Check("ECE precision", "warn", detail + " Too few images to conclude much about calibration per "
                     "finding; read the reliability diagrams' intervals.")
    return Check("ECE precision", "pass", detail)


def _scaling_check(result: StudyResult, exclusive: bool) -> Check:
    """Whether scaling lowered the NLL and the ECE (top-label for an exclusive task, macro per
    output otherwise) on the held-out split."""
    m = result.metrics
    label, before, after = ("ECE", "ece", "ece_ts") if exclusive else ("macro ECE", "ece.macro", "ece_ts.macro")
    worse = [name for name, b, a in (("NLL", "nll", "nll_ts"), (label, before, after)) if m[a] > m[b] + 1e-9]
    detail = (f"evaluation split: NLL {m['nll']:.4f} -> {m['nll_ts']:.4f}, "
              f"{label} {m[before]:.4f} -> {m[after]:.4f} (T = {m['temperature']:.3g}).")
    if worse:
        return Check("temperature scaling helps", "warn",
                     f"scaling made {' and '.join(worse)} worse on the held-out split; {detail}")
    return Check("temperature scaling helps", "pass", detail)


def _records(result: StudyResult, logits: np.ndarray, targets: np.ndarray, t: float, cal: np.ndarray, kind: str,
             exclusive: bool) -> None:
    """Per-sample probabilities and split for every task; confidence and correctness of the
    arg-max for an exclusive one (compare's paired ECE and accuracy read them)."""
    p, p_ts = OUT.probabilities(logits, kind), OUT.probabilities(logits, kind, t)
    split = np.ones(len(logits), dtype=np.int8)
    split[cal] = 0
    result.records.update(split=split, probs=p.astype(np.float32), probs_ts=p_ts.astype(np.float32))
    result.data["correct_metrics"] = ["accuracy_all"] if exclusive else []
    if exclusive:
        result.records.update(
            confidence=p.max(axis=1).astype(np.float32),
            confidence_ts=p_ts.max(axis=1).astype(np.float32),
            pred=p.argmax(axis=1).astype(np.int16),
            correct=(p.argmax(axis=1) == OUT.class_indices(targets))[:, None],
        )
