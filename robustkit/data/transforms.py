"""Acquisition, geometry and noise transforms of chest radiographs, on batches in pixel space.

Every transform maps a batch ``(N, H, W, C)`` of float32 images in [0, 1] to a batch of the
same shape and dtype in [0, 1], at a severity from 1 (mild) to 5 (severe); severity 0 is
the identity and returns its input unchanged. The work is vectorised over the batch (one
``scipy.ndimage`` call or one matrix product per batch), except JPEG, which has to go
through PIL's encoder one image at a time. Random transforms draw from the generator they
are given, so the same generator state gives the same output.

Severity parameters. No chest X-ray corruption benchmark exists; the nearest published
settings are MedMNIST-C's for ChestMNIST (Di Salvo et al. 2024, arXiv:2406.17536,
``medmnistc/corruptions/registry.py``), CheXphoto's rotations (Phan et al. 2020) and the
training augmentation of the audited model (rotation 15 deg, shifts 0.15, zoom 0.1). Each
transform's ``source`` says which it follows and where it differs. Sizes given "at 224 px"
(MedMNIST-C's resolution) are scaled to the image's side, so a transform means the same
thing at 128 and at 512 px.

Grayscale: when a 3-channel batch holds a grayscale image repeated in every channel (how a
radiograph reaches an ImageNet model), every transform works on one channel and repeats
the result: noise is drawn once per pixel, as a detector would, JPEG encodes a grayscale
image, and the work is a third.

Example:
    >>> import numpy as np
    >>> x = np.full((2, 32, 32, 1), 0.5, dtype=np.float32)
    >>> y = get_transform("gaussian").apply(x, 3, rng=np.random.default_rng(0))
    >>> y.shape, y.dtype, bool(y.min() >= 0 and y.max() <= 1)
    ((2, 32, 32, 1), dtype('float32'), True)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from robustkit.errors import ConfigError, param_error

__all__ = [
    "FAMILIES",
    "SEVERITIES",
    "TRANSFORMS",
    "Transform",
    "family_transforms",
    "get_transform",
    "jpeg",
    "rotate",
    "translate",
    "zoom",
]

FAMILIES = ("perturbation", "noise")
SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 224  # MedMNIST-C's resolution: pixel sizes "at 224 px" are scaled from it
MARKER_DARK = 0.02  # the backing box of a burned-in annotation (as in robustkit.data.phantom)

TransformFn = Callable[[np.ndarray, Any, Any], np.ndarray]  # (x, param, rng or None) -> y


@dataclass(frozen=True)
class Transform:
    """One transform with its five severities.

    Attributes:
        name: registry name (``gaussian_blur``); also the metric qualifier.
        family: ``perturbation`` or ``noise`` (the study that runs it).
        description: what it simulates, for the report.
        param_name: what ``params`` are, with units.
        params: the parameter at severities 1..5.
        fn: ``fn(x, param, rng) -> y`` on a float32 batch; output is clipped to [0, 1] here.
        source: where the parameters come from and where they differ from it.
        random: whether it draws from ``rng`` (noise); deterministic ones ignore it.
        graded: False where every severity is the same operation (flip, inversion).
    """

    name: str
    family: str
    description: str
    param_name: str
    params: tuple[Any, ...]
    fn: TransformFn = field(repr=False, compare=False)
    source: str = ""
    random: bool = False
    graded: bool = True

    def param(self, severity: int) -> Any:
        """The parameter at ``severity`` (1..5)."""
        return self.params[_check_severity(severity, self.name, allow_zero=False) - 1]

    def apply(self, x: np.ndarray, severity: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """Transform a batch ``(N, H, W, C)`` in [0, 1] at ``severity`` (0 = identity).

        Raises:
            ConfigError: on a severity outside 0..5, a batch that is not 4-D, or a random
                transform called without a generator.
        """
        sev = _check_severity(severity, self.name, allow_zero=True)
        batch = _check_batch(x, self.name)
        if sev == 0:
            return batch
        if self.random and not isinstance(rng, np.random.Generator):
            raise param_error("rng", f"a numpy.random.Generator (transform {self.name!r} is random)", rng)
        channels = batch.shape[-1]
        if channels > 1 and _is_gray(batch):  # a radiograph repeated in 3 channels: work on one
            out = np.repeat(self.fn(batch[..., :1], self.params[sev - 1], rng), channels, axis=-1)
        else:
            out = self.fn(batch, self.params[sev - 1], rng)
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)

    __call__ = apply


def _check_severity(severity: Any, name: str, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not low <= severity <= 5:
        raise param_error("severity", f"an int in [{low}, 5]", severity, where=f"transform {name!r}")
    return int(severity)


def _check_batch(x: Any, name: str) -> np.ndarray:
    batch = np.asarray(x, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[-1] < 1:
        raise param_error("x", "a batch of images shaped (N, H, W, C)", f"shape {batch.shape}",
                          where=f"transform {name!r}")
    return batch


def _scale(x: np.ndarray) -> float:
    """Pixels of this batch per pixel at the 224 px reference side."""
    return min(x.shape[1], x.shape[2]) / REFERENCE_SIDE


def _is_gray(x: np.ndarray) -> bool:
    return x.shape[-1] == 1 or bool(np.all(x == x[..., :1]))


# ------------------------------------------------------------------------ intensity


def _multiply(x: np.ndarray, factor: float, rng: Any) -> np.ndarray:
    return x * np.float32(factor)


def _gamma(x: np.ndarray, g: float, rng: Any) -> np.ndarray:
    return np.power(x, np.float32(g))


def _contrast(x: np.ndarray, factor: float, rng: Any) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return mean + np.float32(factor) * (x - mean)


def _invert(x: np.ndarray, param: Any, rng: Any) -> np.ndarray:
    return 1.0 - x


# ------------------------------------------------------------------------ blur and resolution


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(4.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: np.ndarray, sigma224: float, rng: Any) -> np.ndarray:
    k = _gaussian_kernel(sigma224 * _scale(x))
    y = ndimage.correlate1d(x, k, axis=1, mode="reflect")
    return ndimage.correlate1d(y, k, axis=2, mode="reflect")


def _box_kernel(length: float) -> np.ndarray:
    """Motion over ``length`` pixels: the mean of the image shifted (bilinearly) by every
    offset in [-length/2, length/2], as weights on whole-pixel offsets (sums to 1)."""
    r = int(np.ceil(length / 2.0)) + 1
    t = np.arange(-r, r + 1, dtype=np.float64)
    u = (np.arange(256) + 0.5) / 256 * length - length / 2.0  # midpoint rule over the motion
    k = np.clip(1.0 - np.abs(t[:, None] - u[None, :]), 0.0, None).mean(axis=1)
    k = k / k.sum()
    return k[np.flatnonzero(k > 1e-12).min():np.flatnonzero(k > 1e-12).max() + 1]


def _motion_blur(x: np.ndarray, length224: float, rng: Any) -> np.ndarray:
    return ndimage.correlate1d(x, _box_kernel(length224 * _scale(x)), axis=1, mode="reflect")


def _area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` weights averaging each output cell's span of input pixels."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    left, right = np.arange(n_in)[None, :], np.arange(1, n_in + 1)[None, :]
    overlap = np.clip(np.minimum(right, edges[1:, None]) - np.maximum(left, edges[:-1, None]), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _linear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` bilinear interpolation weights, pixel centres aligned (half-pixel)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - w)
    np.add.at(m, (np.arange(n_out), hi), w)
    return m


def _resolution(x: np.ndarray, factor: float, rng: Any) -> np.ndarray:
    h, w = x.shape[1:3]
    mh, mw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
    rows = (_linear_matrix(h, mh) @ _area_matrix(mh, h)).astype(np.float32)
    cols = (_linear_matrix(w, mw) @ _area_matrix(mw, w)).astype(np.float32)
    y = np.einsum("ih,nhwc->niwc", rows, x, optimize=True)
    return np.einsum("jw,niwc->nijc", cols, y, optimize=True)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode each image with PIL's JPEG codec at ``quality`` (1-95).

    The only per-image loop in this module: PIL encodes one image at a time. One-channel
    images are encoded as 8-bit grayscale, three-channel ones as RGB.
    """
    gray = x.shape[-1] == 1
    out = np.empty_like(x)
    for i, img in enumerate(x):
        arr = np.round(np.clip(img[..., 0] if gray else img, 0, 1) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
        out[i] = dec[..., None] if gray else dec
    return out


def _jpeg(x: np.ndarray, quality: int, rng: Any) -> np.ndarray:
    if x.shape[-1] not in (1, 3):
        raise param_error("x", "images with 1 or 3 channels for JPEG", f"{x.shape[-1]} channels")
    return jpeg(x, quality)


# ------------------------------------------------------------------------ geometry


def _affine(x: np.ndarray, mat2: np.ndarray) -> np.ndarray:
    """Resample the whole batch at input (i, j) = mat2 @ (out - c) + c (bilinear, black fill).

    The source coordinates are the same for every image, so they are computed once and the
    batch is gathered at the four neighbours: an equivalent of one
    ``scipy.ndimage.affine_transform`` call (order 1, constant 0) over the batch that does
    not interpolate along the batch and channel axes.
    """
    h, w = x.shape[1:3]
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), axis=-1).reshape(-1, 2)
    src = (grid - centre) @ mat2.T + centre
    src = np.where(np.abs(src - np.round(src)) < 1e-9, np.round(src), src)  # exact right angles
    i0, j0 = np.floor(src[:, 0]).astype(np.int64), np.floor(src[:, 1]).astype(np.int64)
    fi, fj = (src[:, 0] - i0).astype(np.float32), (src[:, 1] - j0).astype(np.float32)
    flat = x.reshape(x.shape[0], h * w, x.shape[3])
    out = np.zeros_like(flat)
    for di, dj, wt in ((0, 0, (1 - fi) * (1 - fj)), (0, 1, (1 - fi) * fj), (1, 0, fi * (1 - fj)), (1, 1, fi * fj)):
        ii, jj = i0 + di, j0 + dj
        ok = np.flatnonzero((ii >= 0) & (ii < h) & (jj >= 0) & (jj < w) & (wt > 0))
        out[:, ok] += wt[ok, None] * np.take(flat, ii[ok] * w + jj[ok], axis=1)
    return out.reshape(x.shape)


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every image counter-clockwise by ``degrees`` about its centre (bilinear, black fill).

    ``rotate(x, 90)`` equals ``np.rot90(x, 1, axes=(1, 2))`` for square images.
    """
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return _affine(x, np.array([[c, s], [-s, c]]))


def zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Magnify every image by ``factor`` about its centre (> 1 crops the edges; black fill)."""
    return _affine(x, np.eye(2) / float(factor))


def translate(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift every image by whole pixels (down ``dy``, right ``dx``), filling with black."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    dy, dx = int(dy), int(dx)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[:, dst_y, dst_x] = x[:, src_y, src_x]
    return out


def _rotation(x: np.ndarray, degrees: float, rng: Any) -> np.ndarray:
    return rotate(x, degrees)


def _zoom(x: np.ndarray, factor: float, rng: Any) -> np.ndarray:
    return zoom(x, factor)


def _translation(x: np.ndarray, share: float, rng: Any) -> np.ndarray:
    return translate(x, int(round(share * x.shape[1])), int(round(share * x.shape[2])))


def _hflip(x: np.ndarray, param: Any, rng: Any) -> np.ndarray:
    return x[:, :, ::-1, :].copy()


def _collimation(x: np.ndarray, share: float, rng: Any) -> np.ndarray:
    h, w = x.shape[1:3]
    bh, bw = int(round(share * h)), int(round(share * w))
    out = x.copy()
    out[:, :bh], out[:, h - bh:] = 0.0, 0.0
    out[:, :, :bw], out[:, :, w - bw:] = 0.0, 0.0
    return out


# ------------------------------------------------------------------------ burned-in marker

_GLYPH_R = ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#")  # 5x7 block letter


def _marker_alpha(h: int, w: int, height_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Opacity maps ``(H, W)`` of the letter and of its dark backing box, top-left corner."""
    glyph = np.array([[c == "#" for c in row] for row in _GLYPH_R], dtype=np.float32)
    gh = max(7, int(round(height_share * h)))
    gw = max(5, int(round(gh * 5 / 7)))
    rows = np.minimum((np.arange(gh) * 7) // gh, 6)
    cols = np.minimum((np.arange(gw) * 5) // gw, 4)
    letter = glyph[rows][:, cols]
    margin, pad = max(1, int(round(0.03 * h))), max(1, gh // 7)
    lit, box = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    y0, x0 = margin + pad, margin + pad
    box[margin:min(h, y0 + gh + pad), margin:min(w, x0 + gw + pad)] = 1.0
    lit[y0:y0 + gh, x0:x0 + gw] = letter[: max(0, h - y0), : max(0, w - x0)]
    return lit, box


def _marker(x: np.ndarray, param: tuple[float, float], rng: Any) -> np.ndarray:
    height_share, opacity = param
    lit, box = _marker_alpha(x.shape[1], x.shape[2], height_share)
    a_box = (opacity * box)[None, :, :, None]
    a_lit = (opacity * lit)[None, :, :, None]
    y = x * (1 - a_box) + MARKER_DARK * a_box
    return y * (1 - a_lit) + a_lit


# ------------------------------------------------------------------------ noise


def _gaussian(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma)


def _speckle(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + x * (rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma))


def _poisson(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.poisson(np.clip(x, 0, 1) * photons) / photons).astype(np.float32)


def _salt_pepper(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(x.shape, dtype=np.float32)
    out = np.where(u < amount / 2, np.float32(0.0), x)
    return np.where((u >= amount / 2) & (u < amount), np.float32(1.0), out)


# ------------------------------------------------------------------------ registry

_MEDMNIST = "MedMNIST-C, ChestMNIST"


def _t(name: str, family: str, description: str, param_name: str, params: tuple[Any, ...],
       fn: TransformFn, source: str, *, random: bool = False, graded: bool = True) -> Transform:
    assert len(params) == len(SEVERITIES), name
    return Transform(name, family, description, param_name, params, fn, source, random, graded)


_ALL = (
    _t("exposure_up", "perturbation", "Over-exposed / brighter film: every pixel multiplied (highlights clip).",
       "brightness factor", (1.1, 1.2, 1.3, 1.4, 1.5), _multiply,
       f"{_MEDMNIST} brightness_up (PIL ImageEnhance.Brightness = x * factor); same values."),
    _t("exposure_down", "perturbation", "Under-exposed / darker film: every pixel multiplied.",
       "brightness factor", (0.9, 0.8, 0.7, 0.6, 0.5), _multiply,
       f"{_MEDMNIST} brightness_down; same values."),
    _t("gamma_up", "perturbation", "Different detector response / window curve: x ** gamma, gamma > 1 darkens mid-tones.",
       "gamma", (1.1, 1.2, 1.3, 1.4, 1.6), _gamma, f"{_MEDMNIST} gamma_corr_up (torchvision adjust_gamma); same values."),
    _t("gamma_down", "perturbation", "Different detector response / window curve: x ** gamma, gamma < 1 lightens mid-tones.",
       "gamma", (0.9, 0.8, 0.7, 0.6, 0.4), _gamma, f"{_MEDMNIST} gamma_corr_down; same values."),
    _t("contrast_up", "perturbation", "Narrower window: distances from the image mean stretched (extremes clip).",
       "contrast factor", (1.1, 1.2, 1.3, 1.4, 1.6), _contrast,
       f"{_MEDMNIST} contrast_up (PIL ImageEnhance.Contrast); same values, float mean instead of PIL's rounded one."),
    _t("contrast_down", "perturbation", "Wider window / flatter image: distances from the image mean shrunk.",
       "contrast factor", (0.9, 0.8, 0.7, 0.6, 0.4), _contrast, f"{_MEDMNIST} contrast_down; same values."),
    _t("gaussian_blur", "perturbation", "Defocus / focal-spot and scatter unsharpness: Gaussian blur.",
       "sigma (px at 224 px)", (0.8, 1.1, 1.4, 1.7, 2.3), _gaussian_blur,
       f"{_MEDMNIST} gaussian_blur kernels 3, 5, 7, 9, 13 -> torchvision's sigma 0.3((k-1)/2-1)+0.8; "
       "the kernel is not truncated at k (radius 4 sigma) and sigma scales with the image side."),
    _t("motion_blur", "perturbation", "Patient motion during exposure: a vertical (cranio-caudal, breathing) box blur.",
       "blur length (px at 224 px)", (3, 5, 9, 13, 17), _motion_blur,
       "MedMNIST-C motion_blur radii (5-17 px on its greyscale sets; ChestMNIST has none); vertical instead "
       "of a random angle in +-45 deg because breathing moves the diaphragm cranio-caudally, and fixed so the "
       "transform is deterministic."),
    _t("resolution", "perturbation", "Resolution loss: area-downsampled by the factor, then bilinear-upsampled back.",
       "scale factor", (0.3, 0.25, 0.2, 0.15, 0.1), _resolution,
       f"{_MEDMNIST} pixelate factors; bilinear instead of box upsampling, since detector resolution loss "
       "looks blurred, not blocky."),
    _t("jpeg", "perturbation", "Lossy JPEG compression (PACS export, teleradiology, screenshots).",
       "JPEG quality", (50, 30, 15, 10, 7), _jpeg, f"{_MEDMNIST} jpeg_compression; same qualities (PIL codec)."),
    _t("rotation", "perturbation", "Patient positioning: the image rotated counter-clockwise about its centre.",
       "degrees", (5, 10, 15, 20, 25), _rotation,
       "CheXphoto (Phan et al. 2020): 5 degrees per level; one direction (counter-clockwise) so the transform "
       "is deterministic. The audited model was trained with rotations up to 15 deg: levels 4-5 go beyond."),
    _t("translation", "perturbation", "Off-centre positioning: shifted down and right by a share of the side, black fill.",
       "shift (share of side)", (0.04, 0.08, 0.12, 0.16, 0.2), _translation,
       "No published chest setting; spaced up to and past the training augmentation's shifts of 0.15."),
    _t("zoom", "perturbation", "Magnification / tighter field of view: zoomed in about the centre (edges cut).",
       "zoom factor", (1.1, 1.2, 1.3, 1.4, 1.5), _zoom,
       "No published chest setting; severity 1 is the training augmentation's zoom of 0.1, then steps of 0.1."),
    _t("hflip", "perturbation", "Laterality error: the image mirrored left-right (dextrocardia look). Same at every severity.",
       "operation", ("mirror",) * 5, _hflip, "Full flip at every severity (a flip has no degree).", graded=False),
    _t("inversion", "perturbation", "A MONOCHROME1 image shown as MONOCHROME2: 1 - x. Full inversion at every severity.",
       "operation", ("1 - x",) * 5, _invert, "Full inversion at every severity (a partial blend is not a real image).",
       graded=False),
    _t("marker", "perturbation", "A burned-in laterality marker 'R' (bright block letter on a dark box) in the top-left corner.",
       "letter height (share of side), opacity", ((0.04, 0.5), (0.06, 0.6), (0.08, 0.75), (0.10, 0.9), (0.12, 1.0)),
       _marker, "No published setting; sized around robustkit.data.phantom's shortcut markers (letters ~0.11 of the "
       "side, 3% margin) so that a model that learned those markers reacts to it."),
    _t("collimation", "perturbation", "Collimation / electronic shuttering: black borders on all four sides.",
       "border width (share of side)", (0.03, 0.06, 0.1, 0.14, 0.18), _collimation,
       "No published setting; MedMNIST-C's black_corner is the nearest (dermoscopy)."),
    _t("gaussian", "noise", "Electronic (read-out) noise: additive Gaussian.", "sigma",
       (0.04, 0.08, 0.12, 0.18, 0.26), _gaussian, f"{_MEDMNIST} gaussian_noise; same values.", random=True),
    _t("poisson", "noise", "Quantum noise at falling dose: Poisson(x * photons) / photons.", "photons per unit intensity",
       (60, 25, 18, 10, 5), _poisson, f"{_MEDMNIST} shot_noise; same values.", random=True),
    _t("speckle", "noise", "Multiplicative noise: x + x * N(0, sigma).", "sigma",
       (0.05, 0.15, 0.2, 0.35, 0.45), _speckle, f"{_MEDMNIST} speckle_noise; same values.", random=True),
    _t("salt_pepper", "noise", "Dead and hot detector pixels: a share of pixels set to 0 or 1 (half each).",
       "share of pixels", (0.01, 0.03, 0.06, 0.09, 0.17), _salt_pepper,
       f"{_MEDMNIST} impulse_noise (skimage 's&p'); same values.", random=True),
)

#: Every transform by name, perturbations first, in report order.
TRANSFORMS: dict[str, Transform] = {t.name: t for t in _ALL}


def get_transform(name: str) -> Transform:
    """The transform called ``name``; ConfigError naming the choices otherwise."""
    if name not in TRANSFORMS:
        raise param_error("transform", "one of " + ", ".join(map(repr, TRANSFORMS)), name)
    return TRANSFORMS[name]


def family_transforms(family: str) -> tuple[str, ...]:
    """Names of the transforms of ``family`` (``perturbation`` or ``noise``), in report order."""
    if family not in FAMILIES:
        raise ConfigError(f"The 'family' parameter must be one of {FAMILIES}. Got {family!r} instead.")
    return tuple(t.name for t in _ALL if t.family == family)
