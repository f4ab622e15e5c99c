"""Transforms: the contract every one keeps, and known answers from independent references."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from robustkit.data.transforms import (
    TRANSFORMS,
    family_transforms,
    get_transform,
    rotate,
    translate,
    zoom,
)
from robustkit.errors import ConfigError

NAMES = sorted(TRANSFORMS)


def _batch(n: int = 3, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Smooth images with structure (a gradient, a bright disc) and some texture, in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = np.empty((n, size, size, channels), dtype=np.float32)
    for i in range(n):
        disc = ((yy - 0.4 - 0.05 * i) ** 2 + (xx - 0.6) ** 2) < 0.05
        img = 0.2 + 0.4 * xx + 0.3 * disc + 0.05 * rng.standard_normal((size, size))
        out[i] = np.clip(img, 0.1, 0.9)[..., None]
    return out


def _apply(name: str, x: np.ndarray, s: int, seed: int = 0) -> np.ndarray:
    return get_transform(name)(x, s, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(name: str) -> None:
    x = _batch()
    assert _apply(name, x, 0) is x


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_keeps_shape_dtype_and_range(name: str, channels: int) -> None:
    x = _batch(channels=channels)
    for s in range(1, 6):
        y = _apply(name, x, s)
        assert y.shape == x.shape and y.dtype == np.float32
        assert y.min() >= 0.0 and y.max() <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_and_input_untouched(name: str) -> None:
    x = _batch()
    before = x.copy()
    a, b = _apply(name, x, 4, seed=7), _apply(name, x, 4, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, before)
    if get_transform(name).random:
        assert not np.array_equal(a, _apply(name, x, 4, seed=8))


@pytest.mark.parametrize("name", [n for n in NAMES if TRANSFORMS[n].graded])
def test_effect_grows_with_severity(name: str) -> None:
    x = _batch(n=4, size=64)
    dist = [float(np.abs(_apply(name, x, s) - x).mean()) for s in range(1, 6)]
    assert dist[0] > 0
    assert dist[-1] > dist[0]
    assert all(b >= a * 0.9 for a, b in zip(dist, dist[1:])), dist


def test_bad_severity_and_name_are_refused() -> None:
    t = get_transform("jpeg")
    for bad in (7, -1, 2.5, True):
        with pytest.raises(ConfigError, match="severity"):
            t(_batch(), bad)
    with pytest.raises(ConfigError, match="'gaussian_blur'"):
        get_transform("gausian_blur")
    with pytest.raises(ConfigError, match="rng"):
        get_transform("gaussian")(_batch(), 2)
    with pytest.raises(ConfigError, match=r"\(N, H, W, C\)"):
        t(np.zeros((32, 32)), 1)


def test_registry_describes_every_transform() -> None:
    assert set(family_transforms("perturbation")) | set(family_transforms("noise")) == set(TRANSFORMS)
    for t in TRANSFORMS.values():
        assert len(t.params) == 5 and t.description and t.param_name and t.source
        assert t.family in ("perturbation", "noise")


def test_gaussian_blur_matches_scipy() -> None:
    x = _batch(n=1, size=224)  # at 224 px the parameter is sigma itself
    t = get_transform("gaussian_blur")
    for s in (1, 5):
        ref = ndimage.gaussian_filter(x[0, ..., 0], sigma=t.param(s), mode="reflect", truncate=4.0)
        np.testing.assert_allclose(t(x, s)[0, ..., 0], ref, atol=1e-5)


def test_jpeg_matches_pil_encode_decode() -> None:
    x = _batch(n=2, size=48)
    t = get_transform("jpeg")
    for s in (1, 5):
        buf = io.BytesIO()
        Image.fromarray(np.round(x[1, ..., 0] * 255).astype(np.uint8)).save(buf, format="JPEG", quality=t.param(s))
        ref = np.asarray(Image.open(buf), dtype=np.float32) / 255.0
        np.testing.assert_allclose(t(x, s)[1, ..., 0], ref, atol=1e-6)


def test_rotation_by_a_right_angle_is_rot90() -> None:
    x = _batch(n=2, size=31, channels=3, seed=3)
    x[..., 1] *= 0.5  # colour, so the channel handling is tested too
    np.testing.assert_allclose(rotate(x, 90), np.rot90(x, 1, axes=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(rotate(x, -90), np.rot90(x, -1, axes=(1, 2)), atol=1e-6)


def test_small_rotation_matches_scipy_inside_the_image() -> None:
    x = _batch(n=1, size=40)
    ours = rotate(x, 12)[0, ..., 0]
    ref = ndimage.rotate(x[0, ..., 0], 12, reshape=False, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(ours[8:-8, 8:-8], ref[8:-8, 8:-8], atol=1e-5)


def test_translation_is_a_zero_filled_roll() -> None:
    x = _batch(n=2, size=20)
    for dy, dx in ((3, 5), (-4, 2), (0, -7)):
        ref = np.roll(x, (dy, dx), axis=(1, 2))
        if dy > 0:
            ref[:, :dy] = 0
        elif dy < 0:
            ref[:, dy:] = 0
        if dx > 0:
            ref[:, :, :dx] = 0
        elif dx < 0:
            ref[:, :, dx:] = 0
        np.testing.assert_array_equal(translate(x, dy, dx), ref)


def test_translation_transform_shifts_by_its_share() -> None:
    x = _batch(n=1, size=50)
    share = get_transform("translation").param(5)
    k = int(round(share * 50))
    np.testing.assert_array_equal(get_transform("translation")(x, 5), translate(x, k, k))


def test_zoom_keeps_the_centre_and_magnifies() -> None:
    x = np.zeros((1, 41, 41, 1), np.float32)
    x[0, 15:26, 15:26] = 1.0  # an 11 px square at the centre
    y = zoom(x, 2.0)
    assert y[0, 20, 20, 0] == 1.0
    assert abs(float(y.sum()) - 4 * float(x.sum())) / (4 * float(x.sum())) < 0.1


def test_inversion_flip_and_exposure_known_answers() -> None:
    x = _batch()
    for s in (1, 5):
        np.testing.assert_allclose(get_transform("inversion")(x, s), 1 - x, atol=1e-7)
        np.testing.assert_array_equal(get_transform("hflip")(x, s), x[:, :, ::-1])
    for name in ("exposure_up", "exposure_down"):
        t = get_transform(name)
        np.testing.assert_allclose(t(x, 5), np.clip(x * t.param(5), 0, 1), atol=1e-6)
    g = get_transform("gamma_up")
    np.testing.assert_allclose(g(x, 3), x ** g.param(3), rtol=1e-5)


def test_contrast_keeps_the_mean_and_scales_spread() -> None:
    x = _batch()
    t = get_transform("contrast_down")
    y = t(x, 5)
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(1, 2, 3)), t.param(5) * x.std(axis=(1, 2, 3)), rtol=1e-4)


def test_resolution_loss_keeps_the_mean_and_removes_detail() -> None:
    x = _batch(n=2, size=64)
    y = get_transform("resolution")(x, 3)
    np.testing.assert_allclose(y.mean(), x.mean(), atol=0.01)
    assert np.abs(np.diff(y, axis=2)).mean() < 0.5 * np.abs(np.diff(x, axis=2)).mean()


def test_collimation_blacks_out_the_borders_only() -> None:
    x = _batch(n=1, size=50)
    t = get_transform("collimation")
    b = int(round(t.param(5) * 50))
    y = t(x, 5)
    assert np.all(y[:, :b] == 0) and np.all(y[:, -b:] == 0) and np.all(y[:, :, :b] == 0)
    np.testing.assert_array_equal(y[:, b:-b, b:-b], x[:, b:-b, b:-b])


def test_marker_burns_a_bright_letter_in_the_top_left_corner() -> None:
    x = np.full((2, 64, 64, 1), 0.4, np.float32)
    t = get_transform("marker")
    y = t(x, 5)
    changed = np.argwhere(np.any(y != x, axis=(0, 3)))
    assert changed[:, 0].max() < 32 and changed[:, 1].max() < 32  # top-left quadrant only
    assert y.max() == pytest.approx(1.0) and y.min() < 0.1  # bright letter, dark box
    area = [float((np.abs(t(x, s) - x) > 0).mean()) for s in range(1, 6)]
    assert area == sorted(area) and area[0] < area[-1]


def test_salt_and_pepper_changes_the_given_share() -> None:
    x = np.full((4, 64, 64, 1), 0.5, np.float32)
    t = get_transform("salt_pepper")
    for s in (1, 5):
        y = t(x, s, rng=np.random.default_rng(s))
        changed = y != x
        assert abs(changed.mean() - t.param(s)) < 0.01
        assert abs((y == 1).mean() - (y == 0).mean()) < 0.01


def test_poisson_variance_is_mean_over_photons() -> None:
    x = np.full((4, 64, 64, 1), 0.4, np.float32)
    t = get_transform("poisson")
    for s in (1, 5):
        photons = t.param(s)
        y = t(x, s, rng=np.random.default_rng(0))
        assert abs(y.mean() - 0.4) < 0.01
        assert y.var() == pytest.approx(0.4 / photons, rel=0.1)


def test_gaussian_and_speckle_noise_scale() -> None:
    x = np.full((4, 64, 64, 1), 0.5, np.float32)
    g, sp = get_transform("gaussian"), get_transform("speckle")
    assert g(x, 2, rng=np.random.default_rng(0)).std() == pytest.approx(g.param(2), rel=0.05)
    assert sp(x, 2, rng=np.random.default_rng(0)).std() == pytest.approx(0.5 * sp.param(2), rel=0.05)


def test_grayscale_in_three_channels_gets_the_same_noise_in_each() -> None:
    x = np.repeat(_batch(), 3, axis=-1)
    y = get_transform("gaussian")(x, 3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(y[..., 0], y[..., 2])
    one = get_transform("gaussian")(x[..., :1], 3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(y[..., :1], one)


def test_random_draws_are_prefix_consistent() -> None:
    """The first k images get the same noise whether drawn alone or in a larger batch."""
    x = _batch(n=5)
    for name in family_transforms("noise"):
        whole = _apply(name, x, 3, seed=11)
        part = _apply(name, x[:2], 3, seed=11)
        np.testing.assert_array_equal(whole[:2], part)
