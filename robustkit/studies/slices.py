"""Study ``slices``: performance per subgroup of the metadata, and whether the model can see the site.

Public COVID-19 chest X-ray sets take COVID-19 and normal images from different sources, so
a model can learn *where* an image came from instead of what is in the lungs (DeGrave et
al. 2021; Roberts et al. 2021). This study slices the audited samples by their metadata
columns (site, view, sex, age binned in decades, ...; each value and pairs of columns where
at least ``min_size`` samples remain on both sides), reports per slice accuracy, the critical class's
sensitivity and specificity and ECE with bootstrap intervals (one resampling of all the
samples shared by the slices: :func:`robustkit.metrics.slices.metrics_per_slice`), tests each slice's accuracy
against its complement (Fisher's exact test) and adjusts over the slices with
Benjamini-Hochberg (1995). A slice is flagged only when it is worse than the rest by more
than ``effect_size`` *and* its q-value is below ``alpha``. The value ``missing`` (an image
without a row in its class's metadata sheet, :mod:`robustkit.data.metadata`) is a value of
its own (``source=missing`` is a slice); a numeric column's other values are binned as usual.

The probe fits a cross-validated logistic regression on the model's penultimate features
to predict the site (and any other ``probe_columns``); a high out-of-fold AUROC, with a
class-site confound in the data, warns that the model may be reading the source. The
within-class probe centres the features within each class first, so that site
information carried only by the class does not count.

One reduce for every task kind (single-label is the multi-label case with one-hot targets):
each slice is scored by every output's AUROC and their macro mean (``auroc.<slice>.<output>``,
``auroc.<slice>.macro``; :func:`robustkit.metrics.slices.aurocs_per_slice`). The slice-vs-rest
test reads the accuracy for an exclusive task (the block above) and the macro AUROC for a
multi-label one, whose slices' AUROCs carry bootstrap intervals (one stratified resampling of
all the samples, shared by every slice and its rest) and whose probe reads "within
class" as within each set of findings, the dependence being that of the called findings (at the
audit's thresholds) on the column within those sets.

Math: :mod:`robustkit.metrics.slices`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.metadata import MISSING
from robustkit.errors import DataError, check_range, param_error
from robustkit.metrics import ranking as R
from robustkit.metrics import slices as S
from robustkit.metrics.average import nan_mean
from robustkit.metrics.outputs import probabilities
from robustkit.results import Check, StudyResult
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Records, Study, StudyConfig
from robustkit.studies.clean import finding_thresholds
from robustkit.task import Task, critical_missing_check

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["SlicesConfig", "SlicesStudy"]

_WHERE = "study 'slices'"


@dataclass(frozen=True)
class SlicesConfig(StudyConfig):
    """Options of the slices study.

    Attributes:
        columns: metadata columns to slice by; empty: every column of the data.
        slices: extra slice definitions always reported (``site=B&view=AP``).
        depth: the most columns combined in one slice (1: single values, 2: pairs).
        min_size: the fewest samples in an enumerated slice and in its complement (>= 2).
        bin_width: width of the bins of numeric columns with more than 10 values (age: 10).
        effect_size: accuracy gap to the complement beyond which a significant slice is flagged.
        alpha: level of the BH q-values and of the probe's warning.
        n_bootstrap: bootstrap resamples for the intervals.
        n_bins: ECE bins (equal width).
        probe_columns: columns the site probe predicts; None: ``site`` if the data has it.
        probe_folds: cross-validation folds of the probe.
        probe_warn_auroc: probe AUROC from which the shortcut check warns (with a confound).
        dependence_warn: within-class Cramér's V of prediction and site from which the
            shortcut check warns (a small sample's V is biased upwards, about
            ``sqrt((r-1)(c-1) / (n_class * min(r-1, c-1)))`` under independence).
    """

    columns: tuple[str, ...] = ()
    slices: tuple[str, ...] = ()
    depth: int = 2
    min_size: int = 30
    bin_width: float = 10.0
    effect_size: float = 0.05
    alpha: float = 0.05
    n_bootstrap: int = 1000
    n_bins: int = 15
    probe_columns: tuple[str, ...] | None = None
    probe_folds: int = 5
    probe_warn_auroc: float = 0.75
    dependence_warn: float = 0.5

    def validate(self) -> None:
        super().validate()
        check_range("depth", self.depth, low=1, high=3, integer=True, where=_WHERE)
        check_range("min_size", self.min_size, low=2, integer=True, where=_WHERE)
        check_range("bin_width", self.bin_width, low=0.0, low_open=True, where=_WHERE)
        check_range("effect_size", self.effect_size, low=0.0, high=1.0, where=_WHERE)
        check_range("alpha", self.alpha, low=0.0, high=1.0, low_open=True, where=_WHERE)
        check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where=_WHERE)
        check_range("n_bins", self.n_bins, low=1, integer=True, where=_WHERE)
        check_range("probe_folds", self.probe_folds, low=2, integer=True, where=_WHERE)
        check_range("probe_warn_auroc", self.probe_warn_auroc, low=0.5, high=1.0, where=_WHERE)
        check_range("dependence_warn", self.dependence_warn, low=0.0, high=1.0, where=_WHERE)
        for text in self.slices:
            S.parse_slice(text)


@register
class SlicesStudy(Study[SlicesConfig]):
    name = "slices"
    description = (
        "Performance per subgroup of the metadata (site, view, sex, age, and pairs of them), each "
        "slice against the rest with Benjamini-Hochberg q-values, and a probe of whether the site "
        "can be read from the model's features (the source shortcut of DeGrave et al. 2021)."
    )
    Config = SlicesConfig
    profiles = {"quick": {"n_bootstrap": 200, "depth": 1}, "standard": {}, "full": {"n_bootstrap": 2000}}
    metric_docs = {
        "accuracy": ("share right, overall and per slice (accuracy.<slice>)", "higher"),
        "worst.accuracy": ("accuracy of the worst slice", "higher"),
        "worst.gap": ("worst slice's accuracy minus that of the rest (negative: worse)", "higher"),
        "worst.q": ("Benjamini-Hochberg q-value of the worst slice against the rest", "none"),
        "n_slices": ("number of slices evaluated", "none"),
        "n_flagged": ("slices worse than the rest by more than effect_size with q < alpha", "lower"),
        "probe.auroc": ("AUROC of a cross-validated probe reading the column (site) from the "
                        "features; 0.5 is chance", "lower"),
        "probe.auroc_within_class": ("the probe's AUROC on features centred within each class", "lower"),
        "confound": ("Cramér's V between class and the column in the data (0: none, 1: total)", "none"),
        "auroc": ("ROC AUC per output (class or finding) and their macro mean, overall (auroc.<output>, "
                  "auroc.macro) and per slice (auroc.<slice>.<output>, auroc.<slice>.macro), every task", "higher"),
        "worst.auroc": ("multi-label: macro AUROC of the worst slice (its gap and q: worst.gap, worst.q)",
                        "higher"),
        "dependence": ("mean within-class Cramér's V between the prediction and the column (site): "
                       "0 the site does not move the prediction, 1 the site decides it", "lower"),
    }
    headline = ("worst.accuracy", "worst.auroc", "n_flagged", "probe.auroc.site")
    multilabel = True

    # -- driver side ------------------------------------------------------------------
    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """Check the named columns and slice definitions against the data before any model work."""
        _labels(data, self.config)
        _probe_columns(data, self.config)

    # -- model side -------------------------------------------------------------------
    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> Records:
        """Clean logits ``(B, K)`` and, when a probe runs, penultimate features ``(B, D)``."""
        out: Records = {"logits": ctx.clean_logits(model, batch)}
        if _probe_columns(batch, self.config):
            h, w, c = model.input_shape
            out["features"] = model.features(batch.load_images(np.arange(len(batch)), size=(h, w), channels=c))
        return out

    # -- pure reduce ------------------------------------------------------------------
    def reduce(self, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
        """Per output for every task: the overall and per-slice AUROC and their macro mean; the
        slice-vs-rest test on the accuracy (exclusive tasks) or on the macro AUROC (multi-label)."""
        cfg = self.config
        task = ctx.task or Task(names=tuple(data.class_names),
                                exclusive=ctx.exclusive)
        names, targets = list(data.class_names), np.asarray(data.targets, dtype=bool)
        probs = probabilities(records["logits"], ctx.model_info.get("output_kind", "softmax"))
        auroc = R.auroc(targets, probs)
        result = StudyResult(name=self.name, metrics={f"auroc.{n}": float(v) for n, v in zip(names, auroc)})
        result.metrics["auroc.macro"] = nan_mean(auroc)
        result.data.update(alpha=cfg.alpha, effect_size=cfg.effect_size, bin_width=cfg.bin_width, missing=MISSING)
        if task.exclusive:
            y, pred, conf = np.asarray(data.labels), probs.argmax(axis=1), probs.max(axis=1)
            _exclusive_overall(result, probs, pred, pred == y)
            calls, sets = pred, y
        else:
            calls, sets = _multilabel_overall(result, probs, targets, data, ctx)
        labels = _labels(data, cfg)
        if not labels:
            result.checks = [Check("metadata", "warn", "the data has no metadata columns: no slices.")]
            result.data.update(slices=[], slice_defs={}, probe={}, columns=[])
            return result
        slices = _all_slices(labels, cfg)
        strata = np.asarray(data.labels)
        if task.exclusive:
            positive = ctx.critical_index  # per-slice sensitivity and specificity are the critical class's
            rows = _slice_rows(slices, y, pred, conf, pred == y, positive, cfg, ctx)
            fields = {s.name: f for s, (f, _, _) in zip(slices, _auroc_fields(slices, targets, probs, names, strata,
                                                                              ctx, n_boot=0))}
            for row in rows:  # the per-output AUROC of each slice, without intervals (results.json stays small)
                row.update(fields[row["slice"]])
        else:
            positive = None
            rows = _finding_rows(slices, targets, probs, names, strata, cfg, ctx)
        _store(result, rows, {s.name: s.mask for s in slices}, names, "accuracy" if task.exclusive else "auroc")
        probe = _probes(records, data, cfg, ctx, calls, sets)
        _store_probe(result, probe)
        result.data.update(columns=sorted(labels), probe=probe,
                           positive_class=None if positive is None else names[positive])
        result.checks = _checks(rows, probe, cfg, measure="accuracy" if task.exclusive else "macro AUROC")
        if task.exclusive and positive is None:
            result.checks.append(critical_missing_check("each slice's sensitivity and specificity"))
        return result


def _exclusive_overall(result: StudyResult, probs: np.ndarray, pred: np.ndarray, correct: np.ndarray) -> None:
    """An exclusive task's overall accuracy and records (the arg-max ``pred``, ``correct``)."""
    result.metrics["accuracy"] = float(correct.mean())
    result.records.update(pred=pred.astype(np.int16), probs=probs.astype(np.float32), correct=correct[:, None])
    result.data.update(correct_metrics=["accuracy"])


def _multilabel_overall(result: StudyResult, probs: np.ndarray, targets: np.ndarray, data: Dataset,
                        ctx: AuditContext) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label task's records (``probs``, the ``called`` findings at the audit's thresholds);
    returns the codes ``(N,)`` of the called sets of findings and of the true sets (for the probe)."""
    thresholds, _ = finding_thresholds(ctx, data)
    called = probs >= thresholds[None, :]
    result.records.update(probs=probs.astype(np.float32), called=called)
    result.data.update(multilabel=True, findings=list(data.class_names), correct_metrics=[],
                       thresholds=thresholds.tolist(), metric="auroc")
    both = S.finding_sets(np.r_[targets, called])
    return both[len(targets):], both[: len(targets)]


def _store_probe(result: StudyResult, probe: dict[str, dict[str, Any]]) -> None:
    for col, p in probe.items():
        result.metrics[f"probe.auroc.{col}"] = p["auroc"]
        result.metrics[f"probe.auroc_within_class.{col}"] = p["within_class"]["auroc"]
        result.metrics[f"confound.{col}"] = p["confound"]
        result.metrics[f"dependence.{col}"] = p["dependence"]
        result.intervals[f"probe.auroc.{col}"] = [p["low"], p["high"]]


# ---------------------------------------------------------------- helpers


def _labels(data: Dataset, cfg: SlicesConfig) -> dict[str, np.ndarray]:
    """Value labels per slicing column; errors for a missing column or an empty slice."""
    meta = data.metadata
    have = sorted(meta)
    for col in cfg.columns:
        if col not in meta:
            raise param_error("columns", f"metadata columns of the data (it has {have})", col, where=_WHERE)
    cols = list(cfg.columns) or have
    labels = {c: S.discretize(meta[c], bin_width=cfg.bin_width, missing=MISSING) for c in cols}
    for text in cfg.slices:
        conditions = S.parse_slice(text)
        for col, _ in conditions:
            if col not in meta:
                raise param_error("slices", f"conditions on metadata columns of the data (it has {have})", text,
                                  where=_WHERE)
            labels.setdefault(col, S.discretize(meta[col], bin_width=cfg.bin_width, missing=MISSING))
        if len(data) and not S.slice_mask(labels, conditions).any():
            raise DataError(f"The 'slices' parameter of {_WHERE}: expected a slice that matches at least one "
                            f"sample, got {text!r}, which matches none.")
    return labels


def _probe_columns(data: Dataset, cfg: SlicesConfig) -> tuple[str, ...]:
    have = set(data.metadata_columns)
    if cfg.probe_columns is None:
        return ("site",) if "site" in have else ()
    for col in cfg.probe_columns:
        if col not in have:
            raise param_error("probe_columns", f"metadata columns of the data (it has {sorted(have)})", col,
                              where=_WHERE)
    return tuple(cfg.probe_columns)


def _all_slices(labels: dict[str, np.ndarray], cfg: SlicesConfig) -> list[S.Slice]:
    enumerated = S.enumerate_slices({c: labels[c] for c in (cfg.columns or sorted(labels)) if c in labels},
                                    depth=cfg.depth, min_size=cfg.min_size)
    names = {s.name for s in enumerated}
    for text in cfg.slices:
        conditions = S.parse_slice(text)
        name = "&".join(f"{c}={v}" for c, v in conditions)
        if name not in names:
            enumerated.append(S.Slice(name, conditions, S.slice_mask(labels, conditions)))
            names.add(name)
    return enumerated


def _slice_rows(slices: list[S.Slice], y: np.ndarray, pred: np.ndarray, conf: np.ndarray, correct: np.ndarray,
                positive: int | None, cfg: SlicesConfig, ctx: AuditContext) -> list[dict[str, Any]]:
    """Per slice its metrics with intervals (one resampling of all the samples shared by the
    slices, :func:`S.metrics_per_slice`), the gap to the rest and its test (q-values over slices);
    without a critical class (``positive`` None) no sensitivity or specificity."""
    rows: list[dict[str, Any]] = []
    masks = np.stack([s.mask for s in slices]) if slices else np.zeros((0, len(y)), dtype=bool)
    per_slice = S.metrics_per_slice(y, pred, conf, masks, positive=positive or 0, n_bins=cfg.n_bins,
                                    n_boot=cfg.n_bootstrap, seed=ctx.seed_for("slices", "resamples"))
    for s, (values, intervals) in zip(slices, per_slice):
        if positive is None:
            for key in ("sensitivity", "specificity"):
                values.pop(key, None)
                intervals.pop(key, None)
        gap, p = S.slice_test(correct, s.mask) if 0 < s.mask.sum() < len(y) else (math.nan, math.nan)
        rows.append({"slice": s.name, "conditions": [list(c) for c in s.conditions], "n": int(s.mask.sum()),
                     **values, "intervals": intervals, "gap": gap, "p": p})
    return _ranked(rows, cfg)


def _auroc_fields(slices: list[S.Slice], targets: np.ndarray, probs: np.ndarray, names: list[str],
                  strata: np.ndarray, ctx: AuditContext, *,
                  n_boot: int) -> list[tuple[dict[str, Any], dict[str, list[float]], dict[str, Any]]]:
    """Per slice its per-output and macro AUROC (row fields ``auroc.<output>`` and ``auroc``: the
    macro mean), their intervals (with ``n_boot`` resamples, one resampling shared by the slices)
    and the gap test of :func:`S.aurocs_per_slice`."""
    masks = np.stack([s.mask for s in slices]) if slices else np.zeros((0, len(targets)), dtype=bool)
    out = []
    for r in S.aurocs_per_slice(targets, probs, masks, strata, n_boot=n_boot,
                                seed=ctx.seed_for("slices", "auroc resamples")):
        fields = {"auroc": r["macro"], **{f"auroc.{n}": float(v) for n, v in zip(names, r["auroc"])}}
        intervals = {f"auroc.{n}": iv for n, iv in zip(names, r["auroc_intervals"])}
        intervals["auroc.macro"] = r["macro_interval"]
        out.append((fields, intervals, r))
    return out


def _finding_rows(slices: list[S.Slice], targets: np.ndarray, probs: np.ndarray, names: list[str],
                  strata: np.ndarray, cfg: SlicesConfig, ctx: AuditContext) -> list[dict[str, Any]]:
    """Multi-label: one row per slice (n, per-finding and macro AUROC with intervals, the gap of the
    macro AUROC to the rest's and its p-value), ranked by :func:`_ranked`."""
    rows: list[dict[str, Any]] = []
    for s, (fields, intervals, r) in zip(slices, _auroc_fields(slices, targets, probs, names, strata, ctx,
                                                               n_boot=cfg.n_bootstrap)):
        rows.append({"slice": s.name, "conditions": [list(c) for c in s.conditions], "n": int(s.mask.sum()),
                     **fields, "rest": r["rest_macro"], "intervals": intervals, "gap": r["gap"], "p": r["p"]})
    return _ranked(rows, cfg)


def _ranked(rows: list[dict[str, Any]], cfg: SlicesConfig) -> list[dict[str, Any]]:
    """The rows with their BH q-values and flags, sorted by gap, worst first."""
    for row, q in zip(rows, S.bh_qvalues([float(r["p"]) for r in rows])):
        row["q"] = q
        row["flagged"] = bool(float(row["gap"]) <= -cfg.effect_size and q < cfg.alpha)
    return sorted(rows, key=lambda r: (r["gap"] if math.isfinite(r["gap"]) else math.inf, r["slice"]))


def _store(result: StudyResult, rows: list[dict[str, Any]], masks: dict[str, np.ndarray], names: list[str],
           measure: str) -> None:
    """Flat metrics, intervals, the table and the worst slice by ``measure`` (``accuracy`` or the macro
    ``auroc``, the measure of the slice-vs-rest test).

    Every task: ``auroc.<slice>.<output>`` and ``auroc.<slice>.macro`` (with intervals where the rows
    carry them). Exclusive: ``accuracy.<slice>`` with its interval, and ``records["accuracy.<slice>"]``
    ``(N,)``, 1/0 in the slice and NaN outside, so that compare's paired bootstrap (and gate's
    ``max_drop``) recompute each slice's accuracy.
    """
    for r in rows:
        for key in [*names, "macro"]:
            name = f"auroc.{r['slice']}.{key}"
            result.metrics[name] = r["auroc"] if key == "macro" else r[f"auroc.{key}"]
            if f"auroc.{key}" in r["intervals"]:
                result.intervals[name] = r["intervals"][f"auroc.{key}"]
    if measure == "accuracy":
        correct = result.records["correct"][:, 0].astype(np.float32)
        for r in rows:
            result.metrics[f"accuracy.{r['slice']}"] = r["accuracy"]
            result.records[f"accuracy.{r['slice']}"] = np.where(masks[r["slice"]], correct, np.float32(np.nan))
            if "accuracy" in r["intervals"]:
                result.intervals[f"accuracy.{r['slice']}"] = r["intervals"]["accuracy"]
    result.metrics["n_slices"] = float(len(rows))
    result.metrics["n_flagged"] = float(sum(r["flagged"] for r in rows))
    result.tables["slices"] = [{k: v for k, v in r.items() if k not in ("conditions", "intervals")} for r in rows]
    result.data["slices"] = rows
    result.data["slice_defs"] = {r["slice"]: r["conditions"] for r in rows}
    ranked = [r for r in rows if math.isfinite(r[measure])]
    if ranked:
        worst = min(ranked, key=lambda r: (r[measure], -r["n"], r["slice"]))
        result.metrics.update({f"worst.{measure}": worst[measure], "worst.gap": worst["gap"], "worst.q": worst["q"]})
        result.data["worst"] = {k: worst[k] for k in ("slice", "n", measure, "gap", "q", "flagged")}


def _probes(records: Records, data: Dataset, cfg: SlicesConfig, ctx: AuditContext,
            pred: np.ndarray, y: np.ndarray) -> dict[str, dict[str, Any]]:
    """The probe of each column; ``y`` ``(N,)`` are the classes it is centred within (multi-label:
    the sets of findings) and ``pred`` ``(N,)`` the predictions (the called sets)."""
    cols = _probe_columns(data, cfg)
    if not cols or "features" not in records:
        return {}
    meta = data.metadata
    out = {}
    for col in cols:
        target = S.discretize(meta[col], bin_width=cfg.bin_width, missing=MISSING)
        seed = ctx.seed_for("slices", "probe", col)
        res, within = S.site_probes(records["features"], target, [None, y], folds=cfg.probe_folds, seed=seed,
                                    n_boot=cfg.n_bootstrap)  # plain and centred within y, the same resamples
        res["within_class"] = within
        res["confound"] = S.cramers_v(y, target)
        res["dependence"] = S.dependence_within(pred, target, y)
        out[col] = res
    return out


def _checks(rows: list[dict[str, Any]], probe: dict[str, dict[str, Any]], cfg: SlicesConfig,
            measure: str = "accuracy") -> list[Check]:
    flagged = [r for r in rows if r["flagged"]]
    if flagged:
        shown = ", ".join(f"{r['slice']} (gap {r['gap']:+.3f}, q={r['q']:.3g})" for r in flagged[:5])
        checks = [Check("slices", "warn", f"{len(flagged)} slice(s) worse than the rest in {measure} by more than "
                        f"{cfg.effect_size:g} with q < {cfg.alpha:g}: {shown}.")]
    else:
        checks = [Check("slices", "pass", f"no slice of {len(rows)} is worse than the rest in {measure} by more than "
                        f"{cfg.effect_size:g} with q < {cfg.alpha:g}.")]
    for col, p in probe.items():
        checks.append(_probe_check(col, p, cfg))
    return checks


def _probe_check(col: str, p: dict[str, Any], cfg: SlicesConfig) -> Check:
    """Warn when the prediction depends on the column within classes, or when the data
    confounds class and column and the probe reads the column; pass otherwise (with the numbers)."""
    auc, within, v, dep = p["auroc"], p["within_class"]["auroc"], p["confound"], p["dependence"]
    name = f"{col} shortcut"
    if dep >= cfg.dependence_warn:
        return Check(name, "warn", f"within each class the prediction depends on the {col} (Cramér's V "
                     f"{dep:.2f}; probe AUROC {auc:.3f}): the model reads the source, not only the lungs.")
    if not math.isfinite(auc):
        return Check(name, "warn", f"the {col} probe could not run: {p.get('note', '')}.")
    if v >= 0.3 and auc >= cfg.probe_warn_auroc:
        return Check(name, "warn", f"class and {col} are confounded in the data (Cramér's V {v:.2f}) and the "
                     f"{col} can be read from the model's features (probe AUROC {auc:.3f}, within classes "
                     f"{within:.3f}): the model may be reading the source instead of the lungs.")
    seen = "the features encode it" if within >= cfg.probe_warn_auroc else "the features barely encode it"
    return Check(name, "pass", f"probe AUROC {auc:.3f} [{p['low']:.3f}, {p['high']:.3f}], within classes "
                 f"{within:.3f} ({seen}); class and {col} are not confounded here (Cramér's V {v:.2f}) and "
                 f"the prediction hardly depends on the {col} within classes ({dep:.2f}).")
