"""Datasets of labelled images: discovery, validation, decoding, resizing and fingerprints.

Two layouts are read by :func:`load_dataset`:

* a folder per class (the COVID-19 Radiography Database layout)::

      root/COVID-19/COVID-19_0001.png       root/masks/COVID-19/COVID-19_0001.png
      root/NORMAL/...                       (or root/<class>/masks/<stem>.png, or
      root/Viral Pneumonia/...               root/<class>/images/ + root/<class>/masks/)

* a CSV manifest with the columns ``path,label`` and an optional ``mask`` column, the paths
  relative to the folder of the CSV file.

Images are returned in pixel space: float32 ``(N, H, W, C)`` in [0, 1]. PNG, JPEG, BMP and
TIFF (8- and 16-bit, grayscale, RGB, RGBA, palette, CMYK) are read with pillow; DICOM with
pydicom (rescale slope/intercept, VOI window, MONOCHROME1 inverted to MONOCHROME2). Every
failure raises :class:`~robustkit.errors.DataError` naming the file and the problem.

Example:
    >>> data = load_dataset("data/phantom")                       # doctest: +SKIP
    >>> x = data.load_images(range(8), size=(256, 256), channels=3)  # doctest: +SKIP
    >>> x.shape, x.dtype                                          # doctest: +SKIP
    ((8, 256, 256, 3), dtype('float32'))
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustkit.errors import DataError, check_choice, check_range, param_error

__all__ = [
    "CACHE_BYTES",
    "IMAGE_SUFFIXES",
    "Dataset",
    "Sample",
    "load_dataset",
    "read_image",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
#: Resized images are kept in memory (float32) while their total stays under this many bytes.
CACHE_BYTES = 256 * 1024 * 1024

_DICOM_SUFFIXES = (".dcm", ".dicom")
_MASKS = "masks"
_IMAGES = "images"
_KINDS = "a PNG, JPEG, BMP, TIFF or DICOM image"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        id: Stable id: the path relative to the dataset root, POSIX, without suffix.
        path: Where the image is.
        label: Index into the dataset's ``class_names``.
        mask_path: The lesion mask of the image, if there is one.
    """

    id: str
    path: Path
    label: int
    mask_path: Path | None = None


def _bad(path: Path | str, reason: str) -> DataError:
    return DataError(f"{path}: {reason}")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence decoder warnings (pillow, pydicom); real problems raise instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise _bad(path, f"expected {_KINDS}, got a path that does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise _bad(path, f"expected {_KINDS}, got a zero-byte file.")


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise _bad(
            path,
            f"expected at most {max_pixels:,} pixels, got {width}x{height} = {width * height:,} "
            "(a possible decompression bomb; raise max_pixels if the image is genuine).",
        )


# --------------------------------------------------------------------------- pillow


@contextmanager
def _open_pil(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """Open ``path`` with pillow (header only), check its size, map errors to DataError."""
    try:
        with _quiet(), Image.open(path) as im:
            _check_pixels(path, im.size[0], im.size[1], max_pixels)
            yield im
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bad(path, f"expected at most {max_pixels:,} pixels, got {exc}") from None
    except UnidentifiedImageError:
        raise _bad(path, f"expected {_KINDS}, got a file that is not a readable image.") from None
    except Exception as exc:  # pillow raises OSError, SyntaxError, ValueError, struct.error ...
        raise _bad(path, _decode_reason(exc)) from None


def _decode_reason(exc: BaseException, fmt: str = "") -> str:
    text = str(exc)
    kind = f"{fmt} file" if fmt else "file"
    if "truncat" in text.lower():
        return f"expected a readable image, got a truncated {kind}."
    return f"expected a readable image, got a corrupt {kind} ({type(exc).__name__}: {text})."


def _png_sbit(path: Path) -> int | None:
    """The significant bits of a grayscale PNG's sBIT chunk, if it has one."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            body = fh.read(length)
            fh.seek(4, os.SEEK_CUR)  # CRC
            if kind == b"sBIT" and body:
                return int(body[0])


def _sixteen_bit_max(im: Image.Image, path: Path, arr: np.ndarray) -> float:
    """The full-scale value of a 16-bit image: 65535, or ``2**bits - 1`` if the file says so."""
    bits: int | None = None
    if im.format == "PNG":
        bits = _png_sbit(path)
    elif im.format == "TIFF":
        tag = getattr(im, "tag_v2", {}).get(258)
        bits = int(tag[0] if isinstance(tag, tuple) else tag) if tag else None
    if bits is None or not 1 <= bits < 16 or arr.max(initial=0) > 2**bits - 1:
        bits = 16
    return float(2**bits - 1)


def _composite(arr: np.ndarray) -> np.ndarray:
    """Composite (H, W, C+1) colour + alpha over black -> (H, W, C)."""
    alpha = arr[..., -1:]
    return arr[..., :-1] * alpha


def _pil_to_array(im: Image.Image, path: Path) -> np.ndarray:
    """Decoded pillow image -> float32 (H, W) or (H, W, 3) in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float32)
        return arr / _sixteen_bit_max(im, path, arr)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise _bad(
                path, "expected 8- or 16-bit pixel values, got 32-bit integers outside [0, 65535]."
            )
        return arr.astype(np.float32) / _sixteen_bit_max(im, path, arr)
    if mode == "F":
        return _float_image(np.asarray(im, dtype=np.float32), path)
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if mode == "LA":
        return _composite(np.asarray(im, dtype=np.float32) / 255.0)[..., 0]
    if mode == "RGB":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode in ("RGBA", "RGBa", "PA", "P") and (mode != "P" or "transparency" in im.info):
        return _composite(np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0)
    if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "La"):
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    raise _bad(
        path,
        f"expected an 8/16-bit grayscale, RGB(A), palette or CMYK image, got pillow mode {mode!r}.",
    )


def _float_image(arr: np.ndarray, path: Path) -> np.ndarray:
    """A float image: kept if in [0, 1], else min-max scaled; NaN or inf is an error."""
    if not np.all(np.isfinite(arr)):
        raise _bad(path, "expected finite pixel values, got NaN or infinity in a float image.")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
    if lo >= 0.0 and hi <= 1.0:
        return arr
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _read_pil(path: Path, max_pixels: int) -> np.ndarray:
    with _open_pil(path, max_pixels) as im:
        fmt = im.format or path.suffix.lstrip(".").upper()
        try:
            with _quiet():
                im.load()
        except Exception as exc:
            raise _bad(path, _decode_reason(exc, fmt)) from None
        return _pil_to_array(im, path)


# --------------------------------------------------------------------------- DICOM


@contextmanager
def _dicom_guard(path: Path, expected: str) -> Iterator[None]:
    """Silence pydicom's warnings and turn whatever a malformed file makes pydicom (or a header
    value) raise into a DataError naming the file; DataError passes through."""
    try:
        with _quiet():
            yield
    except DataError:
        raise
    except Exception as exc:  # pydicom raises InvalidDicomError, ValueError, KeyError, TypeError ...
        raise _bad(path, f"{expected}, got {type(exc).__name__}: {exc}") from None


def _open_dicom(path: Path, max_pixels: int) -> Any:
    """Read a DICOM file (pixel data not decoded) and check it can be decoded."""
    import pydicom
    from pydicom.pixels import get_decoder

    with _dicom_guard(path, "expected a readable DICOM file"):
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            raise _bad(path, "expected a DICOM image, got a DICOM file without pixel data.")
        uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if uid is None:
            raise _bad(path, "expected a DICOM file with a transfer syntax, got none in its file meta.")
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise _bad(
                path,
                f"expected a DICOM transfer syntax pydicom can decode, got {uid.name} ({uid}) with no decoder installed.",
            )
        _check_pixels(path, int(ds.get("Columns", 0)), int(ds.get("Rows", 0)), max_pixels)
    return ds


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def _voi_window(arr: np.ndarray, center: float | None, width: float | None) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) to [0, 1]; min-max without a window."""
    if center is not None and width is not None and width > 1:
        return np.clip((arr - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _read_dicom(path: Path, max_pixels: int) -> np.ndarray:
    ds = _open_dicom(path, max_pixels)
    with _dicom_guard(path, "expected decodable DICOM pixel data"):
        raw = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise _bad(path, f"expected a single-frame DICOM image, got {frames} frames.")
        if int(ds.get("SamplesPerPixel", 1)) == 3:
            bits = int(ds.get("BitsStored", 8))
            out = raw.astype(np.float64) / (2**bits - 1)
        else:
            slope = _first(ds.get("RescaleSlope")) or 1.0
            intercept = _first(ds.get("RescaleIntercept")) or 0.0
            arr = raw.astype(np.float64) * slope + intercept
            if not np.all(np.isfinite(arr)):
                raise _bad(path, f"expected finite DICOM rescale values, got slope {slope}, intercept {intercept}.")
            out = _voi_window(arr, _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth")))
            if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
                out = 1.0 - out
    if not np.all(np.isfinite(out)):
        raise _bad(path, "expected finite pixel values, got NaN or infinity after the DICOM rescale and window.")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- reading


def read_image(path: str | Path, *, max_pixels: int = 100_000_000) -> np.ndarray:
    """Decode one image file to pixel space.

    Args:
        path: A PNG, JPEG, BMP, TIFF or DICOM file (DICOM also recognised by its magic).
        max_pixels: Largest width * height accepted, checked before decoding.

    Returns:
        float32 (H, W) for grayscale (including RGB with equal channels) or (H, W, 3) for
        colour, values in [0, 1].

    Raises:
        DataError: naming the file and the reason for any file that cannot be decoded.
    """
    path = Path(path)
    _check_file(path)
    arr = _read_dicom(path, max_pixels) if _is_dicom(path) else _read_pil(path, max_pixels)
    if (
        arr.ndim == 3
        and arr.shape[2] == 3
        and np.array_equal(arr[..., 0], arr[..., 1])
        and np.array_equal(arr[..., 0], arr[..., 2])
    ):
        arr = arr[..., 0]
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def _probe(path: Path, max_pixels: int) -> tuple[int, int]:
    """Cheap check that ``path`` is a usable image (header, size, PNG CRCs); returns (H, W)."""
    _check_file(path)
    if _is_dicom(path):
        ds = _open_dicom(path, max_pixels)
        return int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    with _open_pil(path, max_pixels) as im:
        width, height = im.size
        try:
            with _quiet():
                im.verify()
        except Exception as exc:
            raise _bad(path, _decode_reason(exc, im.format or "")) from None
    return height, width


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of one float32 (h, w) plane to (H, W)."""
    if plane.shape == tuple(size):
        return plane
    im = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(im.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def _fit(img: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """(h, w) or (h, w, 3) in [0, 1] -> float32 (H, W, channels) in [0, 1]."""
    if img.ndim == 3 and channels == 1:
        img = img @ _LUMA
    planes = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]
    out = np.stack([_resize_plane(p, size) for p in planes], axis=-1)
    if out.shape[2] == 1 and channels == 3:
        out = np.repeat(out, 3, axis=2)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _mask_to_bool(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A decoded mask (any positive value marks a lesion, relative to its maximum) -> bool (H, W)."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    peak = float(mask.max(initial=0.0))
    binary = (mask > 0.5 * peak).astype(np.float32) if peak > 0 else np.zeros_like(mask)
    return _resize_plane(binary, size) >= 0.5


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Store:
    """Per-file state shared by a dataset and every dataset derived from it."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.images: dict[tuple[Path, tuple[int, int], int], np.ndarray] = {}
        self.hashes: dict[Path, str] = {}
        self.sizes: dict[Path, tuple[int, int]] = {}

    def put(self, key: tuple[Path, tuple[int, int], int], arr: np.ndarray) -> None:
        if self.used + arr.nbytes <= self.budget:
            arr.setflags(write=False)
            self.images[key] = arr
            self.used += arr.nbytes

    def sha256(self, path: Path) -> str:
        if path not in self.hashes:
            self.hashes[path] = _sha256(path)
        return self.hashes[path]


# --------------------------------------------------------------------------- dataset


def _check_size(size: Any) -> tuple[int, int]:
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    if not ok or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise param_error("size", "a (height, width) pair of positive ints", size)
    return int(size[0]), int(size[1])


def _check_channels(channels: Any) -> int:
    if channels not in (1, 3) or isinstance(channels, bool):
        raise param_error("channels", "1 or 3", channels)
    return int(channels)


class Dataset:
    """Labelled images with stable ids, loaded by :func:`load_dataset`.

    Attributes:
        root: The dataset folder (the CSV's folder for a manifest), as given.
        class_names: Class names; ``Sample.label`` indexes this list.
        samples: The samples, in a deterministic order (class, id for folders; row order
            for manifests).
        skipped: ``(relative path, reason)`` of the files dropped with ``on_bad_input="skip"``.
        format: ``"folder"`` or ``"manifest"``.
    """

    def __init__(
        self,
        root: Path,
        class_names: Sequence[str],
        samples: Sequence[Sample],
        *,
        format: str = "folder",
        skipped: Sequence[tuple[str, str]] = (),
        max_pixels: int = 100_000_000,
        cache_bytes: int | None = None,
        _store: _Store | None = None,
    ) -> None:
        self.root = Path(root)
        self.class_names = list(class_names)
        self.samples = list(samples)
        self.format = format
        self.skipped = list(skipped)
        self.max_pixels = max_pixels
        self._store = _store or _Store(CACHE_BYTES if cache_bytes is None else cache_bytes)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"Dataset(root={str(self.root)!r}, n_samples={len(self)}, class_names={self.class_names!r})"

    @property
    def ids(self) -> np.ndarray:
        """str (N,): the sample ids."""
        return np.array([s.id for s in self.samples], dtype=str)

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,): the sample labels."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def has_masks(self) -> bool:
        """Whether any sample has a lesion mask."""
        return any(s.mask_path is not None for s in self.samples)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the content: ids, labels, image and mask bytes, class names, and the
        relative paths of the files skipped as unreadable (so a skip shows in the fingerprint)."""
        store = self._store
        rows = sorted(
            (s.id, s.label, store.sha256(s.path), store.sha256(s.mask_path) if s.mask_path else "")
            for s in self.samples
        )
        content: dict[str, Any] = {"class_names": self.class_names, "samples": rows}
        if self.skipped:
            content["skipped"] = sorted(path for path, _ in self.skipped)
        payload = json.dumps(content, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _derive(
        self, samples: Sequence[Sample], class_names: Sequence[str] | None = None
    ) -> Dataset:
        return Dataset(
            self.root,
            self.class_names if class_names is None else class_names,
            samples,
            format=self.format,
            skipped=self.skipped,
            max_pixels=self.max_pixels,
            _store=self._store,
        )

    def _indices(self, indices: Any) -> np.ndarray:
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range for a dataset of {len(self)} samples")
        return idx % max(len(self), 1)

    def subset(self, indices: Iterable[int] | np.ndarray) -> Dataset:
        """The samples at ``indices``, in that order (sharing this dataset's cache)."""
        return self._derive([self.samples[i] for i in self._indices(indices)])

    def _by_class(self) -> list[np.ndarray]:
        labels = self.labels
        return [np.flatnonzero(labels == k) for k in range(len(self.class_names))]

    def subsample(self, n: int | None, *, seed: int) -> Dataset:
        """A seeded, stratified subsample of ``n`` samples (proportional per class, at least
        one per class present), in original order; ``self`` if ``n`` is None or >= len."""
        if n is None:
            return self
        check_range("n", n, low=1, integer=True, where="Dataset.subsample")
        if n >= len(self):
            return self
        groups = self._by_class()
        counts = np.array([len(g) for g in groups], dtype=np.int64)
        present = int((counts > 0).sum())
        if n < present:
            raise param_error(
                "n",
                f"an int >= {present} (one sample per class present) or None",
                n,
                where="Dataset.subsample",
            )
        alloc = _allocate(counts, n)
        rng = np.random.default_rng(seed)
        picked = [
            rng.choice(g, size=int(a), replace=False)
            for g, a in zip(groups, alloc, strict=True)
            if a
        ]
        return self.subset(np.sort(np.concatenate(picked)))

    def split(self, fraction: float, *, seed: int) -> tuple[Dataset, Dataset]:
        """Seeded stratified split; the first part gets about ``fraction`` of every class
        (at least one sample on each side for a class with two or more)."""
        check_range("fraction", fraction, low=0.0, high=1.0, low_open=True, where="Dataset.split")
        rng = np.random.default_rng(seed)
        first: list[np.ndarray] = []
        second: list[np.ndarray] = []
        for group in self._by_class():
            k = int(np.floor(fraction * len(group) + 0.5))
            if len(group) >= 2:
                k = min(max(k, 1), len(group) - 1)
            perm = rng.permutation(group)
            first.append(perm[:k])
            second.append(perm[k:])
        empty = np.zeros(0, dtype=np.int64)
        return (
            self.subset(np.sort(np.concatenate(first + [empty]))),
            self.subset(np.sort(np.concatenate(second + [empty]))),
        )

    def _image(self, sample: Sample, size: tuple[int, int], channels: int) -> np.ndarray:
        key = (sample.path, size, channels)
        cached = self._store.images.get(key)
        if cached is not None:
            return cached
        img = read_image(sample.path, max_pixels=self.max_pixels)
        self._store.sizes[sample.path] = img.shape[:2]
        out = _fit(img, size, channels)
        self._store.put(key, out)
        return out

    def load_images(
        self, indices: Iterable[int] | np.ndarray, *, size: tuple[int, int], channels: int
    ) -> np.ndarray:
        """Decode and resize images.

        Args:
            indices: Sample positions.
            size: Target (H, W).
            channels: 1 (RGB becomes BT.601 luma) or 3 (grayscale is repeated).

        Returns:
            float32 (n, H, W, channels) in [0, 1].
        """
        size, channels = _check_size(size), _check_channels(channels)
        idx = self._indices(indices)
        out = np.empty((len(idx), size[0], size[1], channels), dtype=np.float32)
        for row, i in enumerate(idx):
            out[row] = self._image(self.samples[i], size, channels)
        return out

    def _image_shape(self, path: Path) -> tuple[int, int]:
        if path not in self._store.sizes:
            self._store.sizes[path] = _probe(path, self.max_pixels)
        return self._store.sizes[path]

    def _mask(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        if sample.mask_path is None:
            return np.zeros(size, dtype=bool)
        key = (sample.mask_path, size, 0)
        cached = self._store.images.get(key)
        if cached is not None:
            return cached
        mask = read_image(sample.mask_path, max_pixels=self.max_pixels)
        _check_mask_shape(
            sample.path, self._image_shape(sample.path), sample.mask_path, mask.shape[:2]
        )
        out = _mask_to_bool(mask, size)
        self._store.put(key, out)
        return out

    def load_masks(
        self, indices: Iterable[int] | np.ndarray, *, size: tuple[int, int]
    ) -> np.ndarray:
        """Lesion masks resized to ``size``: bool (n, H, W), all False where a sample has none."""
        size = _check_size(size)
        idx = self._indices(indices)
        out = np.zeros((len(idx), size[0], size[1]), dtype=bool)
        for row, i in enumerate(idx):
            out[row] = self._mask(self.samples[i], size)
        return out

    def batches(
        self,
        batch_size: int,
        *,
        size: tuple[int, int],
        channels: int,
        indices: Iterable[int] | np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices int64 (b,), images float32 (b, H, W, C))`` in order."""
        check_range("batch_size", batch_size, low=1, integer=True, where="Dataset.batches")
        idx = np.arange(len(self), dtype=np.int64) if indices is None else self._indices(indices)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            yield chunk, self.load_images(chunk, size=size, channels=channels)

    def class_counts(self) -> dict[str, int]:
        """Samples per class, every class listed (in class order)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for results.json and the report)."""
        return {
            "root": str(self.root),
            "format": self.format,
            "n_samples": len(self),
            "class_names": list(self.class_names),
            "class_counts": self.class_counts(),
            "has_masks": self.has_masks,
            "fingerprint": self.fingerprint,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }

    def with_class_order(self, class_names: Sequence[str]) -> Dataset:
        """The same samples (same order) relabelled to ``class_names`` (e.g. a model's order).

        Raises:
            DataError: naming the classes missing on either side.
        """
        order = _resolve_classes(self.class_names, class_names, self.root)
        new_index = {name: i for i, name in enumerate(order)}
        samples = [replace(s, label=new_index[self.class_names[s.label]]) for s in self.samples]
        return self._derive(samples, order)


def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Per-class sample counts summing to ``n``: proportional (largest remainder), at least
    one per present class, never more than a class has."""
    quota = n * counts / counts.sum()
    alloc = np.minimum(
        np.maximum(np.floor(quota).astype(np.int64), (counts > 0).astype(np.int64)), counts
    )
    while alloc.sum() < n:
        alloc[int(np.argmax(np.where(alloc < counts, quota - alloc, -np.inf)))] += 1
    while alloc.sum() > n:
        alloc[int(np.argmax(np.where(alloc > 1, alloc - quota, -np.inf)))] -= 1
    return alloc


def _check_mask_shape(
    image: Path, image_hw: tuple[int, int], mask: Path, mask_hw: tuple[int, int]
) -> None:
    if tuple(image_hw) != tuple(mask_hw):
        raise _bad(
            mask,
            f"expected a mask of the size of its image {image} ({image_hw[1]}x{image_hw[0]}), "
            f"got {mask_hw[1]}x{mask_hw[0]}.",
        )


def _resolve_classes(found: Sequence[str], given: Sequence[str] | None, where: Path) -> list[str]:
    """The class order to use: ``given`` if it names exactly the ``found`` classes."""
    if given is None:
        return list(found)
    given = list(given)
    if len(set(given)) != len(given) or not all(isinstance(c, str) and c for c in given):
        raise param_error("class_names", "a list of unique, non-empty class names", given)
    missing = [c for c in given if c not in found]
    extra = [c for c in found if c not in given]
    if missing or extra:
        parts = ([f"missing from the data: {missing}"] if missing else []) + (
            [f"not in class_names: {extra}"] if extra else []
        )
        raise _bad(where, f"expected the classes {given}, got {list(found)} ({'; '.join(parts)}).")
    return given


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Entry:
    id: str
    path: Path
    label: str
    mask_path: Path | None
    rel: str


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(name: str) -> bool:
    return not _hidden(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _walk_images(folder: Path, *, skip: Path | None = None) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), ignoring hidden entries and ``skip``."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and here / d != skip)
        found.extend(here / f for f in sorted(filenames) if _is_image(f))
    return found


def _stem_key(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def _mask_index(folder: Path) -> dict[str, Path]:
    """Masks under ``folder`` keyed by their relative path without suffix."""
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for path in _walk_images(folder):
        index.setdefault(_stem_key(path, folder), path)
    return index


def _class_folders(root: Path) -> list[Path]:
    folders = [
        p for p in root.iterdir() if p.is_dir() and not _hidden(p.name) and p.name.lower() != _MASKS
    ]
    if not folders:
        raise _bad(root, "expected class folders (one subfolder of images per class), got none.")
    return sorted(folders, key=lambda p: p.name)


def _scan_class(root: Path, folder: Path, root_masks: dict[str, Path]) -> list[_Entry]:
    image_dir = folder / _IMAGES if (folder / _IMAGES).is_dir() else folder
    local_dir = folder / _MASKS
    local_masks = _mask_index(local_dir)
    entries = []
    for path in _walk_images(image_dir, skip=local_dir):
        sid = _stem_key(path, root)
        mask = root_masks.get(sid) or local_masks.get(_stem_key(path, image_dir))
        entries.append(_Entry(sid, path, folder.name, mask, path.relative_to(root).as_posix()))
    if not entries:
        raise _bad(folder, f"expected at least one image in class {folder.name!r}, got none.")
    return entries


def _scan_folder(root: Path) -> tuple[list[str], list[_Entry]]:
    folders = _class_folders(root)
    root_masks = _mask_index(root / _MASKS)
    entries = [e for folder in folders for e in _scan_class(root, folder, root_masks)]
    return [f.name for f in folders], entries


def _manifest_path(base: Path, value: str) -> tuple[Path, str]:
    path = base / value
    try:
        rel = path.relative_to(base).as_posix()
    except ValueError:
        rel = Path(value).as_posix()
    return path, rel


def _scan_manifest(csv_path: Path) -> tuple[list[str], list[_Entry]]:
    base = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "path" not in columns or "label" not in columns:
                raise _bad(
                    csv_path,
                    f"expected a CSV header with the columns 'path' and 'label' (and optionally 'mask'), got {columns}.",
                )
            reader.fieldnames = columns
            entries = [_manifest_entry(csv_path, base, row, reader.line_num) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _bad(
            csv_path, f"expected a UTF-8 CSV manifest, got {type(exc).__name__}: {exc}"
        ) from None
    if not entries:
        raise _bad(csv_path, "expected at least one row in the manifest, got none.")
    return sorted({e.label for e in entries}), entries


def _manifest_entry(csv_path: Path, base: Path, row: dict[str, Any], line: int) -> _Entry:
    value = (row.get("path") or "").strip()
    label = (row.get("label") or "").strip()
    if not value or not label:
        raise _bad(
            csv_path,
            f"expected a path and a label on line {line}, got path={value!r}, label={label!r}.",
        )
    path, rel = _manifest_path(base, value)
    mask_value = (row.get("mask") or "").strip()
    mask = _manifest_path(base, mask_value)[0] if mask_value else None
    return _Entry(Path(rel).with_suffix("").as_posix(), path, label, mask, rel)


def _check_unique_ids(entries: Sequence[_Entry]) -> None:
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.id in seen:
            raise _bad(
                entry.path,
                f"expected unique sample ids, got id {entry.id!r} also used by {seen[entry.id]}.",
            )
        seen[entry.id] = entry.path


def _validate_entry(
    entry: _Entry, max_pixels: int, deep: bool, sizes: dict[Path, tuple[int, int]]
) -> None:
    """Raise DataError if the entry's image (or mask) is missing, unreadable or mismatched."""
    if not deep:
        _check_file(entry.path)
        if entry.mask_path is not None:
            _check_file(entry.mask_path)
        return
    sizes[entry.path] = _probe(entry.path, max_pixels)
    if entry.mask_path is not None:
        mask_hw = _probe(entry.mask_path, max_pixels)
        _check_mask_shape(entry.path, sizes[entry.path], entry.mask_path, mask_hw)


def _filter_bad(
    entries: Sequence[_Entry],
    *,
    max_pixels: int,
    deep: bool,
    skip: bool,
    sizes: dict[Path, tuple[int, int]],
) -> tuple[list[_Entry], list[tuple[str, str]]]:
    kept: list[_Entry] = []
    skipped: list[tuple[str, str]] = []
    for entry in entries:
        try:
            _validate_entry(entry, max_pixels, deep, sizes)
        except DataError as exc:
            if not skip:
                raise
            text = str(exc)
            prefix = next(
                (
                    f"{p}: "
                    for p in (entry.path, entry.mask_path)
                    if p and text.startswith(f"{p}: ")
                ),
                "",
            )
            skipped.append((entry.rel, text[len(prefix) :]))
            continue
        kept.append(entry)
    return kept, skipped


def load_dataset(
    path: str | Path,
    *,
    class_names: list[str] | None = None,
    on_bad_input: str = "fail",
    max_pixels: int = 100_000_000,
    validate: bool = True,
) -> Dataset:
    """Find, check and index a labelled image dataset (images are decoded lazily).

    Args:
        path: A folder with one subfolder per class (plus optional ``masks``), or a CSV
            manifest with the columns ``path,label[,mask]``.
        class_names: The classes the data must have, in this order (e.g. the model's).
            Default: sorted folder names or sorted unique labels.
        on_bad_input: ``"fail"`` raises on the first unreadable file; ``"skip"`` drops it
            and records it in ``Dataset.skipped``.
        max_pixels: Largest width * height accepted for one image.
        validate: Open every image's header (and check PNG CRCs, mask sizes) up front.

    Returns:
        The dataset, samples ordered by (class, id) for a folder, by row for a manifest.

    Raises:
        DataError: missing root, no class folders, an empty class, duplicate ids, a
            class-name mismatch, or (with ``"fail"``) an unreadable image or mask.
    """
    check_choice("on_bad_input", on_bad_input, ("fail", "skip"), where="load_dataset")
    check_range("max_pixels", max_pixels, low=1, integer=True, where="load_dataset")
    root = Path(path)
    if root.is_dir():
        fmt, (found, entries) = "folder", _scan_folder(root)
    elif root.is_file() and root.suffix.lower() == ".csv":
        fmt, (found, entries) = "manifest", _scan_manifest(root)
    elif root.exists():
        raise _bad(root, "expected a dataset folder or a .csv manifest, got another kind of file.")
    else:
        raise _bad(
            root, "expected a dataset folder or a .csv manifest, got a path that does not exist."
        )
    _check_unique_ids(entries)
    order = _resolve_classes(found, class_names, root)
    store = _Store(CACHE_BYTES)
    entries, skipped = _filter_bad(
        entries,
        max_pixels=max_pixels,
        deep=validate,
        skip=on_bad_input == "skip",
        sizes=store.sizes,
    )
    _check_nonempty(root, order, entries)
    index = {name: i for i, name in enumerate(order)}
    samples = [Sample(e.id, e.path, index[e.label], e.mask_path) for e in entries]
    if fmt == "folder":
        samples.sort(key=lambda s: (s.label, s.id))
    base = root if fmt == "folder" else root.parent
    return Dataset(
        base, order, samples, format=fmt, skipped=skipped, max_pixels=max_pixels, _store=store
    )


def _check_nonempty(root: Path, class_names: Sequence[str], entries: Sequence[_Entry]) -> None:
    present = {e.label for e in entries}
    for name in class_names:
        if name not in present:
            raise _bad(root, f"expected at least one usable image in class {name!r}, got none.")
