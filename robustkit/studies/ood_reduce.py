"""The OOD study's reduce: fit on the reference features, score, measure, pick the filter.

Pure numpy over the records (the study's :meth:`~robustkit.studies.ood.OODStudy.map` gave
logits, features and the final layer's parameters for the audit samples and, under the
``extra/`` keys, for the reference and OOD sets). Every audit sample and OOD image is scored
once, in one pass (:func:`_score_together`); the detection intervals of every score and set
share one resampling (:func:`robustkit.metrics.ood.detection_intervals`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.metrics import ood as O
from robustkit.metrics.outputs import probabilities
from robustkit.metrics.ranking import roc_curve
from robustkit.results import Check, StudyResult
from robustkit.studies.base import AuditContext, Records, split_extra
from robustkit.task import critical_missing_check

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.studies.ood import OODStudy

__all__ = ["reduce_ood", "vim_runs_forward"]

SCORES = ("msp", "max_logit", "energy", "mahalanobis", "knn", "vim", "react")
STATISTICS_FILE = "ood_statistics.npz"


@dataclass
class _Part:
    """Logits ``(n, K)`` and features ``(n, D)`` of one group of images."""

    logits: np.ndarray
    features: np.ndarray


@dataclass
class _Fit:
    means: np.ndarray
    precision: np.ndarray
    bank: np.ndarray
    k: int
    kernel: np.ndarray | None
    bias: np.ndarray | None
    vim: O.ViMFit | None
    clip: float | None


def _head(records: Records, k: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    row = np.asarray(records["head"][0], dtype=np.float64).reshape(-1, k)
    if not np.any(row):
        return None, None
    return row[:-1], row[-1]


def finding_groups(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Multi-label reference features as class-conditional groups: one per finding (its images;
    an image with two findings is in both) and one for "No Finding", empty groups dropped.

    Returns:
        The features repeated once per group membership ``(M, D)``, their group ``(M,)`` and
        the number of groups, ready for :func:`robustkit.metrics.ood.fit_gaussian` (whose
        pooled within-group covariance then counts each membership once).
    """
    t = np.asarray(targets, bool)
    member = np.c_[t, ~t.any(axis=1)]
    member = member[:, member.any(axis=0)]
    rows, groups = np.nonzero(member)
    return np.asarray(features)[rows], groups, member.shape[1]


def _fit(ref: _Part, labels: np.ndarray, num_classes: int, head: tuple[Any, Any], cfg: Any,
         targets: np.ndarray | None = None) -> _Fit:
    """Reference statistics; ``targets`` ``(N, K)`` given: multi-label (per-finding Gaussians)."""
    kernel, bias = head
    shrinkage = cfg.mahalanobis_shrinkage
    if targets is not None:
        means, precision = O.fit_gaussian(*finding_groups(ref.features, targets), shrinkage=shrinkage)
    else:
        means, precision = O.fit_gaussian(ref.features, labels, num_classes, shrinkage=shrinkage)
    d = ref.features.shape[1]
    vim = O.fit_vim(ref.features, ref.logits, kernel, bias) if kernel is not None and d >= 2 else None
    clip = O.react_clip(ref.features, cfg.react_percentile) if kernel is not None else None
    return _Fit(means, precision, ref.features, min(cfg.knn_k, len(ref.features)), kernel, bias, vim, clip)


def _score(part: _Part, fit: _Fit, kind: str) -> dict[str, np.ndarray]:
    z, f = part.logits, part.features
    nan = np.full(len(z), np.nan)
    energy = O.joint_energy if kind == "multilabel" else O.energy_score  # JointEnergy: energy, ViM, ReAct
    return {
        "msp": O.msp_score(z, kind),
        "max_logit": O.max_logit_score(z),
        "energy": energy(z),
        "mahalanobis": O.mahalanobis_score(f, fit.means, fit.precision),
        "knn": O.knn_score(f, fit.bank, fit.k),
        "vim": O.vim_score(f, z, fit.vim, energy) if fit.vim is not None else nan,
        "react": O.react_score(f, fit.clip, fit.kernel, fit.bias, energy)
        if fit.clip is not None and fit.kernel is not None and fit.bias is not None else nan,
    }


def _score_together(parts: list[_Part], fit: _Fit, kind: str) -> list[dict[str, np.ndarray]]:
    """:func:`_score` of every part in one pass (the audit samples and the OOD sets: the kNN
    bank is sorted once for all of them), split back per part."""
    joined = _score(_Part(np.concatenate([p.logits for p in parts]), np.concatenate([p.features for p in parts])),
                    fit, kind)
    cuts = np.cumsum([len(p.logits) for p in parts])[:-1]
    split = {s: np.split(v, cuts) for s, v in joined.items()}
    return [{s: split[s][i] for s in joined} for i in range(len(parts))]


#: how each score reads a multi-label (sigmoid) head; stated in the result and the report
MULTILABEL_SCORES = {
    "msp": "the largest sigmoid output",
    "max_logit": "the largest pre-sigmoid logit",
    "energy": "JointEnergy, sum over findings of log(1 + exp(z_k)) (Wang et al. 2021)",
    "mahalanobis": "one Gaussian per finding (its reference images) and one for No Finding, shared covariance "
                   "pooled within those groups; minus the smallest distance",
    "knn": "class-agnostic (distance to the k-th nearest reference feature)",
    "vim": "ViM's residual with JointEnergy in place of logsumexp",
    "react": "JointEnergy of the head re-applied to the clipped features",
}


def _parts(study: OODStudy, records: Records) -> tuple[_Part, np.ndarray, _Part, dict[str, _Part], np.ndarray]:
    """(reference part, its labels, ID test part, OOD parts by set, audit reference flags)."""
    rec, extra = split_extra(records)
    groups = list(study._extra.class_names)
    glabels = study._extra.labels
    audit = _Part(rec["logits"], rec["features"])
    is_ref = np.zeros(len(audit.logits), dtype=bool)
    if study._ref_pos is not None:
        is_ref[study._ref_pos] = True
        ref = _Part(audit.logits[is_ref], audit.features[is_ref])
    else:
        at = glabels == groups.index("reference")
        ref = _Part(extra["logits"][at], extra["features"][at])
    test = _Part(audit.logits[~is_ref], audit.features[~is_ref])
    sets = {g: _Part(extra["logits"][glabels == i], extra["features"][glabels == i])
            for i, g in enumerate(groups) if g != "reference" and np.any(glabels == i)}
    return ref, study._ref_labels, test, sets, is_ref


def reduce_ood(study: OODStudy, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
    """The OOD study's :class:`StudyResult` from its records (see the module docstring)."""
    cfg = study.config
    names = list(data.class_names)
    kind = str(ctx.model_info.get("output_kind", "softmax"))
    multilabel = kind == "multilabel"
    ref, ref_y, test, sets, is_ref = _parts(study, records)
    fit = _fit(ref, ref_y, len(names), _head(records, len(names)), cfg,
               study._ref_targets if multilabel else None)
    all_scores, *scored = _score_together([_Part(records["logits"], records["features"]), *sets.values()], fit, kind)
    id_scores = {s: v[~is_ref] for s, v in all_scores.items()}
    set_scores = dict(zip(sets, scored))
    kinds = {str(i["name"]): str(i["kind"]) for i in study.sets_info}
    pooled = _pools(set_scores, kinds)
    result = StudyResult(name=study.name)
    _detection(result, id_scores, {**set_scores, **pooled}, cfg.n_bootstrap, ctx)
    recommended = _recommend(result, [s for s in set_scores if kinds[s] == "near"] or list(set_scores), fit.vim)
    threshold = O.threshold_at_tpr(id_scores[recommended])
    pos = ctx.critical_index  # the critical class whose confident calls on OOD images are counted
    calls = _finding_calls(ctx, data) if multilabel else None
    if multilabel or pos is not None:
        _confident(result, test, sets, set_scores, id_scores[recommended], recommended, threshold, pos, cfg, kind,
                   calls)
    result.metrics["n_id"], result.metrics["n_reference"] = float(len(test.logits)), float(len(ref.logits))
    result.data.update(
        sets=study.sets_info, reference=study.reference_note, weaker_reference=study._ref_pos is not None,
        scores=[s for s in SCORES if np.all(np.isfinite(id_scores[s]))], recommended=recommended,
        threshold=threshold, vim_alpha=None if fit.vim is None else fit.vim.alpha,
        positive_class=None if multilabel or pos is None else names[pos], operating_threshold=cfg.threshold,
        histograms=_histograms(id_scores, set_scores), roc=_rocs(id_scores[recommended], set_scores, recommended),
        gallery=_gallery(study, sets, {s: v[recommended] for s, v in set_scores.items()}, threshold, pos, kind, ctx),
        **({"multilabel": True, "score_forms": MULTILABEL_SCORES, "call_rate": "finding_call_rate",
            "finding_thresholds": None if calls is None else calls.tolist()} if multilabel else {}),
        ood_export=_export(study, recommended, threshold, None if pos is None else names[pos], ctx),
    )
    study.statistics = _statistics(fit, recommended)  # -> ood_statistics.npz, not results.json
    result.data["statistics_arrays"] = {k: list(np.shape(v)) for k, v in study.statistics.items()}
    result.checks = _checks(study, result, recommended, fit.vim)
    if not multilabel and pos is None:
        result.checks.append(critical_missing_check("the confident critical rate per set"))
    result.records.update({f"score_{s}": all_scores[s].astype(np.float32) for s in SCORES})
    result.records["reference"] = is_ref
    return result


def _pools(set_scores: dict[str, dict[str, np.ndarray]], kinds: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for pool in ("far", "near"):
        members = [s for s in set_scores if kinds.get(s) == pool]
        if members:
            out[pool] = {sc: np.concatenate([set_scores[m][sc] for m in members]) for sc in SCORES}
    return out


def _detection(result: StudyResult, id_scores: dict[str, np.ndarray], sets: dict[str, dict[str, np.ndarray]],
               n_boot: int, ctx: AuditContext) -> None:
    """Every score's detection metrics per set, their intervals over one shared resampling
    (:func:`robustkit.metrics.ood.detection_intervals`: the ID images resampled once for every
    score and set, each set once for its seven scores)."""
    usable = {sc: v for sc, v in id_scores.items() if np.all(np.isfinite(v))}
    intervals = O.detection_intervals(usable, sets, n_boot=n_boot, id_seed=ctx.seed_for("ood", "resample", "id"),
                                      set_seeds={s: ctx.seed_for("ood", "resample", s) for s in sets})
    undefined = [float("nan")] * 2
    for set_name, scores in sets.items():
        for sc in (sc for sc in SCORES if sc in usable and len(scores[sc])):
            ivs = intervals.get((sc, set_name), {})
            for m, v in O.ood_metrics(usable[sc], scores[sc]).items():
                result.metrics[f"{m}.{sc}.{set_name}"] = v
                result.intervals[f"{m}.{sc}.{set_name}"] = ivs.get(m, undefined)


def vim_runs_forward(vim: O.ViMFit | None) -> bool:
    """Whether ViM's residual counts against in-distribution: ``alpha > 0``. A reference set
    whose mean maximum logit is negative gives ``alpha < 0`` and a score that runs backwards."""
    return vim is not None and vim.alpha > 0


def _recommend(result: StudyResult, sets: list[str], vim: O.ViMFit | None = None) -> str:
    """The score with the best mean AUROC over ``sets`` (the near sets when there are any);
    ViM only when its fit ``vim`` runs forward (:func:`vim_runs_forward`)."""
    best, best_v = "energy", -np.inf
    for sc in (s for s in SCORES if s != "vim" or vim_runs_forward(vim)):
        vals = [result.metrics.get(f"auroc.{sc}.{s}", np.nan) for s in sets]
        v = float(np.mean(vals)) if vals and np.all(np.isfinite(vals)) else -np.inf
        if v > best_v:
            best, best_v = sc, v
    return best


def _finding_calls(ctx: AuditContext, data: Dataset) -> np.ndarray:
    """The audit's per-finding decision thresholds ``(K,)`` (multi-label)."""
    from robustkit.studies.clean import finding_thresholds

    return finding_thresholds(ctx, data)[0]


def _confident(result: StudyResult, test: _Part, sets: dict[str, _Part], set_scores: dict[str, dict[str, np.ndarray]],
               id_rec: np.ndarray, recommended: str, threshold: float, pos: int | None, cfg: Any, kind: str,
               finding_thresholds: np.ndarray | None = None) -> None:
    """Per set, the share called the critical class ``pos`` with confidence (multi-label, given
    ``finding_thresholds``: called with any finding), without and with the filter."""
    parts = {"id": (test, id_rec), **{s: (p, set_scores[s][recommended]) for s, p in sets.items()}}
    name = "confident_critical_rate" if finding_thresholds is None else "finding_call_rate"
    for set_name, (part, score) in parts.items():
        probs = probabilities(part.logits, kind)
        confident = np.asarray(probs[:, pos] >= cfg.threshold if finding_thresholds is None
                               else (probs >= finding_thresholds[None, :]).any(axis=1), dtype=bool)
        result.metrics[f"{name}.{set_name}"] = float(confident.mean()) if len(confident) else np.nan
        kept = confident & (score >= threshold)
        result.metrics[f"{name}_filtered.{set_name}"] = float(kept.mean()) if len(kept) else np.nan
    # on the ID test images the rate is the model's own positive rate (what the filter costs), not an error
    result.directions[f"{name}.id"] = result.directions[f"{name}_filtered.id"] = "none"


def _histograms(id_scores: dict[str, np.ndarray], set_scores: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sc in SCORES:
        pooled = np.concatenate([id_scores[sc], *[s[sc] for s in set_scores.values()]])
        if not np.all(np.isfinite(pooled)):
            continue
        lo, hi = np.percentile(pooled, [1, 99])
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
        counts = {"id": np.histogram(np.clip(id_scores[sc], edges[0], edges[-1]), edges)[0].tolist()}
        counts.update({s: np.histogram(np.clip(v[sc], edges[0], edges[-1]), edges)[0].tolist()
                       for s, v in set_scores.items()})
        out[sc] = {"edges": edges.tolist(), "counts": counts}
    return out


def _rocs(id_score: np.ndarray, set_scores: dict[str, dict[str, np.ndarray]], sc: str) -> dict[str, Any]:
    out = {}
    for s, v in set_scores.items():
        fpr, tpr = roc_curve(np.r_[np.ones(len(id_score), bool), np.zeros(len(v[sc]), bool)], np.r_[id_score, v[sc]])
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, min(len(fpr), 150)).astype(int), len(fpr) - 1])
        out[s] = {"fpr": np.round(fpr[keep], 5).tolist(), "tpr": np.round(tpr[keep], 5).tolist()}
    return out


def _gallery(study: OODStudy, sets: dict[str, _Part], rec_scores: dict[str, np.ndarray], threshold: float,
             pos: int | None, kind: str, ctx: AuditContext) -> list[dict[str, Any]]:
    """The OOD images called most confidently: the critical class's probability, or the top
    output's where the audit names no critical class (multi-label: the most confident finding)."""
    n = study.config.n_gallery
    if n <= 0 or not sets or ctx.input_shape is None:
        return []
    extra, groups = study._extra, list(study._extra.class_names)
    rows = []
    for s, part in sets.items():
        at = np.flatnonzero(extra.labels == groups.index(s))
        probs = probabilities(part.logits, kind)
        p = probs.max(axis=1) if kind == "multilabel" or pos is None else probs[:, pos]
        rows += [(float(p[j]), s, int(at[j]), float(rec_scores[s][j])) for j in range(len(at))]
    rows.sort(key=lambda r: (-r[0], r[2]))
    h, w, c = ctx.input_shape
    chosen = rows[:n]
    images = extra.load_images(np.array([r[2] for r in chosen], dtype=np.int64), size=(h, w), channels=c)
    return [{"set": s, "id": str(extra.ids[i]), "prob": p, "score": sc, "rejected": bool(sc < threshold),
             "image_png": png_base64(img)} for (p, s, i, sc), img in zip(chosen, images)]


def _export(study: OODStudy, recommended: str, threshold: float, positive: str | None,
            ctx: AuditContext) -> dict[str, Any]:
    layer = study.config.features_layer
    return {
        "score": recommended,
        "direction": "higher = in-distribution; reject an image whose score is below the threshold",
        "threshold": threshold,
        "id_tpr": 0.95,
        "features_layer": layer if layer is not None else "input of the final Dense layer",
        "statistics": STATISTICS_FILE,
        "positive_class": positive,
        "model": ctx.model_info.get("name"),
        "model_fingerprint": ctx.model_info.get("fingerprint"),
    }


def _statistics(fit: _Fit, recommended: str) -> dict[str, Any]:
    """What the recommended score needs at deployment, ready to use (``ood_statistics.npz``):
    see the score functions of :mod:`robustkit.metrics.ood` for how each is applied."""
    if recommended == "mahalanobis":
        return {"means": fit.means, "precision": fit.precision}
    if recommended == "knn":
        return {"bank": fit.bank, "k": fit.k}
    if recommended == "vim" and fit.vim is not None:
        return {"origin": fit.vim.origin, "principal_basis": fit.vim.principal_basis, "alpha": fit.vim.alpha,
                "kernel": fit.kernel, "bias": fit.bias}
    if recommended == "react":
        return {"clip": fit.clip, "kernel": fit.kernel, "bias": fit.bias}
    return {"logits_only": 1}


def _vim_check(vim: O.ViMFit | None) -> list[Check]:
    """A warning when ViM's ``alpha`` is not positive (see :func:`vim_runs_forward`)."""
    if vim is None or vim_runs_forward(vim):
        return []
    return [Check("ViM direction", "warn", f"ViM's alpha = {vim.alpha:.4g} is not positive (the reference images' "
                  "mean maximum logit is not positive), so its score runs backwards: a larger residual reads as more "
                  "in-distribution. ViM is left out of the recommended score.")]


def _checks(study: OODStudy, result: StudyResult, recommended: str, vim: O.ViMFit | None = None) -> list[Check]:
    checks = _vim_check(vim)
    empty = [str(i["name"]) for i in study.sets_info if i["n"] == 0 and i["kind"] != "reference"]
    if empty:
        checks.append(Check("OOD sets built", "warn", f"no images for {', '.join(empty)} (files not installed)."))
    far = result.metrics.get(f"auroc.{recommended}.far", np.nan)
    if np.isfinite(far):
        checks.append(Check("far-OOD detection", "pass" if far >= 0.9 else "warn", f"{recommended} AUROC on the far sets pooled: {far:.3f}."))
    if study._ref_pos is not None:
        checks.append(Check("reference data", "warn", "statistics fitted on a split of the audit data; pass "
                            "--reference-data (the training set) for the stronger setting."))
    return checks
