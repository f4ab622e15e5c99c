"""The saliency study's model work: every model pass of the study, per batch of samples.

:func:`plan` runs on the driver (which samples take part in each sub-study); :func:`map_batch`
explains a batch and scores the maps (every random draw keyed by the sample id; the randomised
networks come from the explainer, keyed by the seed and the block). It stores small float maps
and per-sample scores; :mod:`robustkit.studies.saliency.reduce` turns them into metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

import numpy as np

from robustkit.metrics import saliency as SM
from robustkit.metrics.outputs import probabilities
from robustkit.model.explainers import Explainer
from robustkit.studies.saliency.layout import (
    ACT_SIDE,
    LOC_FNS,
    STABILITY,
    area_resize,
    is_exclusive,
    thumbnails,
    variants,
)

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter
    from robustkit.studies.base import AuditContext, Records
    from robustkit.studies.saliency.config import SaliencyConfig

__all__ = ["map_batch", "plan"]

#: a pass counter's stage: counts the model passes of the samples ``rows`` it is given
Stage = Callable[[np.ndarray], AbstractContextManager[None]]


def plan(data: Dataset, cfg: SaliencyConfig) -> dict[str, frozenset[str]]:
    """Sample ids of each sub-study: the stability and randomisation images (an even spread over
    the classes) and the activation-panel images (the first of each class), chosen over the whole
    study's samples on the driver, so that every shard and batch agrees on them."""
    ids, labels = data.ids, np.asarray(data.labels)
    first = [int(np.flatnonzero(labels == k)[0]) for k in range(len(data.class_names)) if (labels == k).any()]
    return {"stability": frozenset(ids[_spread(labels, cfg.stability_samples)].tolist()),
            "randomization": frozenset(ids[_spread(labels, cfg.randomization_samples)].tolist()),
            "activations": frozenset(ids[first].tolist())}


def map_batch(cfg: SaliencyConfig, sub_studies: dict[str, frozenset[str]], model: ModelAdapter, batch: Dataset,
              ctx: AuditContext) -> Records:
    """Per-sample maps and scores of ``batch``: every model pass of the study happens here.

    Each image's predicted output (the arg-max) is explained by every method; stability,
    randomisation, deletion and IG completeness read those maps. Localisation is per output
    present (:func:`_localization_scores`).
    """
    ex = Explainer.cached(model, layer=cfg.layer)
    roles = {role: np.isin(batch.ids, sorted(members)) for role, members in sub_studies.items()}
    h, w, c = model.input_shape
    x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
    logits = ctx.clean_logits(model, batch)
    target = logits.argmax(axis=1).astype(np.int32)
    ids = [str(i) for i in batch.ids]
    passes = _Passes(ex, len(x))
    passes.forward += 1  # the clean pass (computed once per audit, shared with other studies)
    everyone = np.ones(len(x), bool)
    with passes.stage(everyone):
        maps, attr = _clean_maps(cfg, ex, x, target, ctx, ids)
    rec: Records = {"target": target, "logits": logits, "thumbs": thumbnails(maps),
                    "gradcam_layer": np.full(len(x), ex.layer)}
    if attr is not None:
        rec |= _completeness_terms(ex, attr, logits, target)
    with passes.stage(roles["stability"]):
        rec |= _stability_scores(cfg, ex, x, target, maps, roles["stability"], ctx, ids)
    with passes.stage(roles["randomization"]):
        rec |= _randomization_scores(cfg, ex, x, target, maps, roles["randomization"], ctx, ids)
    rec |= _localization_scores(cfg, ex, x, maps, batch, ctx, ids, passes.stage)
    rec |= _lung_share_scores(batch, maps, ctx, ids, (h, w))
    with passes.stage(everyone):
        rec |= _deletion_probs(ex, x, target, logits, maps, ctx, ids, cfg)
    with passes.stage(roles["activations"]):
        rec |= _activation_maps(cfg, ex, x, roles["activations"])
    return rec | passes.records()


def _explain(cfg: SaliencyConfig, ex: Explainer, method: str, x: np.ndarray, target: np.ndarray, ctx: AuditContext,
             key: str, ids: list[str]) -> np.ndarray:
    """Min-max scaled maps ``(B, H, W)``; SmoothGrad's noise seeded per sample id."""
    seeds = np.array([ctx.seed_for("saliency", method, key, sid) for sid in ids], np.int64) \
        if method == "smoothgrad" else 0
    out = ex.explain(method, x, target, smoothgrad_n=cfg.smoothgrad_n, smoothgrad_noise=cfg.smoothgrad_noise,
                     ig_steps=cfg.ig_steps, seed=seeds)
    return SM.minmax(out).astype(np.float32)


def _clean_maps(cfg: SaliencyConfig, ex: Explainer, x: np.ndarray, target: np.ndarray, ctx: AuditContext,
                ids: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every method's map of the images, and the IG attributions ``(B, H, W, C)`` (one IG pass)."""
    maps, attr = {}, None
    for method in cfg.methods:
        if method == "integrated_gradients":
            raw, attr = ex.integrated_gradients(x, target, steps=cfg.ig_steps)
            maps[method] = SM.minmax(raw).astype(np.float32)
        else:
            maps[method] = _explain(cfg, ex, method, x, target, ctx, "clean", ids)
    return maps, attr


def _stability_scores(cfg: SaliencyConfig, ex: Explainer, x: np.ndarray, target: np.ndarray,
                      maps: dict[str, np.ndarray], rows: np.ndarray, ctx: AuditContext, ids: list[str]) -> Records:
    """Per image of the stability set: similarity with its perturbed copies' maps ``(B, M)``."""
    n, m = len(x), len(maps)
    out = {k: np.full((n, m), np.nan, np.float32) for k in STABILITY}
    changed = np.zeros(n, np.int32)
    pick = np.flatnonzero(rows)
    if len(pick):
        pick_ids = [ids[r] for r in pick]
        acc: dict[str, list[list[list[float]]]] = {k: [[[] for _ in maps] for _ in pick] for k in STABILITY}
        for name, xp, s in _perturbations(x[pick], cfg, ctx, pick_ids):
            same = ex.logits(xp).argmax(axis=1) == target[pick]
            changed[pick] += ~same
            for j, (meth, base_all) in enumerate(maps.items()):
                mp = _explain(cfg, ex, meth, xp, target[pick], ctx, name, pick_ids)
                scores = _similarities(base_all[pick], mp, s, cfg.topk_fraction)
                for key, vals in scores.items():
                    for r in np.flatnonzero(same if key != "max_sensitivity" else np.ones_like(same)):
                        acc[key][r][j].append(vals[r])
        for key in STABILITY:
            for r, row in zip(pick, acc[key]):
                for j, got in enumerate(row):
                    if got:
                        out[key][r, j] = np.max(got) if key == "max_sensitivity" else np.mean(got)
    return {**out, "stability_changed": changed, "stability_role": rows}


def _randomization_scores(cfg: SaliencyConfig, ex: Explainer, x: np.ndarray, target: np.ndarray,
                          maps: dict[str, np.ndarray], rows: np.ndarray, ctx: AuditContext, ids: list[str]) -> Records:
    """Per image of the randomisation set: similarity ``(B, G, M)`` with the original map
    after each step of the randomisation (cascading; also independent when configured)."""
    labels = ex.randomization_groups(cfg.randomization_steps)
    n, g, m = len(x), len(labels), len(maps)
    out: Records = {"rand_steps": np.tile(np.array(labels, dtype=str), (n, 1)), "rand_role": rows}
    pick = np.flatnonzero(rows)
    pick_ids = [ids[r] for r in pick]
    seed = ctx.seed_for("saliency", "randomization")
    for variant in variants(cfg):
        sims = {k: np.full((n, g, m), np.nan, np.float32) for k in ("spearman", "ssim")}
        if len(pick):
            with ex.randomized(seed=seed, steps=cfg.randomization_steps, cascade=variant == "cascading") as steps:
                for k, _ in enumerate(steps):
                    for j, (meth, base) in enumerate(maps.items()):
                        mr = _explain(cfg, ex, meth, x[pick], target[pick], ctx, "randomized", pick_ids)
                        sims["spearman"][pick, k, j] = np.nan_to_num(SM.spearman(base[pick], mr), nan=0.0)
                        sims["ssim"][pick, k, j] = SM.ssim(base[pick], mr)
        out |= {f"rand_{variant}_{k}": v for k, v in sims.items()}
    return out


def _activation_maps(cfg: SaliencyConfig, ex: Explainer, x: np.ndarray, rows: np.ndarray) -> Records:
    """For the panel's images: the strongest channels of a few layers, small maps ``(B, L, C, S, S)``."""
    layers = [] if cfg.n_activation_layers == 0 else list(cfg.layers) or ex.panel_layers(cfg.n_activation_layers)
    n, nl, nc = len(x), len(layers), cfg.n_channels
    out: Records = {"act_role": rows, "act_layers": np.tile(np.array(layers, dtype=str).reshape(1, nl), (n, 1)),
                    "act_channels": np.full((n, nl, nc), -1, np.int32),
                    "act_maps": np.full((n, nl, nc, ACT_SIDE, ACT_SIDE), np.nan, np.float32)}
    pick = np.flatnonzero(rows)
    if not len(pick) or not layers:
        return out
    for li, feats in enumerate(ex.activations(x[pick], layers)):
        for i, r in enumerate(pick):
            top = np.argsort(-feats[i].mean(axis=(0, 1)), kind="mergesort")[:nc]
            out["act_channels"][r, li, : len(top)] = top
            for ci, ch in enumerate(top):
                out["act_maps"][r, li, ci] = area_resize(SM.minmax(feats[i][..., ch])[0], ACT_SIDE, ACT_SIDE)
    return out


# ------------------------------------------------------------------ plan and map helpers


def _spread(labels: np.ndarray, n: int | None) -> np.ndarray:
    """``n`` positions spread evenly over the samples sorted by class (deterministic)."""
    order = np.argsort(labels, kind="mergesort")
    if n is None or n >= len(order):
        return np.sort(order)
    return np.sort(order[np.linspace(0, len(order) - 1, n).round().astype(int)])


class _Passes:
    """Model passes per sample: each stage's passes shared evenly by the samples it worked on."""

    def __init__(self, ex: Explainer, n: int) -> None:
        self.ex = ex
        self.grad = np.zeros(n, np.int64)
        self.forward = np.zeros(n, np.int64)

    @contextmanager
    def stage(self, rows: np.ndarray) -> Iterator[None]:
        g0, f0 = self.ex.grad_points, self.ex.forward_points
        yield
        k = int(rows.sum())
        for counts, delta in ((self.grad, self.ex.grad_points - g0), (self.forward, self.ex.forward_points - f0)):
            assert delta == 0 or (k and delta % k == 0), "a stage's passes must be the same for each of its samples"
            if delta:
                counts[rows] += delta // k

    def records(self) -> Records:
        return {"grad_passes": self.grad, "forward_passes": self.forward}


def _completeness_terms(ex: Explainer, attr: np.ndarray, logits: np.ndarray, target: np.ndarray) -> Records:
    """|sum of IG attributions - (logit(x) - logit(black))| and |logit difference| per image."""
    z0 = ex.baseline_logits(0.0)
    n = len(attr)
    delta = logits[np.arange(n), target] - z0[target]
    gap = np.abs(attr.reshape(n, -1).sum(axis=1) - delta)
    return {"ig_gap": gap.astype(np.float64), "ig_delta": np.abs(delta).astype(np.float64)}


def _perturbations(x: np.ndarray, cfg: SaliencyConfig, ctx: AuditContext,
                   ids: list[str]) -> list[tuple[str, np.ndarray, int]]:
    """``(name, images, shift)`` of the stability copies; the noise is drawn per sample id."""
    noise = np.stack([ctx.rng("saliency", "stability", sid).normal(0, cfg.noise_sigma, (cfg.n_noise, *x.shape[1:]))
                      for sid in ids], axis=1)
    out = [(f"noise_{i + 1}", np.clip(x + noise[i], 0, 1).astype(np.float32), 0) for i in range(cfg.n_noise)]
    if cfg.brightness:
        out.append(("brightness", np.clip(x + cfg.brightness, 0, 1).astype(np.float32), 0))
    s = cfg.shift
    if s:
        shifted = np.pad(x, ((0, 0), (s, 0), (s, 0), (0, 0)), mode="edge")[:, : x.shape[1], : x.shape[2]]
        out.append(("shift", np.ascontiguousarray(shifted), s))
    return out


def _similarities(base: np.ndarray, mp: np.ndarray, s: int, topk: float) -> dict[str, np.ndarray]:
    """Spearman, SSIM, top-k (and, unshifted, the relative change) of maps vs perturbed maps."""
    a, b = (base[:, : base.shape[1] - s, : base.shape[2] - s], mp[:, s:, s:]) if s else (base, mp)
    scores = {"stability_spearman": np.nan_to_num(SM.spearman(a, b), nan=0.0), "stability_ssim": SM.ssim(a, b),
              "stability_topk": SM.topk_intersection(a, b, fraction=topk)}
    if not s:
        scores["max_sensitivity"] = SM.relative_change(a, b)
    return scores


def _deletion_probs(ex: Explainer, x: np.ndarray, target: np.ndarray, logits: np.ndarray,
                    maps: dict[str, np.ndarray], ctx: AuditContext, ids: list[str], cfg: SaliencyConfig) -> Records:
    """Probability of the explained class as pixels are removed, ``(B, M + 1, steps + 1)``
    (the last method is a random order drawn per sample id)."""
    fractions = np.linspace(0.0, 1.0, cfg.deletion_steps + 1)
    inner = fractions[1:-1]
    n = len(x)
    kind = ex.adapter.output_kind
    p0 = probabilities(logits, kind)[np.arange(n), target]
    full = np.stack([SM.deletion_images(img, np.zeros(img.shape[:2]), np.ones(1), fill=cfg.deletion_fill)[0]
                     for img in x])
    p1 = probabilities(ex.logits(full), kind)[np.arange(n), target]
    cols = [*maps.values(), np.stack([ctx.rng("saliency", "deletion_random", sid).random(x.shape[1:3]) for sid in ids])]
    probs = np.empty((n, len(cols), len(fractions)), np.float32)
    probs[:, :, 0], probs[:, :, -1] = p0[:, None], p1[:, None]
    per_call = max(1, 4 * ex.adapter.batch_size // max(1, len(inner)))
    for j, mp in enumerate(cols):
        for i in range(0, n, per_call):
            sl = slice(i, min(n, i + per_call))
            steps = np.concatenate([SM.deletion_images(x[r], mp[r], inner, fill=cfg.deletion_fill)
                                    for r in range(sl.start, sl.stop)])
            pr = probabilities(ex.logits(steps), kind).reshape(sl.stop - sl.start, len(inner), -1)
            probs[sl, j, 1:-1] = np.take_along_axis(pr, target[sl, None, None], axis=2)[..., 0]
    return {"deletion_probs": probs}


def _lung_share_scores(batch: Dataset, maps: dict[str, np.ndarray], ctx: AuditContext, ids: list[str],
                       size: tuple[int, int]) -> Records:
    """Share of each method's |attribution| inside the lung fields ``(B, M + 1)`` (last column:
    a uniform random map drawn per sample id) and the lungs' share of the image ``(B,)``; NaN
    for an image without a lung mask."""
    n, (h, w) = len(ids), size
    shares = np.full((n, len(maps) + 1), np.nan, np.float32)
    area = np.full(n, np.nan, np.float32)
    rows = np.flatnonzero([s.lung_mask_path is not None for s in batch.samples])
    if len(rows):
        lungs = batch.load_masks(rows, size=size, kind="lung")
        rand = np.stack([ctx.rng("saliency", "lung_random", ids[r]).random((h, w)) for r in rows])
        cols = [m[rows] for m in maps.values()] + [rand]
        shares[rows] = np.stack([SM.mask_share(m, lungs) for m in cols], axis=1)
        area[rows] = SM.area_share(lungs)
    return {"lung_share": shares, "lung_area": area}


def _localization_scores(cfg: SaliencyConfig, ex: Explainer, x: np.ndarray, maps: dict[str, np.ndarray],
                         batch: Dataset, ctx: AuditContext, ids: list[str], stage: Stage) -> Records:
    """Localisation per (image, output present, method): each output's map scored against that
    output's mask, beside a uniform random map drawn per sample id.

    One path for every task: the outputs present on an image are its targets (one-hot for
    single-label data). Where the math differs:

    * exclusive outputs: the map is the image's clean map, which explains the *predicted* class,
      scored against the image's lesion mask (so an image counts under its true class);
    * several outputs per image: each output present is explained on its own (the explainers'
      target is that output) and scored against that output's own mask; its maps are stored
      small as ``output_thumbs`` for the gallery.

    Returns:
        ``localization_<metric>`` ``(B, K, M + 1)`` per metric of :data:`LOC_FNS` (last column: the
        random map; NaN where the output is absent or its mask is empty), ``localization_has_mask``
        ``(B, K)`` and, for non-exclusive tasks, ``output_thumbs`` ``(B, K, M, h, w)`` (NaN where absent).
    """
    exclusive = is_exclusive(ctx)
    targets, names = np.asarray(batch.targets, bool), list(batch.class_names)
    (n, k_all), m, size = targets.shape, len(maps), x.shape[1:3]
    out: Records = {f"localization_{key}": np.full((n, k_all, m + 1), np.nan, np.float32) for key in LOC_FNS}
    out["localization_has_mask"] = np.zeros((n, k_all), bool)
    if not exclusive:  # the thumbnails' shape comes from the image size, never from which outputs a batch has
        out["output_thumbs"] = np.full((n, k_all, *thumbnails({mt: np.zeros((1, *size)) for mt in maps}).shape[1:]),
                                       np.nan, np.float32)
    for k, name in enumerate(names):
        rows = np.flatnonzero(targets[:, k])
        if not len(rows):
            continue
        row_ids = [ids[r] for r in rows]
        if exclusive:
            own = {meth: mp[rows] for meth, mp in maps.items()}
            masks = batch.load_masks(rows, size=size)
            rand = np.stack([ctx.rng("saliency", "random_map", sid).random(size) for sid in row_ids])
        else:
            with stage(targets[:, k]):  # SmoothGrad's seed key is the earlier releases' (same noise, same maps)
                own = {meth: _explain(cfg, ex, meth, x[rows], np.full(len(rows), k, np.int32), ctx,
                                      f"finding/{name}", row_ids) for meth in maps}
            out["output_thumbs"][rows, k] = thumbnails(own)
            masks = batch.load_masks(rows, size=size, finding=name)
            rand = np.stack([ctx.rng("saliency", "random_map", sid, name).random(size) for sid in row_ids])
        for key, fn in LOC_FNS.items():
            out[f"localization_{key}"][rows, k] = np.stack([fn(mp, masks) for mp in [*own.values(), rand]], axis=1)
        out["localization_has_mask"][rows, k] = masks.reshape(len(rows), -1).any(axis=1)
    return out
