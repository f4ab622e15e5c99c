"""Out-of-distribution image sets built offline from files that installed packages ship.

No downloads: every set comes from pydicom's bundled test files (and ``pydicom-data``'s,
when installed), scikit-learn's sample photographs, the phantom, generated images, or the
reference chest images themselves. Each set is deterministic given the seed.

* far: ``ct``, ``mr``, ``us``, ``nm`` (real DICOM images of those modalities), ``xray_limb``
  (a non-chest computed radiograph), each expanded by seeded crops, intensity windows and
  rotations; ``natural`` (photographs and their crops); ``synthetic`` (uniform, Gaussian
  noise, blank and gradient images);
* near: ``effusion`` (phantom chest radiographs with a pleural effusion, a finding outside
  the model's classes), ``inverted`` and ``crop`` (the reference chest images inverted, or
  cropped to a small patch).

:class:`ArrayDataset` holds them as a :class:`~robustkit.data.dataset.Dataset` whose
samples are either arrays in memory or files, so a study maps them like any batch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.data.dataset import Dataset, Sample
from robustkit.data.imageio import _fit, read_image
from robustkit.errors import DataError

__all__ = ["FAR_SETS", "NEAR_SETS", "OOD_SETS", "ArrayDataset", "build_sets", "dicom_sources"]

#: DICOM files per far set, by file name (the first found in pydicom's or pydicom-data's folders)
DICOM_FILES: dict[str, tuple[str, ...]] = {
    "ct": ("CT_small.dcm", "693_UNCI.dcm", "J2K_pixelrep_mismatch.dcm", "explicit_VR-UN.dcm", "bad_sequence.dcm"),
    "mr": ("MR_small.dcm", "examples_overlay.dcm", "MR2_UNCI.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"),
    "us": ("examples_rgb_color.dcm", "examples_palette.dcm", "OBXXXX1A.dcm", "US1_UNCI.dcm", "gdcm-US-ALOKA-16.dcm"),
    "nm": ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
    "xray_limb": ("RG3_UNCI.dcm", "RG3_J2KR.dcm"),
}
FAR_SETS = (*DICOM_FILES, "natural", "synthetic")
NEAR_SETS = ("effusion", "inverted", "crop")
OOD_SETS = FAR_SETS + NEAR_SETS


class ArrayDataset(Dataset):
    """A dataset whose samples are arrays in memory (``arrays[id]``) or, for other ids, files."""

    def __init__(self, class_names: Sequence[str], samples: Sequence[Sample],
                 arrays: dict[str, np.ndarray], **kwargs: Any) -> None:
        super().__init__(Path("."), class_names, samples, **kwargs)
        self.arrays = arrays

    def _derive(self, samples: Sequence[Sample], class_names: Sequence[str] | None = None) -> Dataset:
        return ArrayDataset(self.class_names if class_names is None else class_names, samples, self.arrays,
                            max_pixels=self.max_pixels, _store=self._store)

    def _image(self, sample: Sample, size: tuple[int, int], channels: int) -> np.ndarray:
        arr = self.arrays.get(sample.id)
        if arr is None:
            return super()._image(sample, size, channels)
        return _fit(arr.astype(np.float32) / 255.0, size, channels)


def _rng(seed: int, *keys: object) -> np.random.Generator:
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _roots() -> list[Path]:
    roots = []
    for module, sub in (("pydicom", "data/test_files"), ("data_store", "data")):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            roots.append(Path(spec.origin).parent / sub)
    return [r for r in roots if r.is_dir()]


def dicom_sources(name: str) -> list[Path]:
    """The DICOM files of far set ``name`` that are installed here."""
    found = []
    for fname in DICOM_FILES[name]:
        hits = [r / fname for r in _roots() if (r / fname).is_file()]
        found += hits[:1]
    return found


@functools.lru_cache(maxsize=32)
def _decoded(path: Path) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_image(path)
        except DataError:
            return None  # a codec that is not installed: the file is left out (and said so)


def _augment(img: np.ndarray, rng: np.random.Generator, size: int, *, keep: bool = False) -> np.ndarray:
    """A seeded crop (50-100% of the side), intensity window, quarter rotation and flip."""
    h, w = img.shape[:2]
    if not keep:
        side = rng.uniform(0.5, 1.0)
        ch, cw = max(8, int(h * side)), max(8, int(w * side))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = img[y:y + ch, x:x + cw]
        lo, hi = np.percentile(img, [rng.uniform(0, 10), rng.uniform(90, 100)])
        img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) ** rng.uniform(0.7, 1.4)
        img = np.rot90(img, int(rng.integers(0, 4)))
        if rng.uniform() < 0.5:
            img = img[:, ::-1]
    return _to_uint8(img, size)


def _to_uint8(img: np.ndarray, size: int) -> np.ndarray:
    out = _fit(np.ascontiguousarray(img, dtype=np.float32), (size, size), 3 if img.ndim == 3 else 1)
    out = out[..., 0] if out.shape[2] == 1 else out
    return np.round(out * 255).astype(np.uint8)


def _shrink(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` resized so that its longer side is at most ``side`` (crops need no more)."""
    h, w = img.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return img
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    out = _fit(np.ascontiguousarray(img, dtype=np.float32), size, 3 if img.ndim == 3 else 1)
    return out[..., 0] if img.ndim == 2 else out


def _expand(sources: list[tuple[str, np.ndarray]], name: str, n: int, *, size: int, seed: int) -> list[np.ndarray]:
    """``n`` images: each source once unchanged, then seeded variants, round-robin."""
    sources = [(src, _shrink(img, 2 * size)) for src, img in sources]
    out = []
    for i in range(n):
        _, img = sources[i % len(sources)]
        out.append(_augment(img, _rng(seed, "ood", name, i), size, keep=i < len(sources)))
    return out


def _dicom_set(name: str, n: int, *, size: int, seed: int) -> tuple[list[np.ndarray], str]:
    files = dicom_sources(name)
    decoded = [(f.name, _decoded(f)) for f in files]
    sources = [(fname, img) for fname, img in decoded if img is not None and min(img.shape[:2]) >= 32]
    if not sources:
        return [], f"no readable {name.upper()} file installed"
    return _expand(sources, name, n, size=size, seed=seed), (
        f"{n} views of {len(sources)} DICOM file(s) ({', '.join(s for s, _ in sources)}) from pydicom"
        f"{'/pydicom-data' if any('data_store' in str(f) for f in files) else ''}")


def _natural(n: int, *, size: int, seed: int) -> tuple[list[np.ndarray], str]:
    from sklearn.datasets import load_sample_images

    photos = [(f"sklearn:{i}", img.astype(np.float32) / 255.0) for i, img in enumerate(load_sample_images().images)]
    return _expand(photos, "natural", n, size=size, seed=seed), (
        f"{n} views (crops, windows, rotations) of scikit-learn's {len(photos)} sample photographs")


def _synthetic(n: int, *, size: int, seed: int) -> tuple[list[np.ndarray], str]:
    out = []
    for i in range(n):
        rng = _rng(seed, "ood", "synthetic", i)
        kind = i % 4
        if kind == 0:
            img = rng.uniform(0, 1, (size, size))
        elif kind == 1:
            img = np.clip(rng.uniform(0.3, 0.7) + rng.uniform(0.05, 0.3) * rng.standard_normal((size, size)), 0, 1)
        elif kind == 2:
            img = np.full((size, size), rng.uniform(0, 1))
        else:
            img = np.tile(np.linspace(0, 1, size), (size, 1)) ** rng.uniform(0.5, 2)
        out.append(_to_uint8(img, size))
    return out, f"{n} generated images: uniform noise, Gaussian noise, blank and gradient, in turn"


def _effusion(n: int, *, size: int, seed: int) -> tuple[list[np.ndarray], str]:
    from robustkit.data.phantom import render_effusion

    out = [_to_uint8(render_effusion(size=size, rng=_rng(seed, "ood", "effusion", i)).image / 255.0, size)
           for i in range(n)]
    return out, f"{n} phantom chest radiographs with a pleural effusion (no finding of the model's classes)"


def _from_reference(name: str, n: int, reference: Dataset | None, *, size: int, seed: int
                    ) -> tuple[list[np.ndarray], str]:
    if reference is None or len(reference) == 0:
        return [], "no reference images"
    pick = _rng(seed, "ood", name).permutation(len(reference))[:n]
    images = reference.load_images(pick, size=(size, size), channels=1)[..., 0]
    out = []
    for i, img in enumerate(images):
        if name == "inverted":
            out.append(_to_uint8(1.0 - img, size))
            continue
        rng = _rng(seed, "ood", name, i)
        side = int(size * rng.uniform(0.15, 0.3))
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        out.append(_to_uint8(img[y:y + side, x:x + side], size))
    what = "inverted (negative)" if name == "inverted" else "cropped to a 15-30% patch, enlarged"
    return out, f"{len(out)} reference chest images {what}"


def build_sets(names: Sequence[str], *, n_per_set: int, size: int, seed: int,
               reference: Dataset | None = None) -> dict[str, tuple[list[np.ndarray], str]]:
    """Build the named sets: name -> (uint8 images ``(size, size)`` or ``(size, size, 3)``, provenance)."""
    builders: dict[str, Callable[[], tuple[list[np.ndarray], str]]] = {
        "natural": lambda: _natural(n_per_set, size=size, seed=seed),
        "synthetic": lambda: _synthetic(n_per_set, size=size, seed=seed),
        "effusion": lambda: _effusion(n_per_set, size=size, seed=seed),
    }
    out = {}
    for name in names:
        if name in DICOM_FILES:
            out[name] = _dicom_set(name, n_per_set, size=size, seed=seed)
        elif name in builders:
            out[name] = builders[name]()
        else:
            out[name] = _from_reference(name, n_per_set, reference, size=size, seed=seed)
    return out
