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

The study's cost is its gradient passes: SmoothGrad samples and IG steps run as big
compiled batches. It never plots; the report draws the stored numbers and small PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.errors import ConfigError, check_choice, check_range
from robustkit.metrics import saliency as SM
from robustkit.metrics.outputs import probabilities
from robustkit.model.explainers import (
    METHODS,
    Explainer,
    activation_layers,
    block_groups,
    randomize_weights,
    restore_weights,
    snapshot_weights,
)
from robustkit.results import Check, StudyResult
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Study, StudyConfig

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
                         "relevance rank accuracy); `.random` is a uniform random map", "higher"),
        "lung_share": ("share of |attribution| inside the lung fields (lung masks; DeGrave et al. "
                       "2021); `.random` is a uniform random map", "higher"),
        "lung_area_share": ("the lung fields' share of the image (what a uniform map scores)", "none"),
        "deletion_auc": ("area under the class probability as the most relevant pixels are removed "
                         "first (lower: the map found the pixels the decision rests on)", "lower"),
        "completeness_error": ("|sum of IG attributions - logit difference| / |logit difference|, "
                               "pooled over images", "lower"),
        "n_samples": ("number of images explained", "none"),
        "n_localization_excluded": ("images left out of localisation because their mask is empty", "none"),
        "n_stability_changed": ("(image, perturbation) pairs left out because the prediction changed", "none"),
    }
    headline = ("localization.mass.gradcam", "randomization.spearman.gradcam", "stability.spearman.gradcam")

    def run(self, model: ModelAdapter, data: Dataset, ctx: AuditContext) -> StudyResult:
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        ex = Explainer(model, layer=cfg.layer)
        h, w, c = model.input_shape
        x = data.load_images(np.arange(len(data)), size=(h, w), channels=c)
        logits = ctx.clean_logits(model, data)
        ex.forward_points += len(x)
        target = logits.argmax(axis=1).astype(np.int32)
        methods = list(cfg.methods)
        with ctx.bar(len(methods), "saliency maps") as bar:
            maps = {m: self._explain(ex, m, x, target, ctx, "clean", bar) for m in methods}
        result = StudyResult(name=self.name)
        result.metrics["n_samples"] = float(len(x))
        result.records["target"] = target.astype(np.int16)
        _completeness(ex, x, target, logits, cfg, result) if "integrated_gradients" in methods else None
        _stability(self, ex, x, target, maps, data.labels, ctx, result)
        _randomization(self, ex, x, target, maps, data.labels, ctx, result)
        _localization(data, x, maps, ctx, result, model.class_names)
        _lung_share(data, maps, ctx, result)
        _deletion(ex, x, target, logits, maps, ctx, cfg, result)
        _report_data(ex, data, x, target, maps, cfg, result, model.class_names)
        result.data["record_columns"] = methods + ["random"]
        result.data["passes"] = {"gradient": ex.grad_points, "forward": ex.forward_points}
        return result

    def _explain(self, ex: Explainer, method: str, x: np.ndarray, target: np.ndarray, ctx: AuditContext,
                 key: str, bar: Any = None) -> np.ndarray:
        cfg = self.config
        assert isinstance(cfg, SaliencyConfig)
        out = ex.explain(method, x, target, smoothgrad_n=cfg.smoothgrad_n, smoothgrad_noise=cfg.smoothgrad_noise,
                         ig_steps=cfg.ig_steps, seed=ctx.seed_for("saliency", method, key))
        if bar is not None:
            bar.update(1)
        return SM.minmax(out).astype(np.float32)


# ------------------------------------------------------------------ stages


def _spread(labels: np.ndarray, n: int | None) -> np.ndarray:
    """``n`` positions spread evenly over the samples sorted by class (deterministic)."""
    order = np.argsort(labels, kind="mergesort")
    if n is None or n >= len(order):
        return np.sort(order)
    return np.sort(order[np.linspace(0, len(order) - 1, n).round().astype(int)])


def _completeness(ex: Explainer, x, target, logits, cfg: SaliencyConfig, result: StudyResult) -> None:
    _, attr = ex.integrated_gradients(x, target, steps=cfg.ig_steps)
    z0 = ex.logits(np.zeros((1, *x.shape[1:]), np.float32))[0]
    delta = logits[np.arange(len(x)), target] - z0[target]
    gap = np.abs(attr.reshape(len(x), -1).sum(axis=1) - delta)
    err = float(gap.sum() / max(np.abs(delta).sum(), 1e-12))
    result.metrics["completeness_error.integrated_gradients"] = err
    result.checks.append(Check("IG completeness", "pass" if err <= 0.05 else "warn",
                               f"sum of attributions vs logit(x) - logit(black): pooled relative error {err:.1%} "
                               f"with {cfg.ig_steps} steps (warn above 5%: use more steps)."))


def _perturbations(x: np.ndarray, cfg: SaliencyConfig, rng: np.random.Generator) -> list[tuple[str, np.ndarray, int]]:
    out = [(f"noise_{i + 1}", np.clip(x + rng.normal(0, cfg.noise_sigma, x.shape), 0, 1).astype(np.float32), 0)
           for i in range(cfg.n_noise)]
    if cfg.brightness:
        out.append(("brightness", np.clip(x + cfg.brightness, 0, 1).astype(np.float32), 0))
    s = cfg.shift
    if s:
        shifted = np.pad(x, ((0, 0), (s, 0), (s, 0), (0, 0)), mode="edge")[:, : x.shape[1], : x.shape[2]]
        out.append(("shift", np.ascontiguousarray(shifted), s))
    return out


def _stability(study, ex, x, target, maps, labels, ctx, result: StudyResult) -> None:
    cfg = study.config
    pick = _spread(labels, cfg.stability_samples)
    methods = list(maps)
    n, m = len(x), len(methods)
    acc: dict[str, list[list[list[float]]]] = {k: [[[] for _ in methods] for _ in pick] for k in ("spearman", "ssim", "topk", "sens")}
    changed = 0
    perturbs = _perturbations(x[pick], cfg, ctx.rng("saliency", "stability"))
    with ctx.bar(len(perturbs) * m, "saliency stability") as bar:
        for name, xp, s in perturbs:
            same = ex.logits(xp).argmax(axis=1) == target[pick]
            changed += int((~same).sum())
            for j, meth in enumerate(methods):
                mp = study._explain(ex, meth, xp, target[pick], ctx, name)
                base = maps[meth][pick]
                a, b = (base[:, : base.shape[1] - s, : base.shape[2] - s], mp[:, s:, s:]) if s else (base, mp)
                scores = {"spearman": np.nan_to_num(SM.spearman(a, b), nan=0.0), "ssim": SM.ssim(a, b),
                          "topk": SM.topk_intersection(a, b, fraction=cfg.topk_fraction)}
                if not s:
                    scores["sens"] = SM.relative_change(a, b)
                for key, vals in scores.items():
                    for r in np.flatnonzero(same if key != "sens" else np.ones_like(same)):
                        acc[key][r][j].append(vals[r])
                bar.update(1)
    recs = {}
    for key in acc:
        arr = np.full((n, m), np.nan, np.float32)
        for r, row in zip(pick, acc[key]):
            for j, vals in enumerate(row):
                if vals:
                    arr[r, j] = np.max(vals) if key == "sens" else np.mean(vals)
        recs[key] = arr
    for j, meth in enumerate(methods):
        for key, metric in (("spearman", "stability.spearman"), ("ssim", "stability.ssim"),
                            ("topk", "stability.topk"), ("sens", "max_sensitivity")):
            col = recs[key][:, j]
            result.metrics[f"{metric}.{meth}"] = float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
    result.metrics["n_stability_changed"] = float(changed)
    result.records.update(stability_spearman=recs["spearman"], stability_ssim=recs["ssim"],
                          stability_topk=recs["topk"], max_sensitivity=recs["sens"])
    result.tables["stability"] = [
        {"method": meth, "spearman": result.metrics[f"stability.spearman.{meth}"],
         "ssim": result.metrics[f"stability.ssim.{meth}"], "top-k": result.metrics[f"stability.topk.{meth}"],
         "max_sensitivity": result.metrics[f"max_sensitivity.{meth}"]} for meth in methods
    ]
    result.data["stability"] = {"perturbations": [p[0] for p in perturbs], "n_images": int(len(pick)),
                                "n_changed": changed}


def _similarity_curves(study, ex, xs, ts, orig, groups, ctx, *, cascade: bool, snap) -> dict[str, Any]:
    curves: dict[str, Any] = {"steps": ["original"] + [g[0] for g in groups],
                              "spearman": {m: [1.0] for m in orig}, "ssim": {m: [1.0] for m in orig}}
    rng = ctx.rng("saliency", "randomization", cascade)
    with ctx.bar(len(groups), "saliency randomisation" + ("" if cascade else " (independent)")) as bar:
        for _, layers in groups:
            if not cascade:
                restore_weights(ex.adapter.model, snap)
            randomize_weights(layers, rng)
            for meth, base in orig.items():
                mr = study._explain(ex, meth, xs, ts, ctx, "randomized")
                curves["spearman"][meth].append(float(np.mean(np.nan_to_num(SM.spearman(base, mr), nan=0.0))))
                curves["ssim"][meth].append(float(np.mean(SM.ssim(base, mr))))
            bar.update(1)
    return curves


def _randomization(study, ex, x, target, maps, labels, ctx, result: StudyResult) -> None:
    cfg = study.config
    pick = _spread(labels, cfg.randomization_samples)
    xs, ts = x[pick], target[pick]
    orig = {m: v[pick] for m, v in maps.items()}
    model = ex.adapter.model
    groups = block_groups(model, cfg.randomization_steps)
    snap = snapshot_weights(model)
    try:
        out: dict[str, Any] = {"cascading": _similarity_curves(study, ex, xs, ts, orig, groups, ctx, cascade=True, snap=snap)}
        if cfg.independent:
            restore_weights(model, snap)
            out["independent"] = _similarity_curves(study, ex, xs, ts, orig, groups, ctx, cascade=False, snap=snap)
    finally:
        restore_weights(model, snap)
    casc = out["cascading"]
    for meth in maps:
        sp, ss = casc["spearman"][meth][-1], casc["ssim"][meth][-1]
        result.metrics[f"randomization.spearman.{meth}"] = sp
        result.metrics[f"randomization.ssim.{meth}"] = ss
        value = ss if cfg.randomization_metric == "ssim" else sp
        ok = value < cfg.randomization_threshold
        result.checks.append(Check(
            f"randomisation sanity: {meth}", "pass" if ok else "fail",
            f"after randomising every block from the top down to {casc['steps'][-1]} ({len(groups)} "
            f"cascading steps) the map's mean {cfg.randomization_metric.upper()} similarity with the "
            f"original is {value:.2f}, {'below' if ok else 'not below'} {cfg.randomization_threshold} "
            f"(SSIM {ss:.2f}, Spearman {sp:.2f})."))
    key = f"randomization.{cfg.randomization_metric}"
    out["passed"] = [m for m in maps if result.metrics[f"{key}.{m}"] < cfg.randomization_threshold]
    out["metric"] = cfg.randomization_metric
    out["n_images"] = int(len(pick))
    result.data["randomization"] = out


def _localization(data, x, maps, ctx, result: StudyResult, class_names) -> None:
    if not data.has_masks:
        result.checks.append(Check("localisation", "warn", "the dataset has no lesion masks: localisation skipped."))
        return
    h, w = x.shape[1:3]
    masks = data.load_masks(np.arange(len(data)), size=(h, w))
    has = masks.reshape(len(masks), -1).any(axis=1)
    labels = np.asarray(data.labels)
    result.metrics["n_localization_excluded"] = float((~has).sum())
    rand = ctx.rng("saliency", "random_map").random((len(x), h, w))
    cols = {**maps, "random": rand}
    recs = {k: np.full((len(x), len(cols)), np.nan, np.float32) for k in _LOC}
    fns = {"pointing_game": SM.pointing_game, "mass": SM.relevance_mass, "rank_accuracy": SM.relevance_rank_accuracy}
    for j, (meth, mp) in enumerate(cols.items()):
        for key in _LOC:
            vals = fns[key](mp, masks)
            recs[key][:, j] = vals
            result.metrics[f"localization.{key}.{meth}"] = _nanmean(vals)
            for k, cls in enumerate(class_names):
                sel = (labels == k) & has
                if sel.any():
                    result.metrics[f"localization.{key}.{meth}.{cls}"] = _nanmean(vals[sel])
    result.records.update(pointing_game=recs["pointing_game"], mass=recs["mass"],
                          rank_accuracy=recs["rank_accuracy"])
    result.tables["localization"] = [
        {"method": meth, **{key: result.metrics[f"localization.{key}.{meth}"] for key in _LOC}} for meth in cols]
    result.data["localization"] = {
        "excluded_by_class": {cls: int(((labels == k) & ~has).sum()) for k, cls in enumerate(class_names)},
        "n_images": int(has.sum())}
    for meth in maps:
        better = all(result.metrics[f"localization.{k}.{meth}"] > result.metrics[f"localization.{k}.random"]
                     for k in ("mass", "rank_accuracy"))
        result.checks.append(Check(
            f"localisation beats random: {meth}", "pass" if better else "warn",
            f"relevance mass {result.metrics[f'localization.mass.{meth}']:.3f} vs "
            f"{result.metrics['localization.mass.random']:.3f} for a random map; rank accuracy "
            f"{result.metrics[f'localization.rank_accuracy.{meth}']:.3f} vs "
            f"{result.metrics['localization.rank_accuracy.random']:.3f}."))


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def _deletion(ex, x, target, logits, maps, ctx, cfg: SaliencyConfig, result: StudyResult) -> None:
    fractions = np.linspace(0.0, 1.0, cfg.deletion_steps + 1)
    inner = fractions[1:-1]
    n = len(x)
    kind = ex.adapter.output_kind
    p0 = probabilities(logits, kind)[np.arange(n), target]
    full = np.stack([SM.deletion_images(img, np.zeros(img.shape[:2]), np.ones(1), fill=cfg.deletion_fill)[0]
                     for img in x]) if n else x
    p1 = probabilities(ex.logits(full), kind)[np.arange(n), target] if n else p0
    cols = {**maps, "random": ctx.rng("saliency", "deletion_random").random(x.shape[:3])}
    aucs = np.full((n, len(cols)), np.nan, np.float32)
    curves = {}
    per_call = max(1, 4 * ex.adapter.batch_size // max(1, len(inner)))
    for j, (meth, mp) in enumerate(cols.items()):
        probs = np.empty((n, len(fractions)), np.float32)
        probs[:, 0], probs[:, -1] = p0, p1
        for i in range(0, n, per_call):
            sl = slice(i, min(n, i + per_call))
            steps = np.concatenate([SM.deletion_images(x[r], mp[r], inner, fill=cfg.deletion_fill)
                                    for r in range(sl.start, sl.stop)])
            pr = probabilities(ex.logits(steps), kind).reshape(sl.stop - sl.start, len(inner), -1)
            probs[sl, 1:-1] = np.take_along_axis(pr, target[sl, None, None], axis=2)[..., 0]
        aucs[:, j] = SM.curve_auc(fractions, probs)
        curves[meth] = np.round(probs.mean(axis=0), 5).tolist() if n else []
        result.metrics[f"deletion_auc.{meth}"] = _nanmean(aucs[:, j])
    result.records["deletion_auc"] = aucs
    result.data["deletion"] = {"fractions": np.round(fractions, 5).tolist(), "curves": curves,
                               "fill": cfg.deletion_fill}


# ------------------------------------------------------------------ report data (PNG only)

_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32) / 255


def _colormap(m: np.ndarray) -> np.ndarray:
    """An inferno-like colour ramp of a map in [0, 1] -> RGB ``(H, W, 3)``."""
    t = np.clip(m, 0, 1) * (len(_ANCHORS) - 1)
    i = np.minimum(t.astype(int), len(_ANCHORS) - 2)
    f = (t - i)[..., None]
    return _ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _gray_rgb(img: np.ndarray) -> np.ndarray:
    g = img.mean(axis=-1)
    return np.repeat(g[..., None], 3, axis=-1)


def _draw_outline(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None or not mask.any():
        return rgb
    out = rgb.copy()
    out[_outline(mask)] = (0.0, 1.0, 0.3)
    return out


def _png(arr: np.ndarray, side: int = 112) -> str:
    reps = max(1, side // max(arr.shape[:2]))
    return png_base64(np.kron(arr, np.ones((reps, reps, 1))) if reps > 1 else arr, max_side=side)


def _gallery(data, x, target, maps, cfg: SaliencyConfig, class_names) -> list[dict[str, Any]]:
    masks = data.load_masks(np.arange(len(data)), size=x.shape[1:3]) if data.has_masks else None
    labels = np.asarray(data.labels)
    out = []
    for k, cls in enumerate(class_names):
        rows = np.flatnonzero(labels == k)[: cfg.n_gallery]
        items = []
        for r in rows:
            mask = masks[r] if masks is not None else None
            gray = _gray_rgb(x[r])
            items.append({
                "id": str(data.ids[r]), "label": cls, "pred": class_names[int(target[r])],
                "image_png": _png(_draw_outline(gray, mask)),
                "maps": [{"method": m, "overlay_png": _png(_draw_outline(0.5 * gray + 0.5 * _colormap(v[r]), mask)),
                          "heat_png": _png(_draw_outline(_colormap(v[r]), mask))} for m, v in maps.items()],
            })
        if items:
            out.append({"class": cls, "items": items})
    return out


def _activation_panel(ex: Explainer, data, x, target, cfg: SaliencyConfig, class_names) -> dict[str, Any]:
    layers = list(cfg.layers) or activation_layers(ex.adapter.model, cfg.n_activation_layers, ex.layer)
    if not layers or cfg.n_activation_layers == 0:
        return {"layers": [], "images": []}
    labels = np.asarray(data.labels)
    rows = [int(np.flatnonzero(labels == k)[0]) for k in range(len(class_names)) if (labels == k).any()]
    feats = ex.activations(x[rows], layers)
    images = []
    for i, r in enumerate(rows):
        panel = []
        for name, f in zip(layers, feats):
            a = f[i]
            top = np.argsort(-a.mean(axis=(0, 1)), kind="mergesort")[: cfg.n_channels]
            panel.append({"layer": name, "channels": [
                {"channel": int(ch), "png": _png(_colormap(SM.minmax(a[..., ch])[0]), 64)} for ch in top]})
        images.append({"id": str(data.ids[r]), "label": class_names[int(labels[r])],
                       "image_png": _png(_gray_rgb(x[r]), 64), "layers": panel})
    return {"layers": layers, "images": images}


def _report_data(ex, data, x, target, maps, cfg: SaliencyConfig, result: StudyResult, class_names) -> None:
    result.data["gallery"] = _gallery(data, x, target, maps, cfg, class_names)
    result.data["activations"] = _activation_panel(ex, data, x, target, cfg, class_names)
    result.data["class_names"] = list(class_names)
    result.data["parameters"] = {
        "gradcam_layer": ex.layer,
        "vanilla_gradient": "max over channels of |d logit / d x|, min-max scaled per image",
        "smoothgrad": f"{cfg.smoothgrad_n} noisy copies, noise sigma {cfg.smoothgrad_noise} x the image's value range",
        "integrated_gradients": (f"{cfg.ig_steps} steps (midpoint rule), baseline black (0) in pixel space; "
                                 "for InceptionV3, whose own input scale is [-1, 1], its zero is mid-grey"),
        "gradcam": f"layer {ex.layer}, relu of the gradient-weighted channel sum, bilinear upsampling",
        "explained_class": "the predicted class (logit before the softmax)",
        "deletion": f"{cfg.deletion_steps} steps, removed pixels replaced by "
                    + ("the image's mean" if cfg.deletion_fill == "mean" else "black"),
        "stability": (f"{cfg.n_noise} Gaussian noise copies (sigma {cfg.noise_sigma}), brightness "
                      f"{cfg.brightness:+}, shift {cfg.shift} px; top-k = {cfg.topk_fraction:.0%} of pixels"),
    }


# ------------------------------------------------------------------ lung-field masks (issue #11)

#: A method with less than this share of its relevance inside the lungs is warned about.
LUNG_SHARE_WARN = 0.5


def _lung_share(data, maps: dict[str, np.ndarray], ctx: AuditContext, result: StudyResult) -> None:
    """Share of each method's |attribution| inside the lung fields, beside a random map and
    the lung fields' share of the image; a check per method (warn below LUNG_SHARE_WARN)."""
    if not data.has_lung_masks or not maps:
        return
    first = next(iter(maps.values()))
    h, w = first.shape[1:3]
    lungs = data.load_masks(np.arange(len(data)), size=(h, w), kind="lung")
    rand = np.stack([ctx.rng("saliency", "lung_random", sid).random((h, w)) for sid in data.ids]) \
        if len(data) else np.zeros((0, h, w))
    cols = {**maps, "random": rand}
    shares = np.stack([SM.mask_share(m, lungs) for m in cols.values()], axis=1).astype(np.float32)
    result.records["lung_share"] = shares
    result.metrics["lung_area_share"] = _nanmean(SM.area_share(lungs))
    for j, meth in enumerate(cols):
        result.metrics[f"lung_share.{meth}"] = _nanmean(shares[:, j])
    result.data["lung_share"] = {"columns": list(cols), "warn_below": LUNG_SHARE_WARN,
                                 "n_images": int(np.isfinite(shares[:, 0]).sum())}
    for meth in maps:
        share = result.metrics[f"lung_share.{meth}"]
        result.checks.append(Check(
            f"relevance inside the lungs: {meth}", "pass" if share >= LUNG_SHARE_WARN else "warn",
            f"{share:.3f} of |attribution| inside the lung fields (random map "
            f"{result.metrics['lung_share.random']:.3f}, lung area {result.metrics['lung_area_share']:.3f}); "
            f"warn below {LUNG_SHARE_WARN}."))
