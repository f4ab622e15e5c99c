"""Study ``saliency``: attribution maps, and checks that they mean something.

Four methods (vanilla gradient, SmoothGrad, Integrated Gradients, Grad-CAM; see
:mod:`robustkit.model.explainers`) explain the logit of the predicted class. The study measures

* stability: similarity of each map with the maps of slightly perturbed copies (Gaussian
  noise, a brightness change, a shift whose map is shifted back), over samples whose
  prediction does not change, plus the max-sensitivity (Yeh et al. 2019);
* the model-randomisation sanity check (Adebayo et al. 2018): weights re-initialised top
  down, block by block; a method passes when its maps stop resembling the original;
* localisation against lesion masks (pointing game, relevance mass, relevance rank
  accuracy) beside a uniform random map; images with empty masks (NORMAL) are left out;
* faithfulness: the deletion curve (most relevant pixels replaced first) and its area.

Multi-label models (``multilabel = True``): every finding present on an image is explained on
its own (the explainers' target is that finding's output) and localised against that
finding's mask, ``localization.<metric>.<method>.<finding>``; stability, randomisation,
deletion and completeness explain each image's top-scoring finding (see
:mod:`robustkit.studies.saliency_findings`).

The study's cost is its gradient passes: SmoothGrad samples and IG steps run as big
compiled batches. :meth:`SaliencyStudy.map` does all of that work per sample (every random
draw keyed by the sample id; the randomised networks come from the explainer, keyed by the
seed and the block); :meth:`SaliencyStudy.reduce` turns the records into metrics, curves,
checks and the report's data. It never plots: it stores small float maps, and the report
colours and draws them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.errors import ConfigError, check_choice, check_range
from robustkit.metrics import saliency as SM
from robustkit.metrics.outputs import probabilities
from robustkit.model.explainers import METHODS, Explainer
from robustkit.results import Check, StudyResult
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Records, Study, StudyConfig
from robustkit.studies.saliency_findings import (
    beats_random_checks,
    finding_gallery,
    finding_localization,
    finding_scores,
)

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["SaliencyConfig", "SaliencyStudy"]

_WHERE = "study 'saliency'"
_LOC = ("pointing_game", "mass", "rank_accuracy")


@dataclass(frozen=True)
class SaliencyConfig(StudyConfig):
    """Options of the saliency study.

    Attributes:
        methods: attribution methods, from ``vanilla_gradient``, ``smoothgrad``,
            ``integrated_gradients``, ``gradcam``.
        layer: the Grad-CAM layer (``name`` or ``nested_model/name``); empty: the last
            4-D feature map before pooling (``mixed10`` for InceptionV3).
        layers: layers of the activation-map panel; empty: spread from stem to ``layer``.
        smoothgrad_n, smoothgrad_noise: SmoothGrad samples and noise sigma as a share of
            each image's value range.
        ig_steps: Integrated Gradients steps (midpoint rule, black baseline in pixel space).
        stability_samples: images used for stability (stratified spread; None: all).
        noise_sigma, n_noise: Gaussian noise copies for stability; brightness: added
            offset; shift: pixels of the diagonal shift (its map is shifted back).
        topk_fraction: share of pixels in the top-k intersection.
        randomization_samples: images of the randomisation check.
        randomization_steps: cascade steps (blocks merged into that many groups; None: every block).
        randomization_threshold: a method passes when its mean similarity with the original
            map after the full cascade is below this.
        randomization_metric: the similarity the pass rule reads: ``ssim`` (default) or
            ``spearman``. Both are always reported. Rank correlation of *absolute* maps stays
            high for any map that follows image edges, which the gradients of a random
            network also do (Adebayo et al. 2018 discuss it for their ABS maps); SSIM compares
            the maps' structure and drops when the model no longer shapes them.
        independent: also randomise each group alone (the independent variant).
        deletion_steps, deletion_fill: deletion-curve steps and what replaces removed
            pixels (``mean`` of the image per channel, or ``black``).
        n_gallery: report gallery images per class; n_activation_layers, n_channels: panel size.
    """

    max_samples: int | None = 45
    methods: tuple[str, ...] = METHODS
    layer: str = ""
    layers: tuple[str, ...] = ()
    smoothgrad_n: int = 25
    smoothgrad_noise: float = 0.15
    ig_steps: int = 64
    stability_samples: int | None = 24
    noise_sigma: float = 0.02
    n_noise: int = 2
    brightness: float = 0.05
    shift: int = 2
    topk_fraction: float = 0.1
    randomization_samples: int = 4
    randomization_steps: int | None = 6
    randomization_threshold: float = 0.5
    randomization_metric: str = "ssim"
    independent: bool = False
    deletion_steps: int = 20
    deletion_fill: str = "mean"
    n_gallery: int = 2
    n_activation_layers: int = 4
    n_channels: int = 4

    def validate(self) -> None:
        super().validate()
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"The 'methods' parameter of {_WHERE} must be a non-empty list without repeats; "
                              f"got {list(self.methods)}.")
        for m in self.methods:
            check_choice("methods", m, METHODS, where=_WHERE)
        check_choice("deletion_fill", self.deletion_fill, ("mean", "black"), where=_WHERE)
        check_choice("randomization_metric", self.randomization_metric, ("ssim", "spearman"), where=_WHERE)
        for name, low in (("smoothgrad_n", 1), ("ig_steps", 2), ("n_noise", 0), ("shift", 0),
                          ("randomization_samples", 1), ("deletion_steps", 2), ("n_gallery", 0),
                          ("n_activation_layers", 0), ("n_channels", 1)):
            check_range(name, getattr(self, name), low=low, integer=True, where=_WHERE)
        for name in ("stability_samples", "randomization_steps"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), low=1, integer=True, where=_WHERE)
        check_range("smoothgrad_noise", self.smoothgrad_noise, low=0.0, high=1.0, where=_WHERE)
        check_range("noise_sigma", self.noise_sigma, low=0.0, high=0.5, where=_WHERE)
        check_range("brightness", self.brightness, low=-0.5, high=0.5, where=_WHERE)
        check_range("topk_fraction", self.topk_fraction, low=1e-6, high=1.0, where=_WHERE)
        check_range("randomization_threshold", self.randomization_threshold, low=-1.0, high=1.0, where=_WHERE)


@register
class SaliencyStudy(Study):
    name = "saliency"
    description = (
        "Which pixels the model's decision rests on, by four attribution methods, and whether those "
        "maps can be trusted: are they stable under small changes of the image, do they change when "
        "the model's weights are randomised (if not, they do not explain the model), do they point "
        "at the lesion, and does removing the pixels they rank highest lower the class probability."
    )
    Config = SaliencyConfig
    profiles = {
        "quick": {"methods": ["vanilla_gradient", "gradcam"], "max_samples": 12, "stability_samples": 12,
                  "randomization_steps": 2, "randomization_samples": 3, "n_gallery": 1, "deletion_steps": 10},
        "standard": {},
        "full": {"max_samples": 90, "stability_samples": None, "randomization_steps": None,
                 "randomization_samples": 6, "independent": True},
    }
    metric_docs = {
        "stability": ("mean similarity (Spearman, SSIM or top-k intersection) of a map with the maps of "
                      "slightly perturbed copies whose prediction did not change", "higher"),
        "max_sensitivity": ("largest relative L2 change of the map under the noise and brightness "
                            "perturbations (Yeh et al. 2019), mean over images", "lower"),
        "randomization": ("similarity of the map with the original after the cascading weight "
                          "randomisation (a trustworthy method drops towards 0)", "lower"),
        "localization": ("agreement of the map with the lesion mask (pointing game, relevance mass, "
                         "relevance rank accuracy); `.random` is a uniform random map; multi-label: each "
                         "finding's map against that finding's mask, `localization.<metric>.<method>.<finding>`, "
                         "pooled over the (image, finding) pairs with a mask", "higher"),
        "lung_share": ("share of |attribution| inside the lung fields (lung masks; DeGrave et al. "
                       "2021); `.random` is a uniform random map", "higher"),
        "lung_area_share": ("the lung fields' share of the image (what a uniform map scores)", "none"),
        "deletion_auc": ("area under the class probability as the most relevant pixels are removed "
                         "first (lower: the map found the pixels the decision rests on)", "lower"),
        "completeness_error": ("|sum of IG attributions - logit difference| / |logit difference|, "
                               "pooled over images", "lower"),
        "n_samples": ("number of images explained", "none"),
        "n_localization_excluded": ("images left out of localisation because their mask is empty (multi-label: "
                                    "(image, finding) pairs without the finding's mask)", "none"),
        "n_stability_changed": ("(image, perturbation) pairs left out because the prediction changed", "none"),
    }
    headline = ("localization.mass.gradcam", "randomization.spearman.gradcam", "stability.spearman.gradcam")
    multilabel = True


    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """Which of the study's samples take part in each sub-study: the stability and
        randomisation images (an even spread over the classes) and the activation-panel
        images (the first of each class), chosen over the whole study's samples on the
        driver, so that every shard and batch agrees on them."""
        self._sub_studies = _plan(data, self.config)

    def _roles(self, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
        plan = getattr(self, "_sub_studies", None)
        if plan is None:
            raise AssertionError("study 'saliency': map() before prepare() (no sub-study plan)")
        ids = batch.ids
        return {role: np.isin(ids, sorted(members)) for role, members in plan.items()}

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> Records:
        """Per-sample maps and scores of ``batch``: every model pass of the study happens here."""
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        ex = Explainer.cached(model, layer=cfg.layer)
        roles = self._roles(batch, ctx)
        h, w, c = model.input_shape
        x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
        logits = ctx.clean_logits(model, batch)
        target = logits.argmax(axis=1).astype(np.int32)
        ids = [str(i) for i in batch.ids]
        passes = _Passes(ex, len(x))
        passes.forward += 1  # the clean pass (computed once per audit, shared with other studies)
        everyone = np.ones(len(x), bool)
        with passes.stage(everyone):
            maps, attr = self._clean_maps(ex, x, target, ctx, ids)
        rec: Records = {"target": target, "thumbs": _thumbnails(maps), "gradcam_layer": np.full(len(x), ex.layer)}
        if attr is not None:
            rec |= _completeness_terms(ex, attr, logits, target)
        with passes.stage(roles["stability"]):
            rec |= self._stability_scores(ex, x, target, maps, roles["stability"], ctx, ids)
        with passes.stage(roles["randomization"]):
            rec |= self._randomization_scores(ex, x, target, maps, roles["randomization"], ctx, ids)
        if model.output_kind == "multilabel":
            rec |= finding_scores(lambda meth, xs, t, key, sids: self._explain(ex, meth, xs, t, ctx, key, sids),
                                  _thumbnails, list(cfg.methods), batch, x, ctx, ids, passes.stage)
            rec["logits"] = logits
        else:
            rec |= _localization_scores(batch, maps, ctx, ids, (h, w))
        rec |= _lung_share_scores(batch, maps, ctx, ids, (h, w))
        with passes.stage(everyone):
            rec |= _deletion_probs(ex, x, target, logits, maps, ctx, ids, cfg)
        with passes.stage(roles["activations"]):
            rec |= self._activation_maps(ex, x, roles["activations"])
        return rec | passes.records()

    def reduce(self, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
        """Metrics, curves, tables, checks and report data from every sample's records (no model)."""
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        methods = list(cfg.methods)
        result = StudyResult(name=self.name)
        result.metrics["n_samples"] = float(len(data))
        result.records["target"] = records["target"].astype(np.int16)
        multilabel = ctx.model_info.get("output_kind") == "multilabel"
        stages = [_stability(records, methods, cfg), _randomization(records, methods, cfg),
                  finding_localization(records, data, methods) if multilabel else _localization(records, data, methods),
                  _lung_share(records, methods),
                  _deletion(records, methods, cfg)]
        if "integrated_gradients" in methods:
            stages.insert(0, _completeness(records, cfg))
        for part in stages:
            _absorb(result, part)
        result.data.update(_report_data(records, data, methods, cfg, ctx))
        result.records.update(map_thumbs=records["thumbs"], activation_maps=records["act_maps"])
        if multilabel:
            result.records["finding_thumbs"] = records["finding_thumbs"]
        result.data["record_columns"] = methods + ["random"]
        baseline = 1 if "integrated_gradients" in methods else 0  # the black image, once per audit
        result.data["passes"] = {"gradient": int(records["grad_passes"].sum()),
                                 "forward": int(records["forward_passes"].sum()) + baseline}
        return result

    # ------------------------------------------------------------------ map stages (model work)

    def _explain(self, ex: Explainer, method: str, x: np.ndarray, target: np.ndarray, ctx: AuditContext,
                 key: str, ids: list[str]) -> np.ndarray:
        """Min-max scaled maps ``(B, H, W)``; SmoothGrad's noise seeded per sample id."""
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        seeds = np.array([ctx.seed_for("saliency", method, key, sid) for sid in ids], np.int64) \
            if method == "smoothgrad" else 0
        out = ex.explain(method, x, target, smoothgrad_n=cfg.smoothgrad_n, smoothgrad_noise=cfg.smoothgrad_noise,
                         ig_steps=cfg.ig_steps, seed=seeds)
        return SM.minmax(out).astype(np.float32)

    def _clean_maps(self, ex: Explainer, x: np.ndarray, target: np.ndarray, ctx: AuditContext,
                    ids: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Every method's map of the images, and the IG attributions ``(B, H, W, C)`` (one IG pass)."""
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        maps, attr = {}, None
        for method in cfg.methods:
            if method == "integrated_gradients":
                raw, attr = ex.integrated_gradients(x, target, steps=cfg.ig_steps)
                maps[method] = SM.minmax(raw).astype(np.float32)
            else:
                maps[method] = self._explain(ex, method, x, target, ctx, "clean", ids)
        return maps, attr

    def _stability_scores(self, ex: Explainer, x: np.ndarray, target: np.ndarray, maps: dict[str, np.ndarray],
                          rows: np.ndarray, ctx: AuditContext, ids: list[str]) -> Records:
        """Per image of the stability set: similarity with its perturbed copies' maps ``(B, M)``."""
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        n, m = len(x), len(maps)
        out = {k: np.full((n, m), np.nan, np.float32) for k in _STABILITY}
        changed = np.zeros(n, np.int32)
        pick = np.flatnonzero(rows)
        if len(pick):
            pick_ids = [ids[r] for r in pick]
            acc: dict[str, list[list[list[float]]]] = {k: [[[] for _ in maps] for _ in pick] for k in _STABILITY}
            for name, xp, s in _perturbations(x[pick], cfg, ctx, pick_ids):
                same = ex.logits(xp).argmax(axis=1) == target[pick]
                changed[pick] += ~same
                for j, (meth, base_all) in enumerate(maps.items()):
                    mp = self._explain(ex, meth, xp, target[pick], ctx, name, pick_ids)
                    scores = _similarities(base_all[pick], mp, s, cfg.topk_fraction)
                    for key, vals in scores.items():
                        for r in np.flatnonzero(same if key != "max_sensitivity" else np.ones_like(same)):
                            acc[key][r][j].append(vals[r])
            for key in _STABILITY:
                for r, row in zip(pick, acc[key]):
                    for j, got in enumerate(row):
                        if got:
                            out[key][r, j] = np.max(got) if key == "max_sensitivity" else np.mean(got)
        return {**out, "stability_changed": changed, "stability_role": rows}

    def _randomization_scores(self, ex: Explainer, x: np.ndarray, target: np.ndarray, maps: dict[str, np.ndarray],
                              rows: np.ndarray, ctx: AuditContext, ids: list[str]) -> Records:
        """Per image of the randomisation set: similarity ``(B, G, M)`` with the original map
        after each step of the randomisation (cascading; also independent when configured)."""
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        labels = ex.randomization_groups(cfg.randomization_steps)
        n, g, m = len(x), len(labels), len(maps)
        out: Records = {"rand_steps": np.tile(np.array(labels, dtype=str), (n, 1)), "rand_role": rows}
        pick = np.flatnonzero(rows)
        pick_ids = [ids[r] for r in pick]
        seed = ctx.seed_for("saliency", "randomization")
        for variant in _variants(cfg):
            sims = {k: np.full((n, g, m), np.nan, np.float32) for k in ("spearman", "ssim")}
            if len(pick):
                with ex.randomized(seed=seed, steps=cfg.randomization_steps, cascade=variant == "cascading") as steps:
                    for k, _ in enumerate(steps):
                        for j, (meth, base) in enumerate(maps.items()):
                            mr = self._explain(ex, meth, x[pick], target[pick], ctx, "randomized", pick_ids)
                            sims["spearman"][pick, k, j] = np.nan_to_num(SM.spearman(base[pick], mr), nan=0.0)
                            sims["ssim"][pick, k, j] = SM.ssim(base[pick], mr)
            out |= {f"rand_{variant}_{k}": v for k, v in sims.items()}
        return out

    def _activation_maps(self, ex: Explainer, x: np.ndarray, rows: np.ndarray) -> Records:
        """For the panel's images: the strongest channels of a few layers, small maps ``(B, L, C, S, S)``."""
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        layers = [] if cfg.n_activation_layers == 0 else list(cfg.layers) or ex.panel_layers(cfg.n_activation_layers)
        n, nl, nc = len(x), len(layers), cfg.n_channels
        out: Records = {"act_role": rows, "act_layers": np.tile(np.array(layers, dtype=str).reshape(1, nl), (n, 1)),
                        "act_channels": np.full((n, nl, nc), -1, np.int32),
                        "act_maps": np.full((n, nl, nc, _ACT_SIDE, _ACT_SIDE), np.nan, np.float32)}
        pick = np.flatnonzero(rows)
        if not len(pick) or not layers:
            return out
        for li, feats in enumerate(ex.activations(x[pick], layers)):
            for i, r in enumerate(pick):
                top = np.argsort(-feats[i].mean(axis=(0, 1)), kind="mergesort")[:nc]
                out["act_channels"][r, li, : len(top)] = top
                for ci, ch in enumerate(top):
                    out["act_maps"][r, li, ci] = _area_resize(SM.minmax(feats[i][..., ch])[0], _ACT_SIDE, _ACT_SIDE)
        return out


# ------------------------------------------------------------------ plan and map helpers

_STABILITY = ("stability_spearman", "stability_ssim", "stability_topk", "max_sensitivity")
_THUMB = 56  # longest side of the stored gallery maps (the report enlarges them to 112 px)
_ACT_SIDE = 32  # side of the stored activation maps


def _spread(labels: np.ndarray, n: int | None) -> np.ndarray:
    """``n`` positions spread evenly over the samples sorted by class (deterministic)."""
    order = np.argsort(labels, kind="mergesort")
    if n is None or n >= len(order):
        return np.sort(order)
    return np.sort(order[np.linspace(0, len(order) - 1, n).round().astype(int)])


def _plan(data: Dataset, cfg: SaliencyConfig) -> dict[str, frozenset[str]]:
    """Sample ids of each sub-study: stability, randomisation, activation panel."""
    ids, labels = data.ids, np.asarray(data.labels)
    first = [int(np.flatnonzero(labels == k)[0]) for k in range(len(data.class_names)) if (labels == k).any()]
    return {"stability": frozenset(ids[_spread(labels, cfg.stability_samples)].tolist()),
            "randomization": frozenset(ids[_spread(labels, cfg.randomization_samples)].tolist()),
            "activations": frozenset(ids[first].tolist())}


def _variants(cfg: SaliencyConfig) -> tuple[str, ...]:
    return ("cascading", "independent") if cfg.independent else ("cascading",)


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


def _perturbation_names(cfg: SaliencyConfig) -> list[str]:
    return [f"noise_{i + 1}" for i in range(cfg.n_noise)] + (["brightness"] if cfg.brightness else []) \
        + (["shift"] if cfg.shift else [])


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


_LOC_FNS = {"pointing_game": SM.pointing_game, "mass": SM.relevance_mass, "rank_accuracy": SM.relevance_rank_accuracy}


def _localization_scores(batch: Dataset, maps: dict[str, np.ndarray], ctx: AuditContext, ids: list[str],
                         size: tuple[int, int]) -> Records:
    """Localisation scores ``(B, M + 1)`` against the lesion masks (NaN: empty mask); the last
    column is a uniform random map drawn per sample id."""
    n, (h, w) = len(ids), size
    masks = batch.load_masks(np.arange(n), size=size) if batch.has_masks else np.zeros((n, h, w), bool)
    rand = np.stack([ctx.rng("saliency", "random_map", sid).random((h, w)) for sid in ids])
    cols = [*maps.values(), rand]
    out: Records = {key: np.stack([fn(mp, masks) for mp in cols], axis=1).astype(np.float32)
                    for key, fn in _LOC_FNS.items()}
    out["has_mask"] = np.asarray(masks.reshape(n, -1).any(axis=1))
    return out


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


def _area_resize(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Mean of ``a`` ``(H, W)`` over each cell of an ``out_h x out_w`` grid (nearest when enlarging)."""
    h, w = a.shape
    rows = np.minimum((np.arange(out_h + 1) * h) // out_h, h)
    cols = np.minimum((np.arange(out_w + 1) * w) // out_w, w)
    r1, c1 = np.maximum(rows[1:], rows[:-1] + 1), np.maximum(cols[1:], cols[:-1] + 1)
    r0, c0 = np.minimum(rows[:-1], h - 1), np.minimum(cols[:-1], w - 1)
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = np.asarray(a, np.float64).cumsum(0).cumsum(1)
    total = (integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0])
    return (total / np.outer(r1 - r0, c1 - c0)).astype(np.float32)


def _thumb_shape(h: int, w: int) -> tuple[int, int]:
    scale = min(1.0, _THUMB / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _thumbnails(maps: dict[str, np.ndarray]) -> np.ndarray:
    """Every method's map, area-averaged to at most :data:`_THUMB` pixels a side: ``(B, M, h, w)``."""
    first = next(iter(maps.values()))
    th, tw = _thumb_shape(*first.shape[1:3])
    return np.stack([[_area_resize(mp[r], th, tw) for mp in maps.values()] for r in range(len(first))]) \
        .reshape(len(first), len(maps), th, tw)


# ------------------------------------------------------------------ reduce stages (no model)


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
        for key, metric in zip(_STABILITY, ("stability.spearman", "stability.ssim", "stability.topk",
                                            "max_sensitivity")):
            part.metrics[f"{metric}.{meth}"] = _nanmean(records[key][:, j])
    changed = int(records["stability_changed"].sum())
    part.metrics["n_stability_changed"] = float(changed)
    part.records.update({key: records[key] for key in _STABILITY})
    part.tables["stability"] = [
        {"method": meth, "spearman": part.metrics[f"stability.spearman.{meth}"],
         "ssim": part.metrics[f"stability.ssim.{meth}"], "top-k": part.metrics[f"stability.topk.{meth}"],
         "max_sensitivity": part.metrics[f"max_sensitivity.{meth}"]} for meth in methods
    ]
    part.data["stability"] = {"perturbations": _perturbation_names(cfg),
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
    out: dict[str, Any] = {variant: _curves(records, variant, methods) for variant in _variants(cfg)}
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


def _localization(records: Records, data: Dataset, methods: list[str]) -> StudyResult:
    part = StudyResult(name="saliency")
    if not data.has_masks:
        part.checks.append(Check("localisation", "warn", "the dataset has no lesion masks: localisation skipped."))
        return part
    has, labels, names = records["has_mask"], np.asarray(data.labels), list(data.class_names)
    part.metrics["n_localization_excluded"] = float((~has).sum())
    cols = [*methods, "random"]
    for j, meth in enumerate(cols):
        for key in _LOC:
            vals = records[key][:, j]
            part.metrics[f"localization.{key}.{meth}"] = _nanmean(vals)
            for k, cls in enumerate(names):
                sel = (labels == k) & has
                if sel.any():
                    part.metrics[f"localization.{key}.{meth}.{cls}"] = _nanmean(vals[sel])
    part.records.update({key: records[key] for key in _LOC})
    part.tables["localization"] = [
        {"method": meth, **{key: part.metrics[f"localization.{key}.{meth}"] for key in _LOC}} for meth in cols]
    part.data["localization"] = {
        "excluded_by_class": {cls: int(((labels == k) & ~has).sum()) for k, cls in enumerate(names)},
        "n_images": int(has.sum())}
    part.checks += beats_random_checks(part.metrics, methods)
    return part


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


# ------------------------------------------------------------------ report data (small float maps only)


def _grid(a: np.ndarray) -> list[Any]:
    """A small image read from the data side as nested lists (rounded: the report only draws it;
    the model's maps, which carry float noise, are records: ``map_thumbs``, ``activation_maps``)."""
    return np.round(np.asarray(a, np.float64), 3).tolist()


def _gray_thumbs(data: Dataset, rows: np.ndarray, ctx: AuditContext, shape: tuple[int, int]) -> np.ndarray:
    """The images at ``rows``, as the model sees them, in grey and area-averaged to ``shape``."""
    h, w, c = ctx.input_shape or (*shape, 1)
    x = data.load_images(rows, size=(h, w), channels=c)
    return np.stack([_area_resize(img.mean(axis=-1), *shape) for img in x]) if len(rows) else np.zeros((0, *shape))


def _mask_thumbs(data: Dataset, rows: np.ndarray, ctx: AuditContext, shape: tuple[int, int]) -> list[Any]:
    if not data.has_masks:
        return [None] * len(rows)
    h, w, _ = ctx.input_shape or (*shape, 1)
    masks = data.load_masks(rows, size=(h, w))
    return [(_area_resize(mk, *shape) > 0).astype(int).tolist() if mk.any() else None for mk in masks]


def _gallery(records: Records, data: Dataset, methods: list[str], cfg: SaliencyConfig,
             ctx: AuditContext) -> list[dict[str, Any]]:
    labels, names = np.asarray(data.labels), list(data.class_names)
    thumbs = records["thumbs"]
    shape = (int(thumbs.shape[2]), int(thumbs.shape[3]))
    out = []
    for k, cls in enumerate(names):
        rows = np.flatnonzero(labels == k)[: cfg.n_gallery]
        images, masks = _gray_thumbs(data, rows, ctx, shape), _mask_thumbs(data, rows, ctx, shape)
        items = [{"id": str(data.ids[r]), "label": cls, "pred": names[int(records["target"][r])],
                  "image": _grid(img), "mask": mask, "row": int(r),
                  "maps": [{"method": m, "column": j} for j, m in enumerate(methods)]}
                 for r, img, mask in zip(rows, images, masks)]
        if items:
            out.append({"class": cls, "items": items})
    return out


def _activation_panel(records: Records, data: Dataset, ctx: AuditContext) -> dict[str, Any]:
    rows = np.flatnonzero(records["act_role"])
    layers = [str(s) for s in records["act_layers"][rows[0]]] if len(rows) else []
    if not layers:
        return {"layers": [], "images": []}
    labels = np.asarray(data.labels)
    rows = rows[np.argsort(labels[rows], kind="mergesort")]
    grays = _gray_thumbs(data, rows, ctx, _thumb_shape(*(ctx.input_shape or (_THUMB, _THUMB))[:2]))
    images = []
    for r, gray in zip(rows, grays):
        panel = [{"layer": name, "channels": [
            {"channel": int(ch), "at": [int(r), li, ci]}
            for ci, ch in enumerate(records["act_channels"][r, li]) if ch >= 0]} for li, name in enumerate(layers)]
        images.append({"id": str(data.ids[r]), "label": _label_text(data, int(r)), "image": _grid(gray),
                       "layers": panel})
    return {"layers": layers, "images": images}


def _label_text(data: Dataset, row: int) -> str:
    """A sample's class, or for multi-label data its findings (``A | B``, ``No Finding``)."""
    names = list(data.class_names)
    if data.multilabel:
        return " | ".join(names[f] for f in data.samples[row].findings or ()) or "No Finding"
    return names[int(data.samples[row].label)]


def _report_data(records: Records, data: Dataset, methods: list[str], cfg: SaliencyConfig,
                 ctx: AuditContext) -> dict[str, Any]:
    layer = str(records["gradcam_layer"][0]) if len(records["gradcam_layer"]) else cfg.layer
    multilabel = ctx.model_info.get("output_kind") == "multilabel"
    gallery = finding_gallery(records, data, methods, cfg.n_gallery, ctx, _gray_thumbs, _area_resize, _grid) \
        if multilabel else _gallery(records, data, methods, cfg, ctx)
    return {
        "gallery": gallery,
        "multilabel": multilabel,
        "activations": _activation_panel(records, data, ctx),
        "class_names": list(data.class_names),
        "parameters": {
            "gradcam_layer": layer,
            "vanilla_gradient": "max over channels of |d logit / d x|, min-max scaled per image",
            "smoothgrad": f"{cfg.smoothgrad_n} noisy copies, noise sigma {cfg.smoothgrad_noise} x the image's value range",
            "integrated_gradients": (f"{cfg.ig_steps} steps (midpoint rule), baseline black (0) in pixel space; "
                                     "for InceptionV3, whose own input scale is [-1, 1], its zero is mid-grey"),
            "gradcam": f"layer {layer}, relu of the gradient-weighted channel sum, bilinear upsampling",
            "explained_class": _EXPLAINED_MULTILABEL if multilabel else "the predicted class (logit before the softmax)",
            "deletion": f"{cfg.deletion_steps} steps, removed pixels replaced by "
                        + ("the image's mean" if cfg.deletion_fill == "mean" else "black"),
            "stability": (f"{cfg.n_noise} Gaussian noise copies (sigma {cfg.noise_sigma}), brightness "
                          f"{cfg.brightness:+}, shift {cfg.shift} px; top-k = {cfg.topk_fraction:.0%} of pixels"),
        },
    }


_EXPLAINED_MULTILABEL = (
    "multi-label: each finding present on an image, its own output (logit before the sigmoid), localised "
    "against that finding's mask; stability, randomisation, deletion and IG completeness: each image's "
    "top-scoring finding (the arg-max output)")


# ------------------------------------------------------------------ lung-field masks (issue #11)

#: A method with less than this share of its relevance inside the lungs is warned about.
LUNG_SHARE_WARN = 0.5


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
