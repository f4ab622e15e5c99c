"""Study ``clean``: the baseline evaluation on unmodified images.

The predicted class is the argmax of the model's output (the original notebook rounded the
probabilities first, which sent every uncertain case to class 0). Every metric
has a stratified bootstrap 95% interval.

A multi-label model (several findings per image) is scored per finding instead: AUROC and
AUPRC from its probabilities, sensitivity and specificity at each finding's decision
threshold (``ModelAdapter.thresholds``: given, or chosen on the calibration half of the
images, in which case they are read on the other half), macro and micro means, each with
an interval (:mod:`robustkit.metrics.multilabel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.errors import ModelError, check_range
from robustkit.metrics import classification as M
from robustkit.metrics import multilabel as ML
from robustkit.metrics.average import nan_mean
from robustkit.metrics.decisions import counts_from_confusion, decision_scores
from robustkit.metrics.outputs import probabilities
from robustkit.metrics.ranking import roc_curve
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
        "How well the model classifies the unmodified images: accuracy, per-class precision, "
        "sensitivity, specificity and F1, the confusion matrix and one-vs-rest ROC AUC, each with a 95% "
        "bootstrap interval (multi-label models: per finding). Every other study is read against these numbers."
    )
    Config = CleanConfig
    profiles = {"quick": {"n_bootstrap": 300}, "standard": {}, "full": {"n_bootstrap": 2000}}
    metric_docs = {
        "accuracy": ("share of images whose predicted class (argmax) equals the label", "higher"),
        "balanced_accuracy": ("mean of the per-class sensitivities (insensitive to class balance)", "higher"),
        "macro_f1": ("mean of the per-class F1 scores", "higher"),
        "precision": ("per class: share of images predicted as the class that truly are it", "higher"),
        "f1": ("per class: harmonic mean of precision and sensitivity (recall)", "higher"),
        "n_samples": ("number of images evaluated", "none"),
        "auroc": ("ROC AUC per output, one against the rest (its probability against its presence), and the "
                  "macro mean over outputs; multi-label: also the micro mean over every image-finding pair",
                  "higher"),
        "auprc": ("multi-label: area under the precision-recall curve (average precision) per finding, "
                  "macro and micro; read it against the finding's prevalence, its value for a random model",
                  "higher"),
        "sensitivity": ("per class: share of the class's images predicted as it (recall); multi-label: per "
                        "finding, the share of images with it called present at its threshold, and the macro mean",
                        "higher"),
        "specificity": ("per class: share of the images of the other classes not predicted as it "
                        "(one-vs-rest); multi-label: per finding, the share of images without it called absent "
                        "at its threshold, and the macro mean", "higher"),
        "n_thresholded": ("multi-label: images the thresholded metrics are read on (the half not used to "
                          "choose the thresholds, or every image when they were given)", "none"),
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
        if ctx.model_info.get("output_kind") == "multilabel":
            return self._reduce_findings(records, data, ctx)
        logits, probs = records["logits"], records["probs"]
        y, pred = np.asarray(data.labels), probs.argmax(axis=1)
        names = list(data.class_names)
        metrics, table = _point_metrics(y, pred, probs, names)
        intervals = _intervals(y, pred, probs, names, self.config, ctx)
        result = StudyResult(name=self.name, metrics=metrics, intervals=intervals)
        result.tables["per_class"] = table
        result.data.update(
            class_names=names,
            confusion=M.confusion_matrix(y, pred, len(names)).tolist(),
            roc=_roc_curves(y, probs, names),
            examples=_examples(ctx, data, y, pred, probs, self.config.n_examples),
        )
        result.checks = _checks(y, names, self.config.min_support)
        result.records.update(
            logits=logits, probs=probs, pred=pred.astype(np.int16), correct=(pred == y)[:, None]
        )
        result.data["correct_metrics"] = ["accuracy"]
        result.data["headline"] = _headline(["accuracy", "sensitivity", "auroc.macro"], ctx, metrics)
        return result


    def _reduce_findings(self, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext) -> StudyResult:
        """Per-finding AUROC, AUPRC, sensitivity and specificity, macro and micro, with intervals."""
        probs, targets, names = records["probs"], data.targets, list(data.class_names)
        thresholds, thresholded = finding_thresholds(ctx, data)
        called = probs >= thresholds[None, :]

        def flat(idx: np.ndarray) -> dict[str, float]:
            keep = idx[thresholded[idx]]
            scores = ML.finding_summary(targets[idx], probs[idx], thresholds).flat(names)
            sens_spec = ML.finding_summary(targets[keep], probs[keep], thresholds).flat(names)
            scores.update({k: v for k, v in sens_spec.items() if k.startswith(("sensitivity.", "specificity."))})
            return scores

        everyone = np.arange(len(probs))
        metrics = flat(everyone)
        keys = list(metrics)
        lo, hi = M.bootstrap_interval(lambda idx: np.array([flat(idx)[k] for k in keys]), len(probs),
                                      n_boot=self.config.n_bootstrap, seed=ctx.seed_for("clean", "bootstrap"),
                                      strata=data.labels)
        intervals = {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi)}
        metrics.update(n_samples=float(len(probs)), n_thresholded=float(thresholded.sum()))
        result = StudyResult(name=self.name, metrics=metrics, intervals=intervals)
        result.tables["per_finding"] = [
            {"finding": name, "positives": int(targets[:, k].sum()), "prevalence": float(targets[:, k].mean()),
             "auroc": metrics[f"auroc.{name}"], "auprc": metrics[f"auprc.{name}"],
             "threshold": float(thresholds[k]), "sensitivity": metrics[f"sensitivity.{name}"],
             "specificity": metrics[f"specificity.{name}"]}
            for k, name in enumerate(names)
        ]
        result.data.update(
            class_names=names, multilabel=True, thresholds=thresholds.tolist(),
            threshold_source=str(ctx.model_info.get("threshold_source", "")),
            roc={name: _roc(targets[:, k], probs[:, k]) for k, name in enumerate(names)},
            headline=_headline(["auroc.macro", "auprc.macro", "sensitivity", "specificity.macro"], ctx, metrics),
            correct_metrics=[],
        )
        result.checks = _finding_checks(targets, names, self.config.min_support)
        result.records.update(logits=records["logits"], probs=probs, called=called, correct=called == targets)
        return result


def finding_thresholds(ctx: AuditContext, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label audit's decision thresholds ``(K,)`` in class order, and which samples
    ``(N,)`` thresholded metrics are read on (all when the thresholds were given; the half
    not used to choose them otherwise): :func:`robustkit.metrics.multilabel.stored_thresholds`."""
    return ML.stored_thresholds(ctx.model_info, data.class_names, data.ids)


def _finding_checks(targets: np.ndarray, names: list[str], min_support: int) -> list[Check]:
    pos, neg = targets.sum(axis=0), (~targets).sum(axis=0)
    small = [f"{n} ({p} with, {q} without)" for n, p, q in zip(names, pos, neg) if min(p, q) < min_support]
    if small:
        return [Check("per-finding support", "warn", f"fewer than {min_support} images with or without "
                      f"{', '.join(small)}: per-finding intervals are wide.")]
    return [Check("per-finding support", "pass",
                  f"every finding has at least {min_support} images with it and without it.")]


def _roc(y: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    fpr, tpr = roc_curve(y, score)
    if len(fpr) > 200:  # keep the JSON small; the curve is monotone so subsampling is safe
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, 200).astype(int), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}


def _scores(y: np.ndarray, pred: np.ndarray, probs: np.ndarray, k: int) -> dict[str, Any]:
    rates = decision_scores(counts_from_confusion(M.confusion_matrix(y, pred, k)))
    return {
        "accuracy": M.accuracy(y, pred),
        "balanced_accuracy": nan_mean(rates["sensitivity"]),
        "macro_f1": nan_mean(rates["f1"]),
        **{key: rates[key] for key in ("precision", "sensitivity", "specificity", "f1")},
        "auroc": M.roc_auc_ovr(y, probs),
    }


def _flatten(s: dict[str, Any], names: list[str]) -> dict[str, float]:
    out = {k: float(s[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    for key in ("precision", "sensitivity", "specificity", "f1", "auroc"):
        for name, v in zip(names, s[key]):
            out[f"{key}.{name}"] = float(v)
    out["auroc.macro"] = nan_mean(s["auroc"])
    return out


def _point_metrics(y, pred, probs, names) -> tuple[dict[str, float], list[dict[str, Any]]]:
    flat = _flatten(_scores(y, pred, probs, len(names)), names)
    flat["n_samples"] = float(len(y))
    support = np.bincount(y, minlength=len(names))
    table = [
        {
            "class": name,
            "precision": flat[f"precision.{name}"],
            "sensitivity": flat[f"sensitivity.{name}"],
            "specificity": flat[f"specificity.{name}"],
            "f1": flat[f"f1.{name}"],
            "auroc": flat[f"auroc.{name}"],
            "support": int(support[k]),
        }
        for k, name in enumerate(names)
    ]
    return flat, table


def _intervals(y, pred, probs, names, config: CleanConfig, ctx: AuditContext) -> dict[str, list[float]]:
    if len(y) < 2:
        return {}
    keys = list(_flatten(_scores(y, pred, probs, len(names)), names))

    def stat(idx: np.ndarray) -> np.ndarray:
        flat = _flatten(_scores(y[idx], pred[idx], probs[idx], len(names)), names)
        return np.array([flat[k] for k in keys])

    lo, hi = M.bootstrap_interval(
        stat, len(y), n_boot=config.n_bootstrap, seed=ctx.seed_for("clean", "bootstrap"), strata=y
    )
    return {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi)}


def _roc_curves(y: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, dict[str, list[float]]]:
    return {name: _roc(y == k, probs[:, k]) for k, name in enumerate(names)}


def _checks(y: np.ndarray, names: list[str], min_support: int) -> list[Check]:
    support = np.bincount(y, minlength=len(names))
    small = [f"{n} ({c})" for n, c in zip(names, support) if c < min_support]
    if small:
        return [Check("per-class support", "warn",
                      f"fewer than {min_support} images for {', '.join(small)}: per-class intervals are wide.")]
    return [Check("per-class support", "pass", f"every class has at least {min_support} images.")]


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
    when the audit names one, else the macro mean (multi-label; single-label has none)."""
    critical = ctx.task.critical if ctx.task is not None else None
    slot = f"sensitivity.{critical}" if critical else "sensitivity.macro"
    return [h for h in (slot if h == "sensitivity" else h for h in names) if h in metrics]
