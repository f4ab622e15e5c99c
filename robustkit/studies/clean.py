"""Study ``clean``: the baseline evaluation on unmodified images, one reduce for every task.

Every task gets the **per-output block** (single-label is the multi-label case with one-hot
targets, :class:`robustkit.task.Task`): per output, ROC AUC and average precision (AUPRC)
from its probability against its presence, their macro and micro means, and sensitivity,
specificity, precision and F1 of the calls ``Task.decide`` makes (the arg-max one-hot, or each
output at its threshold: ``ModelAdapter.thresholds``, given or chosen on a calibration half of
the images, in which case the calls are read on the other half). An **exclusive** task (one
label per image) adds its block: accuracy, balanced accuracy (the macro sensitivity), macro
F1, the confusion matrix and a gallery of examples. The predicted class is the arg-max of the
model's output (the original notebook rounded the probabilities first, which sent every
uncertain case to class 0). Every metric has a stratified bootstrap 95% interval, from the
same resamples (drawn as resampled counts in blocks, so the reduce's memory does not grow
with the number of resamples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.errors import ModelError, check_range
from robustkit.metrics import classification as M
from robustkit.metrics import multilabel as ML
from robustkit.metrics import ranking as R
from robustkit.metrics.average import nan_mean
from robustkit.metrics.decisions import decision_counts, decision_scores
from robustkit.metrics.outputs import probabilities
from robustkit.metrics.ranking import roc_curve
from robustkit.metrics.resampling import weighted_bootstrap_interval
from robustkit.results import Check, StudyResult
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Study, StudyConfig

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["CleanConfig", "CleanStudy"]


@dataclass(frozen=True)
class CleanConfig(StudyConfig):
    """Options of the clean study.

    Attributes:
        n_bootstrap: bootstrap resamples for the 95% intervals.
        n_examples: images shown in the report's gallery (misclassified ones first).
        min_support: per-class sample count under which a warning says intervals are wide.
    """

    n_bootstrap: int = 1000
    n_examples: int = 6
    min_support: int = 30

    def validate(self) -> None:
        super().validate()
        check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where="study 'clean'")
        check_range("n_examples", self.n_examples, low=0, integer=True, where="study 'clean'")
        check_range("min_support", self.min_support, low=1, integer=True, where="study 'clean'")


@register
class CleanStudy(Study[CleanConfig]):
    name = "clean"
    description = (
        "How well the model classifies the unmodified images: per output (class or finding) ROC AUC, average "
        "precision, and the sensitivity, specificity, precision and F1 of its calls; for single-label models also "
        "accuracy and the confusion matrix; each with a 95% bootstrap interval. Every other study is read against "
        "these numbers."
    )
    Config = CleanConfig
    profiles = {"quick": {"n_bootstrap": 300}, "standard": {}, "full": {"n_bootstrap": 2000}}
    metric_docs = {
        "accuracy": ("share of images whose predicted class (argmax) equals the label", "higher"),
        "balanced_accuracy": ("mean of the per-class sensitivities (insensitive to class balance)", "higher"),
        "macro_f1": ("mean of the per-class F1 scores", "higher"),
        "precision": ("per output: share of the images called it (predicted as the class, or the finding called "
                      "present) that truly have it", "higher"),
        "f1": ("per output: harmonic mean of precision and sensitivity (recall)", "higher"),
        "n_samples": ("number of images evaluated", "none"),
        "auroc": ("ROC AUC per output, one against the rest (its probability against its presence), the "
                  "macro mean over outputs and the micro mean over every image-output pair", "higher"),
        "auprc": ("area under the precision-recall curve (average precision) per output, macro and micro; read "
                  "it against the output's prevalence, its value for a random model", "higher"),
        "sensitivity": ("per output: share of the images with it that are called it (recall): predicted as the "
                        "class (arg-max), or the finding called present at its threshold; and the macro mean "
                        "(for single-label data, the balanced accuracy)", "higher"),
        "specificity": ("per output: share of the images without it that are not called it (one-vs-rest), and "
                        "the macro mean", "higher"),
        "n_thresholded": ("images the calls' metrics (sensitivity, specificity, precision, F1) are read on: every "
                          "image, or for chosen thresholds the half not used to choose them", "none"),
    }
    headline = ("accuracy", "auroc.macro")  # and the critical class's sensitivity (:func:`_headline`)
    multilabel = True

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
        """Logits and probabilities ``(B, K)`` of the unmodified images."""
        logits = ctx.clean_logits(model, batch)
        if not np.all(np.isfinite(logits)):
            bad = [str(s) for s in batch.ids[~np.all(np.isfinite(logits), axis=1)][:3]]
            raise ModelError(f"{model.name}: expected finite outputs on the clean data, got NaN or inf for {bad}.")
        probs = probabilities(logits, model.output_kind).astype(np.float32)  # the model's own outputs
        return {"logits": logits, "probs": probs}

    def reduce(self, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext) -> StudyResult:
        """The per-output block for every task, the exclusive block where one label per image."""
        probs, names = records["probs"], list(data.class_names)
        exclusive = ctx.exclusive
        targets = np.asarray(data.targets, dtype=bool)
        thresholds, thresholded = (None, np.ones(len(probs), dtype=bool)) if exclusive else finding_thresholds(ctx, data)
        y, pred = np.asarray(data.labels), probs.argmax(axis=1)
        called = targets_of(pred, len(names)) if thresholds is None else probs >= thresholds[None, :]

        flat = _Flat(targets, probs, called, thresholded, pred == y if exclusive else None, names)
        metrics = {k: float(v[0]) for k, v in flat(np.ones((1, len(probs)))).items()}
        intervals = self._intervals(flat, list(metrics), len(probs), data, ctx)
        metrics.update(n_samples=float(len(probs)), n_thresholded=float(thresholded.sum()))
        result = StudyResult(name=self.name, metrics=metrics, intervals=intervals)
        result.tables["per_output"] = _per_output_table(targets, names, metrics, thresholds)
        result.data.update(class_names=names, multilabel=not exclusive,
                           roc={name: _roc(targets[:, k], probs[:, k]) for k, name in enumerate(names)})
        result.checks = [_support_check(targets, names, self.config.min_support, exclusive),
                         _setup_check(ctx.model_info)]
        result.records.update(logits=records["logits"], probs=probs, called=called)
        if exclusive:
            result.data.update(confusion=M.confusion_matrix(y, pred, len(names)).tolist(), correct_metrics=["accuracy"],
                               examples=_examples(ctx, data, y, pred, probs, self.config.n_examples),
                               headline=_headline(["accuracy", "critical sensitivity", "auroc.macro"], ctx, metrics))
            result.records.update(pred=pred.astype(np.int16), correct=(pred == y)[:, None])
        else:
            result.data.update(thresholds=thresholds.tolist() if thresholds is not None else None,
                               threshold_source=str(ctx.model_info.get("threshold_source", "")), correct_metrics=[],
                               headline=_headline(["auroc.macro", "auprc.macro", "sensitivity", "specificity.macro"],
                                                  ctx, metrics))
            result.records.update(correct=called == targets)
        return result

    def _intervals(self, flat: _Flat, keys: list[str], n: int, data: Dataset, ctx: AuditContext) -> dict[str, list[float]]:
        """Stratified bootstrap 95% intervals of every metric of ``flat``, from one set of
        resamples (resampled counts in blocks: :func:`~robustkit.metrics.resampling.bootstrap_weights`)."""
        if n < 2:
            return {}
        def stat(w: np.ndarray) -> np.ndarray:
            values = flat(w)  # once per block (each metric read from the same pass)
            return np.stack([values[k] for k in keys], axis=1)

        lo, hi = weighted_bootstrap_interval(stat, n,
                                             n_boot=self.config.n_bootstrap, seed=ctx.seed_for("clean", "bootstrap"),
                                             strata=data.labels)
        return {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi)}


def targets_of(labels: np.ndarray, k: int) -> np.ndarray:
    """``(N, K)`` bool one-hot of class indices (the arg-max calls of an exclusive task)."""
    return np.eye(k, dtype=bool)[np.asarray(labels, dtype=np.int64)]


class _Flat:
    """Every metric of the study under rows of sample weights ``(b, N)``: ones for the point
    metrics, bootstrap counts for the intervals (the same code, so the interval of a metric
    resamples exactly its point computation). Each score column is sorted once."""

    def __init__(self, targets: np.ndarray, probs: np.ndarray, called: np.ndarray, thresholded: np.ndarray,
                 correct: np.ndarray | None, names: list[str]) -> None:
        self.targets, self.called, self.names = targets, called, names
        self.thresholded, self.correct = thresholded.astype(np.float64), correct
        self.columns = [R.sort_scores(probs[:, k], targets[:, k]) for k in range(len(names))]
        k = len(names)  # micro: every image-output pair, weighted by its image's weight
        self.pooled = R.sort_scores(probs.ravel(), targets.ravel(), sample=np.repeat(np.arange(len(probs)), k))

    def __call__(self, w: np.ndarray) -> dict[str, np.ndarray]:
        out = self._ranking(w)
        out.update(_decisions(self.targets, self.called, self.names, w * self.thresholded[None, :]))
        if self.correct is not None:
            out.update(_exclusive(self.correct, out, self.names, w))
        return out

    def _ranking(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Per output and macro/micro: AUROC and AUPRC (threshold-free), each ``(b,)``."""
        per = [R.weighted_ranking(col, w) for col in self.columns]
        micro = R.weighted_ranking(self.pooled, w)
        out: dict[str, np.ndarray] = {}
        for key, part in (("auroc", "auroc"), ("auprc", "ap")):
            values = np.stack([p[part] for p in per], axis=1)
            out.update({f"{key}.{name}": values[:, k] for k, name in enumerate(self.names)})
            out[f"{key}.macro"], out[f"{key}.micro"] = nan_mean(values, axis=1), micro[part]
        return out


def _decisions(targets: np.ndarray, called: np.ndarray, names: list[str], w: np.ndarray) -> dict[str, np.ndarray]:
    """Per output: sensitivity, specificity, precision, F1 of the calls; macro sensitivity and
    specificity; each ``(b,)`` under the weights ``w`` ``(b, N)``."""
    rates = decision_scores(decision_counts(targets, called, weights=w))
    out: dict[str, np.ndarray] = {}
    for key in ("sensitivity", "specificity", "precision", "f1"):
        out.update({f"{key}.{name}": rates[key][:, k] for k, name in enumerate(names)})
    out["sensitivity.macro"] = nan_mean(rates["sensitivity"], axis=1)
    out["specificity.macro"] = nan_mean(rates["specificity"], axis=1)
    return out


def _exclusive(correct: np.ndarray, per_output: dict[str, np.ndarray], names: list[str],
               w: np.ndarray) -> dict[str, np.ndarray]:
    """The exclusive block: accuracy, balanced accuracy (the macro sensitivity) and macro F1, each ``(b,)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = (w @ correct.astype(np.float64)) / w.sum(axis=1)
    return {"accuracy": accuracy, "balanced_accuracy": per_output["sensitivity.macro"],
            "macro_f1": nan_mean(np.stack([per_output[f"f1.{n}"] for n in names], axis=1), axis=1)}


def _per_output_table(targets: np.ndarray, names: list[str], metrics: dict[str, float],
                      thresholds: np.ndarray | None) -> list[dict[str, Any]]:
    return [
        {"output": name, "positives": int(targets[:, k].sum()), "prevalence": float(targets[:, k].mean()),
         **{key: metrics[f"{key}.{name}"] for key in ("auroc", "auprc", "sensitivity", "specificity", "precision", "f1")},
         "threshold": None if thresholds is None else float(thresholds[k])}
        for k, name in enumerate(names)
    ]


def finding_thresholds(ctx: AuditContext, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label audit's decision thresholds ``(K,)`` in class order, and which samples
    ``(N,)`` thresholded metrics are read on (all when the thresholds were given; the half
    not used to choose them otherwise): :func:`robustkit.metrics.multilabel.stored_thresholds`."""
    return ML.stored_thresholds(ctx.model_info, data.class_names, data.ids)


def _support_check(targets: np.ndarray, names: list[str], min_support: int, exclusive: bool) -> Check:
    """Per output: enough images with it (and, for findings, without it) for a narrow interval."""
    pos, neg = targets.sum(axis=0), (~targets).sum(axis=0)
    if exclusive:
        small = [f"{n} ({p})" for n, p in zip(names, pos) if p < min_support]
        what, passed = "per-class support", f"every class has at least {min_support} images."
        text = f"fewer than {min_support} images for {', '.join(small)}: per-class intervals are wide."
    else:
        small = [f"{n} ({p} with, {q} without)" for n, p, q in zip(names, pos, neg) if min(p, q) < min_support]
        what, passed = "per-finding support", f"every finding has at least {min_support} images with it and without it."
        text = f"fewer than {min_support} images with or without {', '.join(small)}: per-finding intervals are wide."
    return Check(what, "warn", text) if small else Check(what, "pass", passed)


def _setup_check(model: dict[str, Any]) -> Check:
    """The model's setup: what robustkit assumed (preprocessing, class order) and what the input
    probe found (:mod:`robustkit.model.probe`); warn on an assumption or a better setup."""
    said = list(model.get("assumptions") or [])
    probe = model.get("input_probe") or {}
    if probe.get("verdict") in ("warn", "stop"):
        said.append(f"input probe: {probe['message']}")
    if said:
        return Check("model setup", "warn", "; ".join(said) + ".")
    found = (f"; input probe: {probe['message']}" if probe.get("message") else
             f"; input probe skipped ({probe['skipped']})" if probe.get("skipped") else "")
    return Check("model setup", "pass", f"preprocessing and class order declared{found}.")


def _roc(y: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    fpr, tpr = roc_curve(y, score)
    if len(fpr) > 200:  # keep the JSON small; the curve is monotone so subsampling is safe
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, 200).astype(int), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}


def _examples(ctx: AuditContext, data, y, pred, probs, n: int) -> list[dict[str, Any]]:
    if n <= 0 or len(y) == 0 or ctx.input_shape is None:
        return []
    wrong = np.flatnonzero(pred != y)
    right = np.flatnonzero(pred == y)
    chosen = np.r_[wrong[: (n + 1) // 2], right[: n - min(len(wrong), (n + 1) // 2)]][:n]
    h, w, c = ctx.input_shape
    images = data.load_images(chosen, size=(h, w), channels=c)
    names = list(data.class_names)
    return [
        {
            "id": str(data.ids[i]),
            "label": names[int(y[i])],
            "pred": names[int(pred[i])],
            "confidence": float(probs[i].max()),
            "image_png": png_base64(img),
        }
        for i, img in zip(chosen, images)
    ]


def _headline(names: list[str], ctx: AuditContext, metrics: dict[str, float]) -> list[str]:
    """The study's headline metrics that exist: the ``sensitivity`` slot is the critical class's
    when the audit names one, else the macro mean; ``critical sensitivity`` is the critical
    class's or nothing (single-label: the macro sensitivity is the balanced accuracy already)."""
    critical = ctx.task.critical if ctx.task is not None else None
    slots = {"sensitivity": f"sensitivity.{critical}" if critical else "sensitivity.macro",
             "critical sensitivity": f"sensitivity.{critical}" if critical else ""}
    return [h for h in (slots.get(h, h) for h in names) if h in metrics]
