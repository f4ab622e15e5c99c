"""The multi-label reduce of the condition studies (perturbation, noise): every finding under every condition.

A multi-label model gives each finding its own probability, so accuracy over an arg-max means
nothing; the condition studies score each finding as its own binary problem instead. The map
(:meth:`ConditionStudy.map`) records the probabilities ``probs`` ``(N, C, K)`` under the ``C``
conditions and the clean ones ``clean_probs`` ``(N, K)``, float32 (4·N·C·K bytes: 500 images,
70 conditions and 14 findings take 2 MB), and this reduce turns them into, for a condition
``c`` = ``t.s`` (transform, severity) and a finding ``f``:

* ``auroc.<f>.<c>``: the ROC AUC of ``f`` on the transformed images; ``auroc.macro.<c>``: its
  mean over the findings (those with images with and without them);
* ``auroc_drop.<f>.<c>``, ``auroc_drop.macro.<c>``: clean AUROC minus AUROC under ``c``, on the
  same images (so the interval is paired);
* ``flip_rate.<f>.<c>``: the share of images whose call of ``f`` (present when its probability
  is >= the finding's threshold) differs from the clean call; ``flip_rate.<c>``: the share of
  every image-finding call that changes. Read on the images ``finding_thresholds`` names (the
  half not used to choose the thresholds; all when they were given);
* ``auroc.<f>.<t>``, ``auroc.macro.<t>``: means over the severities run;
* ``mean_auroc``, ``worst_auroc``, ``mean_auroc_drop``, ``mean_flip_rate`` over every condition,
  and ``mean_auroc.<f>``, ``worst_auroc.<f>`` per finding.

The metric names follow the single-label ones (``sensitivity.<class>.t.s``: the qualifier first,
the condition last). Every per-condition metric has a stratified bootstrap 95% interval (strata:
``Dataset.labels``, the first finding), from the same resamples for all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from robustkit.data.transforms import get_transform
from robustkit.metrics import classification as M
from robustkit.results import StudyResult
from robustkit.studies.clean import finding_thresholds
from robustkit.studies.condition_plan import Plan, describe_transform, param_text

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.studies.base import AuditContext
    from robustkit.studies.conditions import ConditionStudy

__all__ = ["auroc_columns", "finding_scores", "reduce_findings"]

#: per-condition metric groups, in the order of :func:`_flat_values`: (root, qualifier per finding?)
_GROUPS = (("auroc", True), ("auroc", False), ("auroc_drop", True), ("auroc_drop", False),
           ("flip_rate", True), ("flip_rate", False))


def auroc_columns(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of every column at once: finding ``k``'s scores ``scores[..., k]`` against ``targets[:, k]``.

    The Mann-Whitney form with ties counting one half, as
    :func:`robustkit.metrics.multilabel.binary_auroc` (and scikit-learn's ``roc_auc_score``),
    one ranking for every condition.

    Args:
        targets: bool ``(N, K)``.
        scores: ``(N, ..., K)``, e.g. ``(N, C, K)`` probabilities under ``C`` conditions.

    Returns:
        ``scores.shape[1:]``; NaN for a finding every image has or none has.
    """
    t = np.asarray(targets, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    ranks = stats.rankdata(s, axis=0) if len(s) else np.zeros_like(s)
    pos = t.reshape((len(t),) + (1,) * (s.ndim - 2) + (t.shape[1],))
    n_pos = t.sum(axis=0).astype(np.float64)
    n_neg = len(t) - n_pos
    rank_sum = np.where(pos, ranks, 0.0).sum(axis=0)
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where(defined, auc, np.nan)


def _macro(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite values; NaN where none is."""
    finite = np.isfinite(values)
    count = finite.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.where(finite, values, 0.0).sum(axis=-1) / count, np.nan)


def finding_scores(probs: np.ndarray, clean: np.ndarray, targets: np.ndarray, flipped: np.ndarray,
                   thresholded: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per-condition scores on the samples ``idx`` (a bootstrap resample or every sample).

    Args:
        probs: ``(N, C, K)`` probabilities under the conditions.
        clean: ``(N, K)`` clean probabilities.
        targets: bool ``(N, K)``.
        flipped: bool ``(N, C, K)``: the call at the threshold differs from the clean call.
        thresholded: bool ``(N,)``: the samples flip rates are read on.
        idx: sample positions (repeats allowed).

    Returns:
        ``auroc`` ``(C, K)``, ``auroc.macro`` ``(C,)``, ``auroc_drop`` and ``auroc_drop.macro``
        likewise, ``flip_rate`` ``(C, K)``, ``flip_rate.all`` ``(C,)``, ``clean`` ``(K,)`` and
        ``clean.macro`` ``()``.
    """
    t = targets[idx]
    auroc = auroc_columns(t, probs[idx])
    clean_auroc = auroc_columns(t, clean[idx])
    keep = idx[thresholded[idx]]
    c, k = probs.shape[1:]
    flips = flipped[keep].mean(axis=0) if len(keep) else np.full((c, k), np.nan)
    macro, clean_macro = _macro(auroc), _macro(clean_auroc)
    return {
        "auroc": auroc, "auroc.macro": macro,
        "auroc_drop": clean_auroc[None, :] - auroc, "auroc_drop.macro": clean_macro - macro,
        "flip_rate": flips, "flip_rate.all": flips.mean(axis=1) if len(keep) else np.full(c, np.nan),
        "clean": clean_auroc, "clean.macro": clean_macro,
    }


def _flat_keys(conditions: list[str], findings: list[str]) -> list[str]:
    keys = []
    for root, per_finding in _GROUPS:
        for c in conditions:
            keys += [f"{root}.{f}.{c}" for f in findings] if per_finding else [
                f"{root}.macro.{c}" if root != "flip_rate" else f"flip_rate.{c}"]
    return keys


def _flat_values(scores: dict[str, np.ndarray]) -> np.ndarray:
    """The per-condition scores in :func:`_flat_keys`'s order."""
    parts = {("auroc", True): "auroc", ("auroc", False): "auroc.macro", ("auroc_drop", True): "auroc_drop",
             ("auroc_drop", False): "auroc_drop.macro", ("flip_rate", True): "flip_rate",
             ("flip_rate", False): "flip_rate.all"}
    return np.concatenate([np.ravel(scores[parts[g]]) for g in _GROUPS])


def _summary(metrics: dict[str, float], plan: Plan, findings: list[str], clean_macro: float) -> dict[str, float]:
    names = plan.names
    out: dict[str, float] = {}
    for t in dict.fromkeys(t.name for t, _ in plan.conditions):
        cols = [c for c in names if c.rsplit(".", 1)[0] == t]
        for f in [*findings, "macro"]:
            out[f"auroc.{f}.{t}"] = float(np.mean([metrics[f"auroc.{f}.{c}"] for c in cols]))
    macro = np.array([metrics[f"auroc.macro.{c}"] for c in names])
    out["mean_auroc"] = float(macro.mean())
    out["mean_auroc_drop"] = clean_macro - out["mean_auroc"]
    out["worst_auroc"] = float(np.nanmin(macro)) if np.any(np.isfinite(macro)) else float("nan")
    out["mean_flip_rate"] = float(np.mean([metrics[f"flip_rate.{c}"] for c in names]))
    for f in findings:
        per = np.array([metrics[f"auroc.{f}.{c}"] for c in names])
        out[f"mean_auroc.{f}"] = float(per.mean())
        out[f"worst_auroc.{f}"] = float(np.nanmin(per)) if np.any(np.isfinite(per)) else float("nan")
    return out


def reduce_findings(study: ConditionStudy, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext,
                    plan: Plan) -> StudyResult:
    """The multi-label result of a condition study (metrics above, intervals, checks, tables, records)."""
    probs, clean = records["probs"], records["clean_probs"]
    findings, names, targets = list(data.class_names), plan.names, np.asarray(data.targets, dtype=bool)
    thresholds, thresholded = finding_thresholds(ctx, data)
    flipped = (probs >= thresholds) != (clean >= thresholds)[:, None, :]
    everyone = np.arange(len(probs))
    scores = finding_scores(probs, clean, targets, flipped, thresholded, everyone)
    keys = _flat_keys(names, findings)
    result = StudyResult(name=study.name)
    result.metrics = dict(zip(keys, map(float, _flat_values(scores)), strict=True))
    clean_macro = float(scores["clean.macro"])
    result.metrics.update(_summary(result.metrics, plan, findings, clean_macro))
    result.metrics.update(n_samples=float(len(probs)), n_thresholded=float(thresholded.sum()))
    result.intervals = _intervals(study, probs, clean, targets, flipped, thresholded, keys, data, ctx)
    macro = [result.metrics[f"auroc.macro.{c}"] for c in names]
    worst = names[int(np.nanargmin(macro))] if np.any(np.isfinite(macro)) else None
    result.checks = study._checks(result.metrics, plan, clean_macro, key="auroc.macro", what="macro AUROC",
                                  calls="finding calls")
    result.tables["conditions"] = _condition_table(result.metrics, plan, findings)
    result.tables["per_finding"] = _finding_table(result.metrics, scores, findings, names, thresholds)
    result.records.update(probs=probs, clean_probs=clean, flipped=flipped, thresholded=thresholded)
    result.data.update(
        conditions=names, class_names=findings, multilabel=True, correct_metrics=[],
        thresholds=thresholds.tolist(), threshold_source=str(ctx.model_info.get("threshold_source", "")),
        clean_auroc={**{f: float(v) for f, v in zip(findings, scores["clean"])}, "macro": clean_macro},
        worst_condition=worst, severities=sorted(study.config.severities),
        transforms=[describe_transform(get_transform(t)) for t in study.config.transforms],
        examples=study._examples(data, ctx), reference=None,
        headline=["mean_auroc", "mean_auroc_drop", "worst_auroc", "mean_flip_rate"],
        description=study.description.split(" Each cell")[0] + " Multi-label model: each cell is a finding's "
        "AUROC on transformed copies of the same images; the flip rate is the share of findings called "
        "present or absent differently from the clean image.",
    )
    return result


def _intervals(study: ConditionStudy, probs: np.ndarray, clean: np.ndarray, targets: np.ndarray,
               flipped: np.ndarray, thresholded: np.ndarray, keys: list[str], data: Dataset,
               ctx: AuditContext) -> dict[str, list[float]]:
    if study.config.n_bootstrap == 0 or len(probs) < 2:
        return {}
    lo, hi = M.bootstrap_interval(
        lambda idx: _flat_values(finding_scores(probs, clean, targets, flipped, thresholded, idx)), len(probs),
        n_boot=study.config.n_bootstrap, seed=ctx.seed_for(study.name, "bootstrap"), strata=data.labels,
    )
    return {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi, strict=True)}


def _condition_table(metrics: dict[str, float], plan: Plan, findings: list[str]) -> list[dict[str, Any]]:
    rows = []
    for t, s in plan.conditions:
        c = f"{t.name}.{s}"
        rows.append({"condition": c, "parameter": param_text(t.param(s)),
                     "auroc_macro": metrics[f"auroc.macro.{c}"], "auroc_drop_macro": metrics[f"auroc_drop.macro.{c}"],
                     "flip_rate": metrics[f"flip_rate.{c}"],
                     **{f"auroc.{f}": metrics[f"auroc.{f}.{c}"] for f in findings}})
    return rows


def _finding_table(metrics: dict[str, float], scores: dict[str, np.ndarray], findings: list[str],
                   names: list[str], thresholds: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for k, f in enumerate(findings):
        per = [metrics[f"auroc.{f}.{c}"] for c in names]
        worst = names[int(np.nanargmin(per))] if np.any(np.isfinite(per)) else ""
        rows.append({"finding": f, "threshold": float(thresholds[k]), "clean_auroc": float(scores["clean"][k]),
                     "mean_auroc": metrics[f"mean_auroc.{f}"], "worst_auroc": metrics[f"worst_auroc.{f}"],
                     "worst_condition": worst,
                     "mean_flip_rate": float(np.mean([metrics[f"flip_rate.{f}.{c}"] for c in names]))})
    return rows
