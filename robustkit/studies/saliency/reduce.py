"""The saliency study's reduce: metrics, curves, tables and checks from every sample's records.

Pure: numpy over the records through :mod:`robustkit.metrics.saliency`; nothing here imports
the model side or runs a model (the report data, small grey images and masks read from the data
side, is :mod:`robustkit.studies.saliency.report_data`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.metrics import saliency as SM
from robustkit.results import Check, StudyResult
from robustkit.studies.saliency.layout import (
    LOC_FNS,
    STABILITY,
    is_exclusive,
    perturbation_names,
    variants,
)
from robustkit.studies.saliency.report_data import report_data

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.studies.base import AuditContext, Records
    from robustkit.studies.saliency.config import SaliencyConfig

__all__ = ["LUNG_SHARE_WARN", "reduce_records"]

#: A method with less than this share of its relevance inside the lungs is warned about.
LUNG_SHARE_WARN = 0.5


def reduce_records(cfg: SaliencyConfig, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
    """Metrics, curves, tables, checks and report data from every sample's records (no model)."""
    methods = list(cfg.methods)
    result = StudyResult(name="saliency")
    result.metrics["n_samples"] = float(len(data))
    result.records["target"] = records["target"].astype(np.int16)
    stages = [_stability(records, methods, cfg), _randomization(records, methods, cfg),
              _localization(records, data, methods, exclusive=is_exclusive(ctx)), _lung_share(records, methods),
              _deletion(records, methods, cfg)]
    if "integrated_gradients" in methods:
        stages.insert(0, _completeness(records, cfg))
    for part in stages:
        _absorb(result, part)
    result.data.update(report_data(records, data, methods, cfg, ctx))
    result.records.update(map_thumbs=records["thumbs"], activation_maps=records["act_maps"])
    if "output_thumbs" in records:
        result.records["output_thumbs"] = records["output_thumbs"]
    result.data["record_columns"] = methods + ["random"]
    baseline = 1 if "integrated_gradients" in methods else 0  # the black image, once per audit
    result.data["passes"] = {"gradient": int(records["grad_passes"].sum()),
                             "forward": int(records["forward_passes"].sum()) + baseline}
    return result


def _absorb(result: StudyResult, part: StudyResult) -> None:
    result.metrics.update(part.metrics)
    result.records.update(part.records)
    result.tables.update(part.tables)
    result.data.update(part.data)
    result.checks.extend(part.checks)


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def _completeness(records: Records, cfg: SaliencyConfig) -> StudyResult:
    err = float(records["ig_gap"].sum() / max(records["ig_delta"].sum(), 1e-12))
    part = StudyResult(name="saliency", metrics={"completeness_error.integrated_gradients": err})
    part.checks.append(Check("IG completeness", "pass" if err <= 0.05 else "warn",
                             f"sum of attributions vs logit(x) - logit(black): pooled relative error {err:.1%} "
                             f"with {cfg.ig_steps} steps (warn above 5%: use more steps)."))
    return part


def _stability(records: Records, methods: list[str], cfg: SaliencyConfig) -> StudyResult:
    part = StudyResult(name="saliency")
    for j, meth in enumerate(methods):
        for key, metric in zip(STABILITY, ("stability.spearman", "stability.ssim", "stability.topk",
                                            "max_sensitivity")):
            part.metrics[f"{metric}.{meth}"] = _nanmean(records[key][:, j])
    changed = int(records["stability_changed"].sum())
    part.metrics["n_stability_changed"] = float(changed)
    part.records.update({key: records[key] for key in STABILITY})
    part.tables["stability"] = [
        {"method": meth, "spearman": part.metrics[f"stability.spearman.{meth}"],
         "ssim": part.metrics[f"stability.ssim.{meth}"], "top-k": part.metrics[f"stability.topk.{meth}"],
         "max_sensitivity": part.metrics[f"max_sensitivity.{meth}"]} for meth in methods
    ]
    part.data["stability"] = {"perturbations": perturbation_names(cfg),
                              "n_images": int(records["stability_role"].sum()), "n_changed": changed}
    return part


def _curves(records: Records, variant: str, methods: list[str]) -> dict[str, Any]:
    rows = records["rand_role"]
    labels = [str(s) for s in records["rand_steps"][0]] if len(rows) else []
    curves: dict[str, Any] = {"steps": ["original", *labels]}
    for measure in ("spearman", "ssim"):
        sims = records[f"rand_{variant}_{measure}"][rows]
        curves[measure] = {m: [1.0] + [float(np.mean(sims[:, k, j], dtype=np.float64)) for k in range(len(labels))]
                           for j, m in enumerate(methods)}
    return curves


def _randomization(records: Records, methods: list[str], cfg: SaliencyConfig) -> StudyResult:
    part = StudyResult(name="saliency")
    out: dict[str, Any] = {variant: _curves(records, variant, methods) for variant in variants(cfg)}
    casc = out["cascading"]
    n_groups = len(casc["steps"]) - 1
    for meth in methods:
        sp, ss = casc["spearman"][meth][-1], casc["ssim"][meth][-1]
        part.metrics[f"randomization.spearman.{meth}"] = sp
        part.metrics[f"randomization.ssim.{meth}"] = ss
        value = ss if cfg.randomization_metric == "ssim" else sp
        ok = value < cfg.randomization_threshold
        part.checks.append(Check(
            f"randomisation sanity: {meth}", "pass" if ok else "fail",
            f"after randomising every block from the top down to {casc['steps'][-1]} ({n_groups} "
            f"cascading steps) the map's mean {cfg.randomization_metric.upper()} similarity with the "
            f"original is {value:.2f}, {'below' if ok else 'not below'} {cfg.randomization_threshold} "
            f"(SSIM {ss:.2f}, Spearman {sp:.2f})."))
    key = f"randomization.{cfg.randomization_metric}"
    out["passed"] = [m for m in methods if part.metrics[f"{key}.{m}"] < cfg.randomization_threshold]
    out["metric"] = cfg.randomization_metric
    out["n_images"] = int(records["rand_role"].sum())
    part.data["randomization"] = out
    return part


def _localization(records: Records, data: Dataset, methods: list[str], *, exclusive: bool) -> StudyResult:
    """Localisation per method, pooled over the (image, output present) pairs
    (``localization.<metric>.<method>``) and per output (``localization.<metric>.<method>.<output>``),
    a table of each, and a check per method against the random map.

    One path for every task: an image's outputs present are its targets, so for single-label data
    each image is one pair (its class), the pooled number is the mean over images and the
    per-output numbers are per class. Images whose mask is empty are left out and counted.
    """
    part = StudyResult(name="saliency")
    has, names, cols = records["localization_has_mask"], list(data.class_names), [*methods, "random"]
    if not has.any():
        part.checks.append(Check("localisation", "warn", "no image has a lesion mask for an output it has "
                                                         "(no masks in the data?): localisation skipped."))
        return part
    present = np.asarray(data.targets, bool)
    pooled, per_output = _cells(present, has, exclusive=exclusive)
    part.metrics["n_localization_excluded"] = float((present & ~has).sum())
    rows = []
    for j, meth in enumerate(cols):
        for key in LOC_FNS:
            part.metrics[f"localization.{key}.{meth}"] = _nanmean(records[f"localization_{key}"][:, :, j][pooled])
        for k, name in enumerate(names):
            if not has[:, k].any():
                continue
            cells = {key: _nanmean(records[f"localization_{key}"][:, k, j][per_output[:, k]]) for key in LOC_FNS}
            part.metrics.update({f"localization.{key}.{meth}.{name}": v for key, v in cells.items()})
            rows.append({"output": name, "method": meth, **cells, "n": int(has[:, k].sum())})
    part.tables["localization"] = [
        {"method": meth, **{key: part.metrics[f"localization.{key}.{meth}"] for key in LOC_FNS}} for meth in cols]
    part.tables["localization per output"] = rows
    part.records.update({f"localization_{key}": records[f"localization_{key}"] for key in LOC_FNS})
    part.data["localization"] = {
        "n_pairs": int(has.sum()), "n_images": int(has.any(axis=1).sum()),
        "excluded_by_class": {name: int((present[:, k] & ~has[:, k]).sum()) for k, name in enumerate(names)}}
    part.checks += _beats_random_checks(part.metrics, methods, int(has.sum()))
    return part


def _cells(present: np.ndarray, has: np.ndarray, *, exclusive: bool) -> tuple[np.ndarray, np.ndarray]:
    """The (image, output) cells ``(N, K)`` that the pooled and the per-output means read.

    Absent outputs and empty masks hold NaN, which the mean skips, so every choice here averages
    the same numbers: they differ only in float32 summation order, and each task kind keeps the
    order of its earlier releases so that no published value moves by a rounding step (one cell
    per image for exclusive tasks; the whole grid otherwise).
    """
    if exclusive:
        return present, present & has
    every = np.ones_like(present)
    return every, every


def _beats_random_checks(m: dict[str, float], methods: list[str], n_pairs: int) -> list[Check]:
    """"localisation beats random" per method: relevance mass and rank accuracy both above a
    random map's."""
    checks = []
    for meth in methods:
        better = all(m[f"localization.{k}.{meth}"] > m[f"localization.{k}.random"] for k in ("mass", "rank_accuracy"))
        checks.append(Check(
            f"localisation beats random: {meth}", "pass" if better else "warn",
            f"each output's map against its own mask, pooled over {n_pairs} (image, output) pairs: relevance "
            f"mass {m[f'localization.mass.{meth}']:.3f} vs {m['localization.mass.random']:.3f} for a random map; "
            f"rank accuracy {m[f'localization.rank_accuracy.{meth}']:.3f} vs "
            f"{m['localization.rank_accuracy.random']:.3f}."))
    return checks


def _deletion(records: Records, methods: list[str], cfg: SaliencyConfig) -> StudyResult:
    part = StudyResult(name="saliency")
    fractions = np.linspace(0.0, 1.0, cfg.deletion_steps + 1)
    probs = records["deletion_probs"]
    n = len(probs)
    aucs = np.full((n, len(methods) + 1), np.nan, np.float32)
    curves = {}
    for j, meth in enumerate([*methods, "random"]):
        aucs[:, j] = SM.curve_auc(fractions, probs[:, j])
        curves[meth] = np.round(probs[:, j].mean(axis=0), 5).tolist() if n else []
        part.metrics[f"deletion_auc.{meth}"] = _nanmean(aucs[:, j])
    part.records["deletion_auc"] = aucs
    part.data["deletion"] = {"fractions": np.round(fractions, 5).tolist(), "curves": curves,
                             "fill": cfg.deletion_fill}
    return part


def _lung_share(records: Records, methods: list[str]) -> StudyResult:
    """Mean lung shares per method, beside a random map and the lung area, and a check per
    method (warn below :data:`LUNG_SHARE_WARN`); nothing where no image has a lung mask."""
    part = StudyResult(name="saliency")
    shares, area = records["lung_share"], records["lung_area"]
    seen = np.isfinite(area)
    if not seen.any():
        return part
    cols = [*methods, "random"]
    part.records["lung_share"] = shares
    part.metrics["lung_area_share"] = _nanmean(area)
    for j, meth in enumerate(cols):
        part.metrics[f"lung_share.{meth}"] = _nanmean(shares[:, j])
    part.data["lung_share"] = {"columns": cols, "warn_below": LUNG_SHARE_WARN, "n_images": int(seen.sum())}
    for meth in methods:
        share = part.metrics[f"lung_share.{meth}"]
        part.checks.append(Check(
            f"relevance inside the lungs: {meth}", "pass" if share >= LUNG_SHARE_WARN else "warn",
            f"{share:.3f} of |attribution| inside the lung fields (random map "
            f"{part.metrics['lung_share.random']:.3f}, lung area {part.metrics['lung_area_share']:.3f}); "
            f"warn below {LUNG_SHARE_WARN}."))
    return part
