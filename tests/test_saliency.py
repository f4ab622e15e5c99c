"""The saliency study: known answers on analytic models, metrics against references, the study."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from robustkit.errors import ConfigError
from robustkit.metrics import saliency as SM

# ------------------------------------------------------------------ pure metrics


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    a = np.round(rng.random((5, 12, 12)), 1)  # many ties
    b = np.round(a + 0.3 * rng.random((5, 12, 12)), 1)
    ours = SM.spearman(a, b)
    ref = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert math.isnan(SM.spearman(np.ones((12, 12)), a[0])[0])


def _ssim_slow(a: np.ndarray, b: np.ndarray) -> float:
    """A loop over every window position: Gaussian-weighted moments, Wang et al. (2004)."""
    a, b = SM.minmax(a)[0], SM.minmax(b)[0]
    r = np.arange(-5, 6)
    g = np.exp(-0.5 * (r / 1.5) ** 2)
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va, vb = (win * pa * pa).sum() - ma**2, (win * pb * pb).sum() - mb**2
            cov = (win * pa * pb).sum() - ma * mb
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_known_values_and_slow_reference() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((20, 18))
    b = a + 0.3 * rng.random((20, 18))
    assert SM.ssim(a, a)[0] == pytest.approx(1.0, abs=1e-12)
    assert SM.ssim(a, -a)[0] < 0.0
    assert SM.ssim(a, b)[0] == pytest.approx(_ssim_slow(a, b), abs=1e-10)
    with pytest.raises(ValueError):
        SM.ssim(np.ones((5, 5)), np.ones((5, 5)))


def test_topk_intersection_and_relative_change() -> None:
    a = np.arange(100, dtype=float).reshape(1, 10, 10)
    assert SM.topk_intersection(a, a, fraction=0.1)[0] == 1.0
    assert SM.topk_intersection(a, -a, fraction=0.1)[0] == 0.0
    assert SM.relative_change(a, 2 * a)[0] == pytest.approx(1.0)


def test_localisation_scores_by_hand() -> None:
    maps = np.zeros((3, 4, 4))
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # max at (0, 0)
    maps[1, 3, 3], maps[1, 0, 0] = 3.0, 1.0
    maps[2] = 1.0
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 0, 0] = masks[1, 0, 0] = True
    np.testing.assert_array_equal(SM.pointing_game(maps[:2], masks[:2]), [1.0, 0.0])
    np.testing.assert_allclose(SM.relevance_mass(maps[:2], masks[:2]), [0.75, 0.25])
    np.testing.assert_allclose(SM.relevance_rank_accuracy(maps[:2], masks[:2]), [1.0, 0.0])
    assert np.isnan(SM.pointing_game(maps, masks)[2])  # empty mask: left out
    assert np.isnan(SM.relevance_mass(maps, masks)[2])
    two = np.zeros((1, 4, 4), bool)
    two[0, 0, :2] = True
    m = np.arange(16, dtype=float).reshape(1, 4, 4)[:, ::-1, ::-1].copy()  # largest at (0, 0)
    assert SM.relevance_rank_accuracy(m, two)[0] == 1.0
    assert SM.relevance_mass(m, two)[0] == pytest.approx((15 + 14) / m.sum())


def test_deletion_auc_perfect_ordering_beats_reversed() -> None:
    region = np.zeros((8, 8), bool)
    region[2:4, 2:6] = True
    image = np.where(region, 1.0, 0.2)[..., None].astype(np.float32)
    fractions = np.linspace(0, 1, 17)

    def score(images: np.ndarray) -> np.ndarray:  # a "model" that looks at the region only
        return images[:, region, 0].mean(axis=1)

    perfect = SM.deletion_images(image, region.astype(float), fractions, fill="black")
    reverse = SM.deletion_images(image, 1.0 - region, fractions, fill="black")
    a_good = SM.curve_auc(fractions, score(perfect)[None])[0]
    a_bad = SM.curve_auc(fractions, score(reverse)[None])[0]
    assert score(perfect)[0] == 1.0 and score(perfect)[-1] == 0.0
    assert a_good == pytest.approx(0.125 * 0.5 * 1.0 + 0.0, abs=1e-9)  # drops linearly to 0 by 1/8
    assert a_bad > 0.8 and a_good < a_bad
    mean_fill = SM.deletion_images(image, region.astype(float), np.array([1.0]), fill="mean")
    np.testing.assert_allclose(mean_fill, image.mean())


# ------------------------------------------------------------------ analytic models


def _adapter(model):
    from robustkit.model.adapter import ModelAdapter

    return ModelAdapter(model, batch_size=16)


def _smooth_model(size: int = 10):
    from robustkit._tf import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="tanh", padding="same")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))(x)
    return keras.Model(inp, out)


def test_integrated_gradients_completeness() -> None:
    from robustkit.model.explainers import Explainer

    adapter = _adapter(_smooth_model())
    x = np.random.default_rng(0).random((6, 10, 10, 3)).astype(np.float32)
    z = adapter.logits(x)
    t = z.argmax(axis=1).astype(np.int32)
    ex = Explainer(adapter)
    _, attr = ex.integrated_gradients(x, t, steps=64)
    delta = z[np.arange(6), t] - adapter.logits(np.zeros_like(x[:1]))[0, t]
    assert np.all(np.abs(delta) > 0.05)
    np.testing.assert_allclose(attr.reshape(6, -1).sum(axis=1), delta, rtol=0.02)
    assert ex.grad_points == 6 * 64  # every step is one gradient pass, batched


def test_gradcam_gives_the_known_weighted_feature_map() -> None:
    from robustkit._tf import keras
    from robustkit.model.explainers import Explainer, find_gradcam_layer

    inp = keras.Input((12, 12, 1))
    feat = keras.layers.Conv2D(2, 1, activation="relu", name="features")(inp)
    pooled = keras.layers.GlobalAveragePooling2D()(feat)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="head")(pooled))
    model.get_layer("features").set_weights([np.array([1.0, -1.0]).reshape(1, 1, 1, 2), np.array([-0.5, 0.5])])
    w = np.array([[1.0, -1.0], [-2.0, 0.5]])
    model.get_layer("head").set_weights([w, np.zeros(2)])
    assert find_gradcam_layer(model) == "features"
    x = np.random.default_rng(1).random((3, 12, 12, 1)).astype(np.float32)
    a = np.stack([np.maximum(x[..., 0] - 0.5, 0), np.maximum(0.5 - x[..., 0], 0)], axis=-1)
    for c in (0, 1):
        cam = Explainer(_adapter(model)).gradcam(x, np.full(3, c, np.int32))
        expected = np.maximum((a * w[:, c]).sum(axis=-1), 0) / 144.0
        np.testing.assert_allclose(cam, expected, atol=1e-6)


def _region_model():
    """A model that sees only rows 3-7, columns 8-12 of a 16 x 16 image."""
    from robustkit._tf import keras, tf

    window = np.zeros((1, 16, 16, 1), np.float32)
    window[:, 3:8, 8:13] = 1.0

    class Window(keras.layers.Layer):
        def call(self, x):
            return x * tf.constant(window)

    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, activation="relu",
                            kernel_initializer=keras.initializers.Constant(0.1))(Window()(inp))
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(1.0))
    model = keras.Model(inp, dense(x))
    dense.set_weights([np.array([[1.0, 0.5]] * 4), np.array([0.0, 0.0])])
    region = window[0, ..., 0].astype(bool)
    return model, region


def test_every_method_points_at_the_only_region_the_model_sees() -> None:
    from robustkit.model.explainers import METHODS, Explainer

    model, region = _region_model()
    ex = Explainer(_adapter(model))
    x = (0.2 + 0.8 * np.random.default_rng(2).random((4, 16, 16, 1))).astype(np.float32)
    t = np.zeros(4, np.int32)
    masks = np.repeat(region[None], 4, axis=0)
    for method in METHODS:
        maps = ex.explain(method, x, t, smoothgrad_n=8, ig_steps=16, seed=1)
        np.testing.assert_array_equal(SM.pointing_game(maps, masks), 1.0, err_msg=method)
        if method == "gradcam":  # the 3x3 conv's feature map reaches one pixel beyond the window
            masks_used = np.zeros_like(masks)
            masks_used[:, 2:9, 7:14] = True
        else:
            masks_used = masks
        np.testing.assert_allclose(SM.relevance_mass(maps, masks_used), 1.0, atol=1e-6, err_msg=method)


def test_layer_finder_and_blocks_on_inception_v3_nested_backbone() -> None:
    from robustkit._tf import keras
    from robustkit.model.explainers import Explainer, block_groups, find_gradcam_layer

    backbone = keras.applications.InceptionV3(weights=None, input_shape=(75, 75, 3), include_top=False)
    inp = keras.Input((75, 75, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inp))
    x = keras.layers.Dense(8, activation="relu")(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    # at 75 px mixed10 is 1 x 1 (Grad-CAM would be one value): the last block output with a map, mixed7 (3 x 3)
    assert tuple(backbone.get_layer("mixed10").output.shape[1:3]) == (1, 1)
    assert find_gradcam_layer(model) == f"{backbone.name}/mixed7"
    labels = [label for label, _ in block_groups(model)]
    assert labels[:2] == [model.layers[-1].name, model.layers[-2].name]
    assert [s for s in labels if s.startswith("mixed")] == [f"mixed{k}" for k in range(10, -1, -1)]
    ex = Explainer(_adapter(model), layer="mixed10")
    cam = ex.gradcam(np.full((1, 75, 75, 3), 0.5, np.float32), np.zeros(1, np.int32))
    assert cam.shape == (1, 75, 75) and np.all(np.isfinite(cam))


def test_randomization_makes_maps_dissimilar_and_weights_come_back(toy_model: Path) -> None:
    from robustkit.model.adapter import load_model
    from robustkit.model.explainers import Explainer

    adapter = load_model(toy_model)
    ex = Explainer(adapter)
    x = (0.3 + 0.2 * np.random.default_rng(3).random((4, 32, 32, 1))).astype(np.float32)
    t = adapter.logits(x).argmax(axis=1).astype(np.int32)
    before, _ = ex.vanilla_gradient(x, t)
    assert ex.randomization_groups(None) == ["predictions", "conv2", "conv1"]  # layer by layer, top down
    with ex.randomized(seed=0, steps=None) as steps:
        assert list(steps) == ["predictions", "conv2", "conv1"]
        after, _ = ex.vanilla_gradient(x, t)
    assert np.nanmean(SM.spearman(before, after)) < 0.5
    np.testing.assert_allclose(ex.vanilla_gradient(x, t)[0], before, atol=1e-6)


def test_randomised_network_depends_on_seed_and_group_only(toy_model: Path) -> None:
    """Every shard sees the same randomised network: the weights of a step come from (seed, group)."""
    from robustkit.model.adapter import load_model
    from robustkit.model.explainers import Explainer

    adapter = load_model(toy_model)
    ex = Explainer(adapter)
    x = (0.3 + 0.2 * np.random.default_rng(4).random((5, 32, 32, 1))).astype(np.float32)
    t = adapter.logits(x).argmax(axis=1).astype(np.int32)

    def maps_per_step(rows: np.ndarray, *, seed: int, cascade: bool = True) -> list[np.ndarray]:
        with ex.randomized(seed=seed, steps=None, cascade=cascade) as steps:
            return [ex.vanilla_gradient(x[rows], t[rows])[0] for _ in steps]

    whole = maps_per_step(np.arange(5), seed=1)
    shard = maps_per_step(np.array([4, 1]), seed=1)  # another process, another batch
    for a, b in zip(whole, shard):
        np.testing.assert_allclose(b, a[[4, 1]], atol=1e-6)
    other = maps_per_step(np.arange(5), seed=2)
    assert not np.allclose(other[-1], whole[-1], atol=1e-3)
    alone = maps_per_step(np.arange(5), seed=1, cascade=False)
    np.testing.assert_allclose(alone[0], whole[0], atol=1e-6)  # the top group alone: the same weights


def test_smoothgrad_noise_follows_the_image_seed_not_the_batch(toy_model: Path) -> None:
    from robustkit.model.adapter import ModelAdapter, load_model
    from robustkit.model.explainers import Explainer

    adapter = load_model(toy_model)
    x = (0.3 + 0.2 * np.random.default_rng(5).random((6, 32, 32, 1))).astype(np.float32)
    t = adapter.logits(x).argmax(axis=1).astype(np.int32)
    seeds = np.array([11, 12, 13, 14, 15, 16])
    whole = Explainer(adapter).smoothgrad(x, t, n=5, noise=0.2, seed=seeds)
    small = Explainer(ModelAdapter(adapter.model, batch_size=2))  # other chunks of images and samples
    parts = np.concatenate([small.smoothgrad(x[i:i + 1], t[i:i + 1], n=5, noise=0.2, seed=seeds[i:i + 1])
                            for i in range(6)])
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    reseeded = Explainer(adapter).smoothgrad(x, t, n=5, noise=0.2, seed=seeds + 100)
    assert not np.allclose(reseeded, whole, atol=1e-3)


# ------------------------------------------------------------------ the study

_FAST = {"smoothgrad_n": 6, "ig_steps": 16, "max_samples": 18, "stability_samples": 9, "n_noise": 1,
         "randomization_samples": 2, "deletion_steps": 8}


@pytest.fixture(scope="module")
def mapped(toy_model: Path, toy_data: Path):
    """The study's records of the toy data, prepared and mapped as ``Study.execute`` does, kept
    for the reduce-only tests: ``(study, records, samples, ctx, index, adapter, data)``."""
    from robustkit.data.loader import load_dataset
    from robustkit.model.adapter import load_model
    from robustkit.studies import AuditContext, get_study

    adapter, data = load_model(toy_model), load_dataset(toy_data)
    study = get_study("saliency").configure("standard", _FAST)
    ctx = AuditContext(seed=4)
    ctx.model_info = adapter.describe()
    index = study.select(data, ctx)
    sub = data.subset(index)
    study.prepare(sub, ctx)
    return study, study.map_all(adapter, sub, ctx), sub, ctx, index, adapter, data


@pytest.fixture(scope="module")
def study_runs(mapped):
    """Two independent runs of the study: ``Study.execute``, and the kept records reduced."""
    from robustkit.studies import AuditContext

    study, records, sub, ctx, index, adapter, data = mapped
    first = study.execute(adapter, data, AuditContext(seed=4))
    second = study.finalize(study.reduce(records, sub, ctx), index, 0.0)
    return first, second, data


def test_study_metric_names_and_checks(study_runs) -> None:
    result, _, _ = study_runs
    for m in ("vanilla_gradient", "smoothgrad", "integrated_gradients", "gradcam"):
        for root in ("stability.spearman", "stability.ssim", "stability.topk", "max_sensitivity",
                     "randomization.spearman", "randomization.ssim", "localization.pointing_game",
                     "localization.mass", "localization.rank_accuracy", "deletion_auc"):
            assert f"{root}.{m}" in result.metrics, f"{root}.{m}"
    for root in ("localization.pointing_game", "localization.mass", "localization.rank_accuracy", "deletion_auc"):
        assert f"{root}.random" in result.metrics
    assert result.direction("deletion_auc.gradcam") == "lower"
    assert result.direction("localization.mass.random") == "higher"
    names = {c.name for c in result.checks}
    assert "IG completeness" in names and "randomisation sanity: gradcam" in names
    assert result.metrics["completeness_error.integrated_gradients"] < 0.05
    n, cfg = int(result.metrics["n_samples"]), result.config  # model passes: each one counted once
    stab, rand = result.data["stability"]["n_images"], result.data["randomization"]["n_images"]
    per_map = 1 + cfg["smoothgrad_n"] + cfg["ig_steps"] + 1  # vanilla, SmoothGrad, IG, Grad-CAM
    groups = len(result.data["randomization"]["cascading"]["steps"]) - 1
    perturbs = len(result.data["stability"]["perturbations"])
    assert result.data["passes"]["gradient"] == n * per_map + stab * perturbs * per_map + rand * groups * per_map
    assert result.metrics["localization.mass.integrated_gradients"] > result.metrics["localization.mass.random"]


def test_study_is_deterministic_and_counts_normal_as_excluded(study_runs) -> None:
    first, second, data = study_runs
    assert first.metrics.keys() == second.metrics.keys()
    for k, v in first.metrics.items():
        assert v == pytest.approx(second.metrics[k], nan_ok=True, abs=1e-6), k
    labels = np.asarray(data.labels)[first.records["index"]]
    normal = labels == list(data.class_names).index("NORMAL")
    assert first.metrics["n_localization_excluded"] == normal.sum() > 0
    pg = first.records["localization_pointing_game"]  # (image, output, method): the class's cell only
    assert pg.shape == (len(labels), 3, 5)
    own = pg[np.arange(len(labels)), labels]
    assert np.all(np.isnan(own[normal])) and not np.any(np.isnan(own[~normal]))
    off = np.ones(pg.shape[:2], bool)
    off[np.arange(len(labels)), labels] = False
    assert np.all(np.isnan(pg[off]))


def test_single_label_localisation_is_the_predicted_class_map_against_the_image_mask(study_runs,
                                                                                     toy_model: Path) -> None:
    """One path for every task: a single-label image has one output present, its class; its
    cell holds the predicted class's map scored against the image's lesion mask (a direct
    computation with the explainer), and the per-class and pooled metrics are plain means."""
    from robustkit.model.adapter import load_model
    from robustkit.model.explainers import Explainer

    result, _, data = study_runs
    rows = result.records["index"]
    model = load_model(toy_model)
    x = data.load_images(rows, size=(32, 32), channels=1)
    pred = model.probs(x).argmax(axis=1).astype(np.int32)
    maps = SM.minmax(Explainer(model).vanilla_gradient(x, pred)[0])
    mass = SM.relevance_mass(maps, data.load_masks(rows, size=(32, 32)))
    labels = np.asarray(data.labels)[rows]
    stored = result.records["localization_mass"][np.arange(len(rows)), labels, 0]  # vanilla gradient
    np.testing.assert_allclose(stored, mass, rtol=1e-4, atol=1e-5)
    assert result.metrics["localization.mass.vanilla_gradient"] == pytest.approx(np.nanmean(mass), rel=1e-4)
    for k, cls in enumerate(data.class_names):
        sel = (labels == k) & np.isfinite(mass)
        key = f"localization.mass.vanilla_gradient.{cls}"
        if sel.any():
            assert result.metrics[key] == pytest.approx(float(np.mean(mass[sel], dtype=np.float64)), rel=1e-4)
        else:
            assert key not in result.metrics
    outputs = {r["output"] for r in result.tables["localization per output"]}
    assert outputs == {"COVID-19", "Viral Pneumonia"}  # NORMAL's masks are empty


def test_reduce_of_memory_mapped_records_is_the_same_and_copies_no_map(mapped, tmp_path: Path) -> None:
    """Records read from ``.npy`` files with ``mmap_mode="r"`` give the same result, and the
    per-sample maps pass through to the result's records without a copy (the reduce's memory
    does not hold them)."""
    import json

    study, records, sub, ctx, *_ = mapped
    for key, value in records.items():
        np.save(tmp_path / f"{key}.npy", value)
    on_disk = {key: np.load(tmp_path / f"{key}.npy", mmap_mode="r") for key in records}
    here, there = study.reduce(records, sub, ctx), study.reduce(on_disk, sub, ctx)
    assert json.dumps(there.metrics, sort_keys=True) == json.dumps(here.metrics, sort_keys=True)
    assert json.dumps([there.tables, there.data, [repr(c) for c in there.checks]], sort_keys=True) == \
        json.dumps([here.tables, here.data, [repr(c) for c in here.checks]], sort_keys=True)
    assert there.records.keys() == here.records.keys()
    for key, value in there.records.items():
        np.testing.assert_array_equal(value, here.records[key], err_msg=key)
    for key, source in (("map_thumbs", "thumbs"), ("activation_maps", "act_maps")):
        assert there.records[key] is on_disk[source], key


def test_report_data_reads_the_dataset_once_and_shows_each_rows_sample(mapped, monkeypatch) -> None:
    """Each gallery and panel image is its own row's sample (id and class from ``Dataset.samples``),
    and ``Dataset.ids``/``Dataset.targets`` (a pass over every sample each) are read once, not once
    per image shown (which made the reduce quadratic in the number of samples)."""
    from robustkit.data.dataset import Dataset
    from robustkit.studies.saliency.report_data import report_data

    study, records, sub, ctx, *_ = mapped
    reads = {"ids": 0, "targets": 0}
    for name in reads:
        prop = getattr(Dataset, name)
        monkeypatch.setattr(Dataset, name, property(
            lambda self, _p=prop, _n=name: (reads.__setitem__(_n, reads[_n] + 1), _p.fget(self))[1]))
    out = report_data(records, sub, list(study.config.methods), study.config, ctx)
    assert reads == {"ids": 1, "targets": 1}
    shown = [(it["row"], it) for g in out["gallery"] for it in g["items"]]
    shown += [(im["layers"][0]["channels"][0]["at"][0], im) for im in out["activations"]["images"]]
    assert len(shown) >= 2 * len(out["gallery"]) + 1
    for row, item in shown:
        sample = sub.samples[row]
        assert (item["id"], item["label"]) == (sample.id, sub.class_names[sample.label])


@pytest.mark.parametrize("override", [
    {"methods": ["foo"]}, {"methods": []}, {"deletion_fill": "grey"}, {"smoothgrad_n": 0},
    {"ig_steps": 1.5}, {"randomization_threshold": 2.0}, {"randomization_metric": "pearson"}, {"bogus": 1},
])
def test_bad_config_raises(override) -> None:
    from robustkit.studies import get_study

    with pytest.raises(ConfigError):
        get_study("saliency").configure("standard", override)


def test_unknown_gradcam_layer_raises(toy_model: Path) -> None:
    from robustkit.model.adapter import load_model
    from robustkit.model.explainers import Explainer

    with pytest.raises(ConfigError, match="layer"):
        Explainer(load_model(toy_model), layer="no_such_layer")


def test_report_renders_the_saliency_section(toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    from robustkit.report.views import build_view
    from robustkit.runner import audit

    result = audit(toy_model, toy_data, studies=["saliency"], profile="quick", out=tmp_path, seed=0)
    ctx, error = build_view(result.studies["saliency"], result)
    assert error is None
    assert ctx["gallery"] and ctx["gallery"][0]["images"][0]["maps"]
    assert len(ctx["figures"]) >= 3  # randomisation (2 measures) and deletion
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Activation maps" in html and "could not be built" not in html
