"""The saliency study's multi-label part: a map per finding present, localised against that
finding's mask.

For a multi-label model (independent sigmoid outputs, several findings per image) one map of
"the predicted class" says little: each finding present on an image is explained on its own,
with the explainers' target set to that finding's output (its pre-sigmoid logit), and each
map is scored against the mask of *that* finding (pointing game, relevance mass, relevance
rank accuracy; a uniform random map drawn per sample id and finding beside them). The
metric names are the single-label ones with the finding in place of the class:
``localization.<metric>.<method>.<finding>``; ``localization.<metric>.<method>`` pools every
(image, finding) pair that has a mask.

Stability, the model-randomisation check, deletion and IG completeness stay one per image:
they explain the image's top-scoring finding (the arg-max output), as for single-label models.

:func:`finding_scores` runs in ``map`` (model work, per sample); :func:`finding_localization`
and :func:`finding_gallery` in ``reduce`` (no model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.metrics import saliency as SM
from robustkit.metrics.outputs import probabilities
from robustkit.results import Check, StudyResult
from robustkit.studies.base import AuditContext, Records
from robustkit.studies.clean import finding_thresholds

if TYPE_CHECKING:
    from collections.abc import Callable

    from robustkit.data.dataset import Dataset

__all__ = ["LOC_FNS", "beats_random_checks", "finding_gallery", "finding_localization", "finding_scores"]

LOC_FNS = {"pointing_game": SM.pointing_game, "mass": SM.relevance_mass, "rank_accuracy": SM.relevance_rank_accuracy}

def finding_scores(explain: Callable[[str, np.ndarray, np.ndarray, str, list[str]], np.ndarray],
                   thumbnails: Callable[[dict[str, np.ndarray]], np.ndarray], methods: list[str], batch: Dataset,
                   x: np.ndarray, ctx: AuditContext, ids: list[str], stage: Any) -> Records:
    """Per image and finding present: each method's map of that finding's output, stored
    small, and its localisation against the finding's mask.

    Returns:
        ``finding_thumbs`` ``(B, K, M, h, w)`` (NaN where the finding is absent),
        ``finding_<metric>`` ``(B, K, M + 1)`` per localisation metric (last column: a random
        map; NaN where the finding is absent or has no mask) and ``finding_has_mask`` ``(B, K)``.
    """
    targets, names = batch.targets, list(batch.class_names)
    (n, k_all), m, size = targets.shape, len(methods), x.shape[1:3]
    out: Records = {f"finding_{key}": np.full((n, k_all, m + 1), np.nan, np.float32) for key in LOC_FNS}
    out["finding_has_mask"] = np.zeros((n, k_all), bool)
    # the thumbnails' shape comes from the image size, never from which findings a batch has
    thumbs = np.full((n, k_all, *thumbnails({meth: np.zeros((1, *size)) for meth in methods}).shape[1:]),
                     np.nan, np.float32)
    for k, name in enumerate(names):
        rows = np.flatnonzero(targets[:, k])
        if not len(rows):
            continue
        row_ids = [ids[r] for r in rows]
        with stage(targets[:, k]):
            maps = {meth: explain(meth, x[rows], np.full(len(rows), k, np.int32), f"finding/{name}", row_ids)
                    for meth in methods}
        thumbs[rows, k] = thumbnails(maps)
        masks = batch.load_masks(rows, size=size, finding=name)
        rand = np.stack([ctx.rng("saliency", "random_map", sid, name).random(size) for sid in row_ids])
        for key, fn in LOC_FNS.items():
            out[f"finding_{key}"][rows, k] = np.stack([fn(mp, masks) for mp in [*maps.values(), rand]], axis=1)
        out["finding_has_mask"][rows, k] = masks.reshape(len(rows), -1).any(axis=1)
    out["finding_thumbs"] = thumbs
    return out


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def finding_localization(records: Records, data: Dataset, methods: list[str]) -> StudyResult:
    """Localisation per method and finding (``localization.<metric>.<method>.<finding>``), pooled
    over (image, finding) pairs (``localization.<metric>.<method>``), a table and a check per method."""
    part = StudyResult(name="saliency")
    has, names, cols = records["finding_has_mask"], list(data.class_names), [*methods, "random"]
    if not has.any():
        part.checks.append(Check("localisation", "warn", "no finding has a mask: localisation skipped."))
        return part
    present = np.asarray(data.targets, bool)
    part.metrics["n_localization_excluded"] = float((present & ~has).sum())
    rows = []
    for j, meth in enumerate(cols):
        for key in LOC_FNS:
            part.metrics[f"localization.{key}.{meth}"] = _nanmean(records[f"finding_{key}"][:, :, j])
        for k, name in enumerate(names):
            if not has[:, k].any():
                continue
            cells = {key: _nanmean(records[f"finding_{key}"][:, k, j]) for key in LOC_FNS}
            part.metrics.update({f"localization.{key}.{meth}.{name}": v for key, v in cells.items()})
            rows.append({"finding": name, "method": meth, **cells, "n": int(has[:, k].sum())})
    part.tables["localization"] = [
        {"method": meth, **{key: part.metrics[f"localization.{key}.{meth}"] for key in LOC_FNS}} for meth in cols]
    part.tables["localization per finding"] = rows
    part.records.update({f"finding_{key}": records[f"finding_{key}"] for key in LOC_FNS})
    part.data["localization"] = {
        "per_finding": True, "n_pairs": int(has.sum()),
        "excluded_by_class": {name: int((present[:, k] & ~has[:, k]).sum()) for k, name in enumerate(names)},
        "n_images": int(has.any(axis=1).sum())}
    part.checks += beats_random_checks(
        part.metrics, methods, f"per finding against its own mask, pooled over {int(has.sum())} (image, finding) pairs: ")
    return part


def beats_random_checks(m: dict[str, float], methods: list[str], lead: str = "") -> list[Check]:
    """"localisation beats random" per method: relevance mass and rank accuracy both above a
    random map's (the single-label reduce's check too; ``lead`` says what was pooled)."""
    checks = []
    for meth in methods:
        better = all(m[f"localization.{k}.{meth}"] > m[f"localization.{k}.random"] for k in ("mass", "rank_accuracy"))
        checks.append(Check(
            f"localisation beats random: {meth}", "pass" if better else "warn",
            f"{lead}relevance mass {m[f'localization.mass.{meth}']:.3f} vs {m['localization.mass.random']:.3f} "
            f"for a random map; rank accuracy {m[f'localization.rank_accuracy.{meth}']:.3f} vs "
            f"{m['localization.rank_accuracy.random']:.3f}."))
    return checks


def _mask_grid(mask: np.ndarray, shape: tuple[int, int], resize: Callable[..., np.ndarray]) -> list[Any] | None:
    return (resize(mask, *shape) > 0).astype(int).tolist() if mask.any() else None


def finding_gallery(records: Records, data: Dataset, methods: list[str], n_gallery: int, ctx: AuditContext,
                    gray: Callable[..., np.ndarray], resize: Callable[..., np.ndarray],
                    grid: Callable[[np.ndarray], list[Any]]) -> list[dict[str, Any]]:
    """Per finding, its first ``n_gallery`` images; each item shows the maps of *every* finding
    the image has (records ``finding_thumbs[row, finding, method]``), each outlined with that
    finding's mask."""
    targets, names = np.asarray(data.targets, bool), list(data.class_names)
    thumbs = records["finding_thumbs"]
    shape = (int(thumbs.shape[3]), int(thumbs.shape[4]))
    h, w, _ = ctx.input_shape or (*shape, 1)
    thresholds = finding_thresholds(ctx, data)[0]
    called = probabilities(records["logits"], "multilabel") >= thresholds[None, :]
    out = []
    for k, name in enumerate(names):
        rows = np.flatnonzero(targets[:, k])[:n_gallery]
        if not len(rows):
            continue
        images = gray(data, rows, ctx, shape)
        items = []
        for r, img in zip(rows, images):
            maps = []
            for f in np.flatnonzero(targets[r]):
                mask = _mask_grid(data.load_masks([int(r)], size=(h, w), finding=names[f])[0], shape, resize)
                maps += [{"method": f"{meth} · {names[f]}", "finding": names[f], "key": "finding_thumbs",
                          "at": [int(r), int(f), j], "mask": mask} for j, meth in enumerate(methods)]
            items.append({"id": str(data.ids[r]), "label": " | ".join(names[f] for f in np.flatnonzero(targets[r])),
                          "pred": " | ".join(names[f] for f in np.flatnonzero(called[r])) or "No Finding",
                          "image": grid(img), "mask": None, "row": int(r), "maps": maps})
        out.append({"class": name, "items": items})
    return out
