"""Tests of the procedural chest X-ray phantom (robustkit.data.phantom)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from robustkit.data.phantom import (
    CLASS_NAMES,
    SHORTCUT_MARKERS,
    PhantomCase,
    generate_phantom,
    render_case,
)
from robustkit.errors import ConfigError


def _read(path) -> tuple[str, tuple[int, int], np.ndarray]:
    with Image.open(path) as im:
        return im.mode, im.size, np.asarray(im)


def _case(label: int, i: int, *, size: int = 64, seed: int = 0, **kw: object) -> PhantomCase:
    return render_case(label, size=size, rng=np.random.default_rng([seed, label, i]), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return generate_phantom(tmp_path_factory.mktemp("ph") / "data", per_class=4, size=48, seed=3)


@pytest.fixture(scope="module")
def balanced() -> list[PhantomCase]:
    return [_case(k, i, seed=11) for k in range(3) for i in range(150)]


# ------------------------------------------------------------------ determinism, layout


@pytest.mark.parametrize("label", [0, 1, 2])
def test_same_seed_same_case_and_types(label: int) -> None:
    a, b = _case(label, 5), _case(label, 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64)
    assert a.mask.dtype == bool and a.lungs.dtype == bool and a.lungs.shape == (64, 64)
    assert a.label == label and 0.25 <= a.severity <= 1.0
    assert not np.array_equal(a.image, _case(label, 5, seed=1).image)


def test_generate_is_byte_identical_and_prefix_stable(dataset, tmp_path) -> None:
    again = generate_phantom(tmp_path / "again", per_class=4, size=48, seed=3)
    longer = generate_phantom(tmp_path / "longer", per_class=5, size=48, seed=3)
    other = generate_phantom(tmp_path / "other", per_class=4, size=48, seed=4)
    for path in sorted(dataset.rglob("*.png")):
        rel = path.relative_to(dataset)
        assert path.read_bytes() == (again / rel).read_bytes() == (longer / rel).read_bytes()
    rel = "COVID-19/COVID-19_0000.png"
    assert (dataset / rel).read_bytes() != (other / rel).read_bytes()
    assert (dataset / "phantom.json").read_bytes() == (again / "phantom.json").read_bytes()


def test_layout_masks_and_metadata(dataset) -> None:
    meta = json.loads((dataset / "phantom.json").read_text(encoding="utf-8"))
    assert meta["seed"] == 3 and meta["size"] == 48 and meta["per_class"] == 4
    assert meta["class_names"] == list(CLASS_NAMES) and meta["shortcut"] is False
    assert sorted(p.name for p in dataset.iterdir() if p.is_dir()) == sorted([*CLASS_NAMES, "lung_masks", "masks"])
    for name in CLASS_NAMES:
        images = sorted(p.name for p in (dataset / name).iterdir())
        assert images == [f"{name}_{i:04d}.png" for i in range(4)]
        assert sorted(p.name for p in (dataset / "masks" / name).iterdir()) == images
        for fname in images:
            mode, size, _ = _read(dataset / name / fname)
            mask = _read(dataset / "masks" / name / fname)[2]
            assert mode == "L" and size == (48, 48)
            assert set(np.unique(mask)) <= {0, 255}
            assert (mask.max() == 0) == (name == "NORMAL")


def test_files_match_render_case(dataset) -> None:
    case = render_case(2, size=48, rng=np.random.default_rng([3, 2, 1]))
    img = _read(dataset / "Viral Pneumonia" / "Viral Pneumonia_0001.png")[2]
    mask = _read(dataset / "masks" / "Viral Pneumonia" / "Viral Pneumonia_0001.png")[2]
    assert np.array_equal(img, case.image) and np.array_equal(mask > 0, case.mask)
    lungs = _read(dataset / "lung_masks" / "Viral Pneumonia" / "Viral Pneumonia_0001.png")[2]
    assert set(np.unique(lungs)) == {0, 255} and np.array_equal(lungs > 0, case.lungs)
    assert not (case.mask & ~case.lungs).any()  # lesions lie inside the lung fields


def test_phantom_loads_both_mask_kinds(dataset) -> None:
    from robustkit.data.loader import load_dataset

    ds = load_dataset(dataset)
    assert ds.has_masks and ds.has_lung_masks
    lungs = ds.load_masks(range(len(ds)), size=(48, 48), kind="lung")
    lesions = ds.load_masks(range(len(ds)), size=(48, 48))
    assert lungs.reshape(len(ds), -1).any(axis=1).all()  # every case has lung fields
    assert not (lesions & ~lungs).any()


@pytest.mark.parametrize("size", [32, 64, 200, 512])
def test_sizes_render_plausible_anatomy(size: int) -> None:
    case = _case(0, 0, size=size)
    assert case.image.shape == (size, size)
    lung_frac = case.lungs.mean()
    assert 0.1 < lung_frac < 0.4  # two lung fields, a fraction of the image
    labels, n = ndimage.label(case.lungs)
    sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1]
    assert sizes[:2].sum() >= 0.98 * sizes.sum()  # left and right lung, split by the mediastinum
    assert sizes[1] > 0.5 * sizes[0]
    if size >= 64:
        assert n == 2
    # Lungs are dark: darker than the image as a whole (bones, heart, abdomen are bright).
    clear = _case(1, 0, size=size)
    assert clear.image[clear.lungs].mean() < clear.image.mean() - 10


# ------------------------------------------------------------------ lesions


def test_lesion_masks_inside_lungs_and_normal_empty(balanced) -> None:
    for case in balanced[:: 5]:
        assert not (case.mask & ~case.lungs).any()
        assert case.mask.any() == (case.label != 1)


def test_findings_brighten_lesion_pixels() -> None:
    for label in (0, 2):
        for i in range(5):
            sick = _case(label, i, size=128)
            clear = _case(label, i, size=128, severity=0.0)
            assert not clear.mask.any()
            diff = (sick.image.astype(float) - clear.image)[sick.mask] / 255.0
            assert diff.mean() > 0.05  # a visible opacity, in [0, 1] units
            outside = (sick.image.astype(float) - clear.image)[~sick.mask & ~sick.lungs] / 255.0
            assert abs(outside.mean()) < diff.mean() / 3


def test_findings_sit_where_the_class_says(balanced) -> None:
    """COVID-19 lesions are peripheral and low; viral pneumonia lesions are central."""
    for case in balanced[::3]:
        if case.label == 1:
            continue
        ys, xs = np.nonzero(case.lungs)
        ly, lx = np.nonzero(case.mask)
        mid = 0.5 * (xs.min() + xs.max())
        lateral = np.abs(lx - mid).mean() / np.abs(xs - mid).mean()
        low = (ly.mean() - ys.min()) / (ys.max() - ys.min())
        if case.label == 0:
            assert lateral > 1.05 and low > 0.5
        else:
            assert lateral < 0.95


def test_global_stats_do_not_reveal_the_class(balanced) -> None:
    x = np.array([[c.image.mean(), c.image.std()] for c in balanced]) / 255.0
    y = np.array([c.label for c in balanced])
    model = make_pipeline(StandardScaler(), LogisticRegression())
    assert cross_val_score(model, x, y, cv=5).mean() <= 0.6


def _regional_features(case: PhantomCase) -> list[float]:
    """Mean lung brightness in lower-lateral and perihilar bands, relative to the whole lung."""
    img = case.image.astype(float)
    ys, xs = np.nonzero(case.lungs)
    mid = 0.5 * (xs.min() + xs.max())
    half = 0.5 * (xs.max() - xs.min())
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    rel_x = np.abs(xx - mid) / half
    rel_y = (yy - ys.min()) / (ys.max() - ys.min())
    base = img[case.lungs].mean()
    lower_lat = case.lungs & (rel_x > 0.6) & (rel_y > 0.5)
    hilar = case.lungs & (rel_x < 0.5) & (rel_y > 0.25) & (rel_y < 0.65)
    rough = np.abs(img - ndimage.uniform_filter(img, 3))
    return [img[lower_lat].mean() - base, img[hilar].mean() - base,
            rough[hilar].mean() - rough[case.lungs].mean()]


def test_findings_are_learnable_from_regional_features(balanced) -> None:
    """Positive control: simple lung-region features separate the classes well above chance."""
    x = np.array([_regional_features(c) for c in balanced])
    y = np.array([c.label for c in balanced])
    model = make_pipeline(StandardScaler(), LogisticRegression())
    assert cross_val_score(model, x, y, cv=5).mean() >= 0.8


# ------------------------------------------------------------------ shortcut


def _corner_is_marked(image: np.ndarray, corner: str) -> bool:
    n = image.shape[0] // 5
    ys = slice(0, n) if corner.startswith("top") else slice(-n, None)
    xs = slice(0, n) if corner.endswith("left") else slice(-n, None)
    patch = image[ys, xs]
    return bool((patch == 255).sum() >= 10 and (patch <= 6).sum() >= 10)


def test_shortcut_marker_only_when_asked_and_correlated() -> None:
    hits = total = 0
    for label in range(3):
        for i in range(20):
            plain = _case(label, i)
            marked = _case(label, i, shortcut=True)
            corners = [c for _, c in SHORTCUT_MARKERS if _corner_is_marked(marked.image, c)]
            assert len(corners) == 1
            assert not any(_corner_is_marked(plain.image, c) for _, c in SHORTCUT_MARKERS)
            changed = np.argwhere(plain.image != marked.image)
            assert changed.size and np.ptp(changed, axis=0).max() < 64 // 2  # only the marker
            hits += corners[0] == SHORTCUT_MARKERS[label][1]
            total += 1
    assert hits / total >= 0.75  # 90% by design


def test_shortcut_recorded_in_metadata(tmp_path) -> None:
    out = generate_phantom(tmp_path, per_class=1, size=32, shortcut=True)
    meta = json.loads((out / "phantom.json").read_text(encoding="utf-8"))
    assert meta["shortcut"] is True
    assert meta["shortcut_markers"]["COVID-19"] == {"text": "C", "corner": "top-left"}
    assert 0.5 < meta["shortcut_match_probability"] <= 1.0


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_class": 0},
        {"per_class": 1.5},
        {"per_class": True},
        {"per_class": 1, "size": 31},
        {"per_class": 1, "size": 4096},
        {"per_class": 1, "size": 64.0},
        {"per_class": 1, "seed": -1},
        {"per_class": 1, "shortcut": "yes"},
    ],
)
def test_generate_rejects_bad_arguments(tmp_path, kwargs) -> None:
    with pytest.raises(ConfigError):
        generate_phantom(tmp_path, **kwargs)


@pytest.mark.parametrize(
    "label, kwargs",
    [
        (3, {}),
        (-1, {}),
        (True, {}),
        (0, {"severity": 1.5}),
        (0, {"severity": -0.1}),
        (0, {"rng": 0}),
        (0, {"size": 16}),
    ],
)
def test_render_rejects_bad_arguments(label, kwargs) -> None:
    args = {"size": 64, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(ConfigError):
        render_case(label, **args)
