"""The pure reduce of the condition studies (perturbation, noise): every output under every condition.

One path for every task kind (single-label is the multi-label case with one-hot targets). The
map (:meth:`ConditionStudy.map`) records the probabilities ``probs`` ``(N, C, K)`` under the ``C``
conditions and the clean ones ``clean_probs`` ``(N, K)``, float32 (4·N·C·K bytes: 500 images,
70 conditions and 14 outputs take 2 MB), and the task's decision rule (``Task.decide``: the
arg-max one-hot, or each output at its threshold) turns them into calls. For a condition
``c`` = ``t.s`` (transform, severity) and an output ``f``:

**Per output, every task** (:func:`output_scores`):

* ``auroc.<f>.<c>``: the ROC AUC of ``f`` on the transformed images; ``auroc.macro.<c>``: its
  mean over the outputs (those with images with and without them);
* ``auroc_drop.<f>.<c>``, ``auroc_drop.macro.<c>``: clean AUROC minus AUROC under ``c``, on the
  same images (so the interval is paired);
* ``flip_rate.<f>.<c>``: the share of images whose call of ``f`` differs from the clean call;
  ``flip_rate.<c>``: for a multi-label task the share of every image-output call that changes,
  for an exclusive task the share of images whose call changes (the arg-max flip rate). Read
  on the images ``finding_thresholds`` names (the half not used to choose the thresholds; all
  when they were given or the task is exclusive);
* ``auroc.<f>.<t>``, ``auroc.macro.<t>``: means over the severities run;
* ``mean_auroc``, ``worst_auroc``, ``mean_auroc_drop``, ``mean_flip_rate`` over every condition,
  and ``mean_auroc.<f>``, ``worst_auroc.<f>`` per output.

A multi-label audit stores all of them, each per-condition one with a stratified bootstrap 95%
interval (strata: ``Dataset.labels``) from the same resamples. An exclusive audit stores, to keep
``results.json`` small, the per-output and macro AUROC per condition (``auroc.<f>.<c>``,
``auroc.macro.<c>``) and ``mean_auroc``, ``worst_auroc``, ``mean_auroc_drop``, without intervals.

**Exclusive tasks only** (:func:`exclusive_metrics`): ``accuracy.<c>`` (bootstrap 95% interval),
``mean_confidence.<c>``, ``sensitivity.<class>.<c>``; ``accuracy.<t>``, ``mean_accuracy``,
``relative_robustness``, ``worst_accuracy``; with a reference audit of the same study,
``corruption_error.<t>`` and ``mean_corruption_error`` (Hendrycks & Dietterich 2019,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR:
CE_t = sum_s E_{t,s} / sum_s E^ref_{t,s}).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.transforms import get_transform
from robustkit.metrics import classification as M
from robustkit.metrics import ranking as R
from robustkit.metrics.average import nan_mean
from robustkit.metrics.resampling import weighted_bootstrap_interval
from robustkit.results import Check, StudyResult
from robustkit.studies.clean import finding_thresholds
from robustkit.studies.condition_plan import Plan, condition_name, describe_transform, param_text
from robustkit.task import Task

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.studies.base import AuditContext
    from robustkit.studies.conditions import ConditionStudy

__all__ = ["corruption_errors", "decision", "exclusive_metrics", "flips", "output_scores", "probe_check",
           "reduce_conditions", "rise_check"]

#: per-condition metric groups, in the order of :func:`_flat_values`: (root, qualifier per output?)
_GROUPS = (("auroc", True), ("auroc", False), ("auroc_drop", True), ("auroc_drop", False),
           ("flip_rate", True), ("flip_rate", False))
#: the groups an exclusive audit stores (the per-output AUROC and its macro mean)
_EXCLUSIVE_GROUPS = _GROUPS[:2]
_EXCLUSIVE_SUMMARY = ("mean_auroc", "mean_auroc_drop", "worst_auroc")


def decision(ctx: AuditContext, data: Dataset) -> tuple[Task, np.ndarray]:
    """The audit's task with the thresholds :func:`finding_thresholds` reads, and the samples
    ``(N,)`` thresholded calls are read on (all for an exclusive task)."""
    task = ctx.task or Task(names=tuple(data.class_names), exclusive=ctx.exclusive)
    if task.exclusive:
        return task, np.ones(len(data), dtype=bool)
    thresholds, thresholded = finding_thresholds(ctx, data)
    return dataclasses.replace(task, thresholds=tuple(float(t) for t in thresholds)), thresholded


def flips(task: Task, probs: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """bool ``(N, C, K)``: the call of each output under each condition differs from the clean call."""
    n, c, k = probs.shape
    calls = task.decide(probs.reshape(n * c, k)).reshape(n, c, k)
    return calls != task.decide(clean)[:, None, :]


def output_scores(probs: np.ndarray, clean: np.ndarray, targets: np.ndarray, flipped: np.ndarray,
                  thresholded: np.ndarray, idx: np.ndarray, *, exclusive: bool = False) -> dict[str, np.ndarray]:
    """Per-condition scores of every output on the samples ``idx`` (a bootstrap resample or all).

    Args:
        probs: ``(N, C, K)`` probabilities under the conditions.
        clean: ``(N, K)`` clean probabilities.
        targets: bool ``(N, K)`` (one-hot for an exclusive task).
        flipped: bool ``(N, C, K)``: the call differs from the clean call.
        thresholded: bool ``(N,)``: the samples flip rates are read on.
        idx: sample positions (repeats allowed).
        exclusive: one call per image: ``flip_rate.all`` counts images whose call changed
            rather than image-output calls.

    Returns:
        ``auroc`` ``(C, K)``, ``auroc.macro`` ``(C,)``, ``auroc_drop`` and ``auroc_drop.macro``
        likewise, ``flip_rate`` ``(C, K)``, ``flip_rate.all`` ``(C,)``, ``clean`` ``(K,)`` and
        ``clean.macro`` ``()``.
    """
    t = targets[idx]
    auroc = R.auroc(t, probs[idx])
    clean_auroc = R.auroc(t, clean[idx])
    keep = idx[thresholded[idx]]
    c, k = probs.shape[1:]
    rates = flipped[keep].mean(axis=0) if len(keep) else np.full((c, k), np.nan)
    if not len(keep):
        every = np.full(c, np.nan)
    else:
        every = flipped[keep].any(axis=2).mean(axis=0) if exclusive else rates.mean(axis=1)
    macro, clean_macro = nan_mean(auroc, axis=-1), nan_mean(clean_auroc, axis=-1)
    return {
        "auroc": auroc, "auroc.macro": macro,
        "auroc_drop": clean_auroc[None, :] - auroc, "auroc_drop.macro": clean_macro - macro,
        "flip_rate": rates, "flip_rate.all": every,
        "clean": clean_auroc, "clean.macro": clean_macro,
    }


def _flat_keys(conditions: list[str], outputs: list[str], groups: tuple[tuple[str, bool], ...]) -> list[str]:
    keys = []
    for root, per_output in groups:
        for c in conditions:
            keys += [f"{root}.{f}.{c}" for f in outputs] if per_output else [
                f"{root}.macro.{c}" if root != "flip_rate" else f"flip_rate.{c}"]
    return keys


def _flat_values(scores: dict[str, np.ndarray]) -> np.ndarray:
    """The per-condition scores in :func:`_flat_keys`'s order (every group)."""
    parts = {("auroc", True): "auroc", ("auroc", False): "auroc.macro", ("auroc_drop", True): "auroc_drop",
             ("auroc_drop", False): "auroc_drop.macro", ("flip_rate", True): "flip_rate",
             ("flip_rate", False): "flip_rate.all"}
    return np.concatenate([np.ravel(scores[parts[g]]) for g in _GROUPS])


def _output_summary(metrics: dict[str, float], plan: Plan, outputs: list[str], clean_macro: float
                    ) -> dict[str, float]:
    names = plan.names
    out: dict[str, float] = {}
    for t in dict.fromkeys(t.name for t, _ in plan.conditions):
        cols = [c for c in names if c.rsplit(".", 1)[0] == t]
        for f in [*outputs, "macro"]:
            out[f"auroc.{f}.{t}"] = float(np.mean([metrics[f"auroc.{f}.{c}"] for c in cols]))
    macro = np.array([metrics[f"auroc.macro.{c}"] for c in names])
    out["mean_auroc"] = float(macro.mean())
    out["mean_auroc_drop"] = clean_macro - out["mean_auroc"]
    out["worst_auroc"] = float(np.nanmin(macro)) if np.any(np.isfinite(macro)) else float("nan")
    out["mean_flip_rate"] = float(np.mean([metrics[f"flip_rate.{c}"] for c in names]))
    for f in outputs:
        per = np.array([metrics[f"auroc.{f}.{c}"] for c in names])
        out[f"mean_auroc.{f}"] = float(per.mean())
        out[f"worst_auroc.{f}"] = float(np.nanmin(per)) if np.any(np.isfinite(per)) else float("nan")
    return out


def reduce_conditions(study: ConditionStudy, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext,
                      plan: Plan) -> StudyResult:
    """The result of a condition study: the per-output block for every task, the exclusive block
    for an exclusive one (metrics above, intervals, checks, tables, records)."""
    probs, clean = records["probs"], records["clean_probs"]
    outputs, names, targets = list(data.class_names), plan.names, np.asarray(data.targets, dtype=bool)
    task, thresholded = decision(ctx, data)
    flipped = flips(task, probs, clean)
    scores = output_scores(probs, clean, targets, flipped, thresholded, np.arange(len(probs)),
                           exclusive=task.exclusive)
    groups = _EXCLUSIVE_GROUPS if task.exclusive else _GROUPS
    keys = _flat_keys(names, outputs, _GROUPS)
    result = StudyResult(name=study.name)
    result.metrics = dict(zip(keys, map(float, _flat_values(scores)), strict=True))
    clean_macro = float(scores["clean.macro"])
    result.metrics.update(_output_summary(result.metrics, plan, outputs, clean_macro))
    result.metrics["n_samples"] = float(len(probs))
    result.records.update(probs=probs, clean_probs=clean)
    result.data.update(conditions=names, class_names=outputs, multilabel=not task.exclusive,
                       clean_auroc={**{f: float(v) for f, v in zip(outputs, scores["clean"])}, "macro": clean_macro},
                       severities=sorted(study.config.severities),
                       transforms=[describe_transform(get_transform(t)) for t in study.config.transforms],
                       examples=study._examples(data, ctx))
    if task.exclusive:
        stored = set(_flat_keys(names, outputs, groups)) | set(_EXCLUSIVE_SUMMARY) | {"n_samples"}
        result.metrics = {k: v for k, v in result.metrics.items() if k in stored}
        _exclusive_block(study, result, probs, clean, data, ctx, plan)
    else:
        _multilabel_block(study, result, scores, flipped, thresholded, keys, data, ctx, plan,
                          np.asarray(task.thresholds, dtype=np.float64))
    return result


def _multilabel_block(study: ConditionStudy, result: StudyResult, scores: dict[str, np.ndarray],
                      flipped: np.ndarray, thresholded: np.ndarray, keys: list[str], data: Dataset,
                      ctx: AuditContext, plan: Plan, thresholds: np.ndarray) -> None:
    """What a multi-label audit adds: intervals, checks and tables on the per-output block."""
    names, outputs = plan.names, list(data.class_names)
    probs, clean = result.records["probs"], result.records["clean_probs"]
    clean_macro = float(scores["clean.macro"])
    result.metrics["n_thresholded"] = float(thresholded.sum())
    if study.config.n_bootstrap and len(probs) >= 2:
        targets = np.asarray(data.targets, dtype=bool)
        lo, hi = M.bootstrap_interval(
            lambda idx: _flat_values(output_scores(probs, clean, targets, flipped, thresholded, idx)),
            len(probs), n_boot=study.config.n_bootstrap, seed=ctx.seed_for(study.name, "bootstrap"),
            strata=data.labels)
        result.intervals = {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi, strict=True)}
    macro = [result.metrics[f"auroc.macro.{c}"] for c in names]
    result.checks = study._checks(result.metrics, plan, clean_macro, key="auroc.macro", what="macro AUROC",
                                  calls="finding calls")
    result.tables["conditions"] = [_output_row(result.metrics, t, s, outputs) for t, s in plan.conditions]
    result.tables["per_finding"] = _output_table(result.metrics, scores, outputs, names, thresholds)
    result.records.update(flipped=flipped, thresholded=thresholded)
    result.data.update(
        correct_metrics=[], thresholds=thresholds.tolist(),
        threshold_source=str(ctx.model_info.get("threshold_source", "")),
        worst_condition=names[int(np.nanargmin(macro))] if np.any(np.isfinite(macro)) else None, reference=None,
        headline=["mean_auroc", "mean_auroc_drop", "worst_auroc", "mean_flip_rate"],
        description=study.description.split(" Each cell")[0] + " Multi-label model: each cell is a finding's "
        "AUROC on transformed copies of the same images; the flip rate is the share of findings called "
        "present or absent differently from the clean image.",
    )


def _exclusive_block(study: ConditionStudy, result: StudyResult, probs: np.ndarray, clean: np.ndarray,
                     data: Dataset, ctx: AuditContext, plan: Plan) -> None:
    """What only an exclusive task has: accuracy, per-class sensitivity, confidence, the arg-max
    flip rate, corruption errors; their interval, checks, table and records."""
    names = plan.names
    y = np.asarray(data.labels, dtype=np.int64)
    pred, conf, clean_pred = probs.argmax(axis=2).astype(np.int16), probs.max(axis=2), clean.argmax(axis=1)
    correct = pred == y[:, None]
    result.metrics.update(exclusive_metrics(y, pred, conf, clean_pred, names, list(data.class_names)))
    clean_acc = float(np.mean(clean_pred == y)) if len(y) else float("nan")
    result.metrics.update(_summary_metrics(result.metrics, plan, clean_pred == y))
    result.metrics.update(corruption_errors(result.metrics, ctx.reference, study.name, plan))
    if study.config.n_bootstrap and len(y) >= 2:
        hits = correct.astype(np.float64)  # the accuracy of a resample: its counts' weighted mean
        lo, hi = weighted_bootstrap_interval(lambda w: (w @ hits) / w.sum(axis=1, keepdims=True), len(y),
                                             n_boot=study.config.n_bootstrap, seed=ctx.seed_for(study.name, "bootstrap"),
                                             strata=y)
        result.intervals = {f"accuracy.{c}": [float(a), float(b)] for c, a, b in zip(names, lo, hi)}
    result.checks = study._checks(result.metrics, plan, clean_acc)
    result.tables["conditions"] = [_exclusive_row(result.metrics, t, s) for t, s in plan.conditions]
    result.records.update(pred=pred, confidence=conf, correct=correct, flipped=pred != clean_pred[:, None])
    result.data.update(
        correct_metrics=[f"accuracy.{c}" for c in names],
        flipped_metrics=[f"flip_rate.{c}" for c in names],  # paired (McNemar) tests in compare
        clean_accuracy=clean_acc,
        worst_condition=names[int(np.nanargmin([result.metrics[f"accuracy.{c}"] for c in names]))] if len(y) else None,
        reference=_reference_name(ctx, study.name),
    )


def exclusive_metrics(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, clean_pred: np.ndarray,
                      names: list[str], class_names: list[str]) -> dict[str, float]:
    """Per condition: ``accuracy``, the arg-max ``flip_rate``, ``mean_confidence`` and each class's
    ``sensitivity``, from the classes ``y`` ``(N,)``, the predictions and confidences ``(N, C)``."""
    out: dict[str, float] = {}
    nan = float("nan")
    empty = len(y) == 0
    acc = (pred == y[:, None]).mean(axis=0) if not empty else np.full(len(names), nan)
    flip = (pred != clean_pred[:, None]).mean(axis=0) if not empty else np.full(len(names), nan)
    mconf = conf.mean(axis=0) if not empty else np.full(len(names), nan)
    for m, c in enumerate(names):
        out[f"accuracy.{c}"] = float(acc[m])
        out[f"flip_rate.{c}"] = float(flip[m])
        out[f"mean_confidence.{c}"] = float(mconf[m])
    for k, cls in enumerate(class_names):
        mask = y == k
        rec = (pred[mask] == k).mean(axis=0) if mask.any() else np.full(len(names), nan)
        for m, c in enumerate(names):
            out[f"sensitivity.{cls}.{c}"] = float(rec[m])
    return out


def _summary_metrics(metrics: dict[str, float], plan: Plan, clean_correct: np.ndarray) -> dict[str, float]:
    names = plan.names
    acc = np.array([metrics[f"accuracy.{c}"] for c in names])
    flip = np.array([metrics[f"flip_rate.{c}"] for c in names])
    clean = float(clean_correct.mean()) if len(clean_correct) else float("nan")
    out: dict[str, float] = {}
    for t in dict.fromkeys(t.name for t, _ in plan.conditions):
        out[f"accuracy.{t}"] = float(np.mean([metrics[f"accuracy.{c}"] for c in names if c.rsplit(".", 1)[0] == t]))
    mean_acc = float(acc.mean())
    out["mean_accuracy"] = mean_acc
    out["mean_flip_rate"] = float(flip.mean())
    out["relative_robustness"] = mean_acc / clean if clean > 0 else float("nan")
    out["worst_accuracy"] = float(np.nanmin(acc)) if np.any(np.isfinite(acc)) else float("nan")
    return out


def corruption_errors(metrics: dict[str, float], reference: Any, study: str, plan: Plan) -> dict[str, float]:
    """``corruption_error.t`` and ``mean_corruption_error`` against a reference audit.

    CE_t = sum over severities of (1 - accuracy.t.s) / the same sum for the reference
    (Hendrycks & Dietterich 2019). A transform counts only when the reference has every
    severity run here and a non-zero summed error.
    """
    ref = getattr(reference, "studies", {}).get(study) if reference is not None else None
    if ref is None or ref.status != "ok":
        return {}
    out: dict[str, float] = {}
    for t in dict.fromkeys(t.name for t, _ in plan.conditions):
        sev = [s for tt, s in plan.conditions if tt.name == t]
        keys = [f"accuracy.{condition_name(t, s)}" for s in sev]
        if not all(k in ref.metrics and np.isfinite(ref.metrics[k]) for k in keys):
            continue
        ref_err = sum(1.0 - ref.metrics[k] for k in keys)
        if ref_err > 0:
            out[f"corruption_error.{t}"] = sum(1.0 - metrics[k] for k in keys) / ref_err
    if out:
        out["mean_corruption_error"] = float(np.mean(list(out.values())))
    return out


def _exclusive_row(metrics: dict[str, float], t: Any, s: int) -> dict[str, Any]:
    c = condition_name(t.name, s)
    return {"condition": c, "parameter": param_text(t.param(s)), "accuracy": metrics[f"accuracy.{c}"],
            "flip_rate": metrics[f"flip_rate.{c}"], "mean_confidence": metrics[f"mean_confidence.{c}"]}


def _output_row(metrics: dict[str, float], t: Any, s: int, outputs: list[str]) -> dict[str, Any]:
    c = condition_name(t.name, s)
    return {"condition": c, "parameter": param_text(t.param(s)),
            "auroc_macro": metrics[f"auroc.macro.{c}"], "auroc_drop_macro": metrics[f"auroc_drop.macro.{c}"],
            "flip_rate": metrics[f"flip_rate.{c}"], **{f"auroc.{f}": metrics[f"auroc.{f}.{c}"] for f in outputs}}


def _output_table(metrics: dict[str, float], scores: dict[str, np.ndarray], outputs: list[str],
                  names: list[str], thresholds: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for k, f in enumerate(outputs):
        per = [metrics[f"auroc.{f}.{c}"] for c in names]
        worst = names[int(np.nanargmin(per))] if np.any(np.isfinite(per)) else ""
        rows.append({"finding": f, "threshold": float(thresholds[k]), "clean_auroc": float(scores["clean"][k]),
                     "mean_auroc": metrics[f"mean_auroc.{f}"], "worst_auroc": metrics[f"worst_auroc.{f}"],
                     "worst_condition": worst,
                     "mean_flip_rate": float(np.mean([metrics[f"flip_rate.{f}.{c}"] for c in names]))})
    return rows


def _reference_name(ctx: AuditContext, study: str) -> str | None:
    ref = ctx.reference
    if ref is None or study not in ref.studies:
        return None
    return str(ref.model.get("name") or ref.model.get("fingerprint", "")[:12])


def rise_check(metrics: dict[str, float], plan: Plan, clean_acc: float, margin: float, *,
               key: str = "accuracy", what: str = "accuracy") -> Check:
    """Warn where ``what`` (metric ``key.t.s``) rises markedly with severity or beats its clean
    value (for graded transforms)."""
    problems = []
    for t in dict.fromkeys(t for t, _ in plan.conditions):
        sev = sorted(s for tt, s in plan.conditions if tt is t)
        if not t.graded or len(sev) < 2:
            continue
        acc = [metrics[f"{key}.{condition_name(t.name, s)}"] for s in sev]
        if acc[-1] - acc[0] > margin:
            problems.append(f"{t.name} ({acc[0]:.3f} at severity {sev[0]}, {acc[-1]:.3f} at {sev[-1]})")
        elif np.isfinite(clean_acc) and max(acc) - clean_acc > margin:
            problems.append(f"{t.name} ({max(acc):.3f}, above clean {clean_acc:.3f})")
    if problems:
        return Check(f"{what} falls with severity", "warn",
                     f"{what} rises by more than " + f"{margin:g} with severity for " + "; ".join(problems)
                     + ": a broken transform, or a model that uses what the transform adds (a shortcut).")
    return Check(f"{what} falls with severity", "pass",
                 f"no transform gains more than {margin:g} {what} with severity or over clean.")


def probe_check(metrics: dict[str, float], probe: str, severities: list[int], limit: float, *,
                calls: str = "predictions") -> Check:
    """Warn when the probe transform alone flips more than ``limit`` of the calls at some severity."""
    rates = {s: metrics[f"flip_rate.{condition_name(probe, s)}"] for s in severities}
    s_max = max(rates, key=lambda s: rates[s])
    worst = rates[s_max]
    name = f"{probe} alone flips {calls}"
    if np.isfinite(worst) and worst > limit:
        return Check(name, "warn", f"the {probe} transform alone changes {worst:.1%} of {calls} (severity "
                     f"{s_max}; limit {limit:.0%}): the model reads burned-in text, a shortcut.")
    return Check(name, "pass", f"the {probe} transform changes at most {worst:.1%} of {calls} (limit {limit:.0%}).")
