"""The calibration study's multi-label branch: calibration per finding.

A multi-label model gives every finding its own probability, so calibration is read per
finding in the binary reliability form: the images are put in equal-width bins of the
finding's probability and, in each bin, the share of images that have the finding is set
against the mean probability (:func:`robustkit.metrics.multilabel.per_finding_ece`). The
Brier score of each finding is ``mean_i (p_ik - t_ik)^2``; ``.macro`` is the mean over
findings. One temperature T scales every finding's pre-sigmoid logit; it is fitted on the
calibration split by the binary NLL summed over findings
(:func:`robustkit.metrics.outputs.fit_temperature` with the ``(N, K)`` targets), and every
number is read on the disjoint evaluation split, before (no suffix) and after (``_ts``)
scaling. The top-label forms, the risk-coverage curve and calibration under shift assume one
class per image and are not measured here (a check says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.metrics import calibration as CM
from robustkit.metrics import classification as M
from robustkit.metrics import multilabel as ML
from robustkit.metrics import outputs as OUT
from robustkit.results import Check, StudyResult

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.studies.base import AuditContext, Records
    from robustkit.studies.calibration import CalibrationConfig

__all__ = ["FINDING_DOCS", "optimiser_check", "reduce_findings"]

_FORM = ("per finding, binary reliability form: equal-width bins of the finding's probability "
         "sigmoid(logit / T) against its presence; macro = mean over findings")
_FIT = "one scalar T on the pre-sigmoid logits, fitted by the binary NLL summed over findings"
_NOT_MEASURED = ("not measured for multi-label models: top-label ECE, selective prediction and calibration "
                 "under shift assume one class per image")

#: what the shared metric roots mean in a multi-label result (results.json ``data.metric_docs``)
FINDING_DOCS = {
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


def _scores(t: np.ndarray, z: np.ndarray, temperature: float, names: list[str], n_bins: int) -> dict[str, float]:
    """Every per-finding and macro score of findings ``t`` ``(n, K)`` and logits ``z`` ``(n, K)``."""
    out: dict[str, float] = {}
    for suffix, temp in (("", 1.0), ("_ts", temperature)):
        p = OUT.probabilities(z, "multilabel", temp)
        for root, values in (("ece", ML.per_finding_ece(t, p, n_bins=n_bins)),
                             ("brier", ML.per_finding_brier(t, p))):
            out.update({f"{root}{suffix}.{n}": float(v) for n, v in zip(names, values)})
            finite = values[np.isfinite(values)]
            out[f"{root}{suffix}.macro"] = float(finite.mean()) if finite.size else float("nan")
        out[f"nll{suffix}"] = float(np.mean(OUT.sample_nll(z, t, "multilabel", temp))) if len(t) else float("nan")
    return out


def reduce_findings(records: Records, data: Dataset, ctx: AuditContext, cfg: CalibrationConfig,
                    splits: tuple[np.ndarray, np.ndarray]) -> StudyResult:
    """The multi-label calibration result from the clean logits ``(N, K)`` and the split."""
    cal, ev = splits
    names = list(data.class_names)
    z = np.asarray(records["logits"], dtype=np.float64)
    t = np.asarray(data.targets, dtype=bool)
    fit = OUT.fit_temperature(z[cal], t[cal], "multilabel")
    result = StudyResult(name="calibration")
    result.metrics = _scores(t[ev], z[ev], fit.temperature, names, cfg.n_bins)
    result.metrics.update({f"prevalence.{n}": float(v) for n, v in zip(names, t[ev].mean(axis=0))})
    result.metrics.update(temperature=fit.temperature, n_calibration=float(len(cal)), n_evaluation=float(len(ev)))
    result.intervals = _intervals(t[ev], z[ev], fit.temperature, names, cfg, ctx, np.asarray(data.labels)[ev])
    _describe(result, ctx.model_info, cfg, fit, t, z, names, splits)
    n_wrong = int(np.sum((z[cal] > 0) != t[cal]))
    result.data["temperature_export"]["identifiable"] = n_wrong > 0
    result.checks = _checks(result, fit, cfg, n_wrong)
    p, p_ts = OUT.probabilities(z, "multilabel"), OUT.probabilities(z, "multilabel", fit.temperature)
    split = np.ones(len(z), dtype=np.int8)
    split[cal] = 0
    result.records.update(probs=p.astype(np.float32), probs_ts=p_ts.astype(np.float32), split=split)
    return result


def _intervals(t: np.ndarray, z: np.ndarray, temperature: float, names: list[str], cfg: CalibrationConfig,
               ctx: AuditContext, strata: np.ndarray) -> dict[str, list[float]]:
    """Stratified bootstrap 95% intervals over the evaluation split (T held fixed)."""
    if len(t) < 2:
        return {}
    keys = list(_scores(t, z, temperature, names, cfg.n_bins))

    def stat(idx: np.ndarray) -> np.ndarray:
        s = _scores(t[idx], z[idx], temperature, names, cfg.n_bins)
        return np.array([s[k] for k in keys])

    lo, hi = M.bootstrap_interval(stat, len(t), n_boot=cfg.n_bootstrap,
                                  seed=ctx.seed_for("calibration", "bootstrap"), strata=strata)
    return {k: [float(a), float(c)] for k, a, c in zip(keys, lo, hi) if np.isfinite(a) and np.isfinite(c)}


def _describe(result: StudyResult, info: dict[str, Any], cfg: CalibrationConfig, fit: CM.TemperatureFit,
              t: np.ndarray, z: np.ndarray, names: list[str], splits: tuple[np.ndarray, np.ndarray]) -> None:
    """Fill ``data`` and ``tables`` with what the report draws (``info``: the model's description)."""
    cal, ev = splits
    m = result.metrics
    p, p_ts = OUT.probabilities(z[ev], "multilabel"), OUT.probabilities(z[ev], "multilabel", fit.temperature)
    result.data.update(
        class_names=names, multilabel=True, output_kind="multilabel",
        probability_form=OUT.link_formula("multilabel"), calibration_form=_FORM, temperature_form=_FIT,
        not_measured=_NOT_MEASURED, metric_docs=dict(FINDING_DOCS),
        headline=[h for h in ("ece.macro", "ece_ts.macro", "brier.macro", "temperature") if h in m],
        split={"n_calibration": int(len(cal)), "n_evaluation": int(len(ev)),
               "calibration_fraction": cfg.calibration_fraction,
               "per_finding": {n: [int(a), int(b)] for n, a, b in zip(names, t[cal].sum(0), t[ev].sum(0))}},
        temperature_fit={"temperature": fit.temperature, "nll_before": fit.nll_before, "nll_after": fit.nll_after,
                         "grad_log_t": fit.grad_log_t, "at_bound": fit.at_bound, "n": fit.n},
        temperature_export={"temperature": fit.temperature, "applies_to": "logits",
                            "logits_source": info.get("logits_source", ""), "output_kind": "multilabel",
                            "usage": OUT.link_formula("multilabel"), "fitted_by": "binary NLL summed over findings",
                            "model_name": info.get("name", ""), "model_fingerprint": info.get("fingerprint", ""),
                            "fitted_on": int(len(cal))},
        estimators=_estimators(cfg.n_bins),
        finding_reliability={n: {"before": CM.reliability_bins(p[:, k], t[ev, k], n_bins=cfg.n_bins),
                                 "after": CM.reliability_bins(p_ts[:, k], t[ev, k], n_bins=cfg.n_bins)}
                             for k, n in enumerate(names)},
        correct_metrics=[],
    )
    result.tables["per_finding"] = [
        {"finding": n, "positives": int(t[ev, k].sum()), "prevalence": m[f"prevalence.{n}"],
         "ece": m[f"ece.{n}"], "ece_ts": m[f"ece_ts.{n}"], "brier": m[f"brier.{n}"], "brier_ts": m[f"brier_ts.{n}"]}
        for k, n in enumerate(names)
    ]


def _estimators(n_bins: int) -> dict[str, dict[str, Any]]:
    nixon = "Nixon et al. 2019, Measuring calibration in deep learning"
    return {
        "ece": {"estimator": "per finding: binned L1 |presence frequency - mean probability|; macro: mean over "
                             "findings", "n_bins": n_bins, "binning": "equal_width", "reference": nixon},
        "brier": {"estimator": "per finding: mean over images of (p - presence)^2; macro: mean over findings",
                  "n_bins": None, "binning": "none", "reference": "Brier 1950"},
        "nll": {"estimator": "mean over images of the binary NLL summed over findings", "n_bins": None,
                "binning": "none", "reference": "Guo et al. 2017, On calibration of modern neural networks"},
    }


def _checks(result: StudyResult, fit: CM.TemperatureFit, cfg: CalibrationConfig, n_wrong: int) -> list[Check]:
    m = result.metrics
    detail = (f"evaluation split: NLL {m['nll']:.4f} -> {m['nll_ts']:.4f}, macro ECE {m['ece.macro']:.4f} -> "
              f"{m['ece_ts.macro']:.4f} (T = {m['temperature']:.3g}).")
    pairs = (("NLL", "nll", "nll_ts"), ("macro ECE", "ece.macro", "ece_ts.macro"))
    worse = [label for label, before, after in pairs if m[after] > m[before] + 1e-9]
    scaling = (Check("temperature scaling helps", "warn", f"scaling made {' and '.join(worse)} worse on the "
                     f"held-out split; {detail}") if worse else Check("temperature scaling helps", "pass", detail))
    return [optimiser_check(fit, n_wrong), _precision_check(result, cfg), scaling,
            Check("top-label and shift calibration", "warn", _NOT_MEASURED + ".")]


def _precision_check(result: StudyResult, cfg: CalibrationConfig) -> Check:
    widths = {n: iv[1] - iv[0] for n, iv in result.intervals.items() if n.startswith("ece.") and n != "ece.macro"}
    counts = [c for rel in result.data["finding_reliability"].values() for c in rel["before"]["count"] if c > 0]
    per_bin = float(np.mean(counts)) if counts else 0.0
    widest = max(widths.values(), default=float("nan"))
    detail = f"widest per-finding ECE 95% interval {widest:.3f}; {per_bin:.1f} images per populated bin."
    if not np.isfinite(widest) or widest > cfg.max_interval_width or per_bin < cfg.min_per_bin:
        return Check("ECE precision", "warn", detail + " Too few images to conclude much about calibration per "
                     "finding; read the reliability diagrams' intervals.")
    return Check("ECE precision", "pass", detail)


def optimiser_check(fit: CM.TemperatureFit, n_cal_errors: int) -> Check:
    """Whether the temperature fit reached an interior minimum (both task kinds read it)."""
    t, g = fit.temperature, fit.grad_log_t
    if n_cal_errors == 0:
        return Check("temperature fit", "warn",
                     f"T = {t:.4g}, but every one of the {fit.n} calibration images is classified correctly: "
                     "the NLL keeps falling as T shrinks, so T is not identifiable; use a larger or harder split.")
    if abs(g) < 1e-4 and not fit.at_bound and 0.05 <= t <= 20:
        return Check("temperature fit", "pass", f"T = {t:.4g}; |dNLL/dlogT| = {abs(g):.1e} at the optimum.")
    return Check("temperature fit", "fail",
                 f"T = {t:.4g} (sane range 0.05-20), |dNLL/dlogT| = {abs(g):.1e}, at a search bound: {fit.at_bound}; "
                 "the optimiser did not reach an interior minimum.")
