"""Reading one image file into pixel space: decoding, size checks and resizing.

PNG, JPEG, BMP and TIFF (8- and 16-bit, grayscale, RGB, RGBA, palette, CMYK) are read with
pillow; DICOM with pydicom (rescale slope/intercept, VOI window, MONOCHROME1 inverted to
MONOCHROME2). The pixel count is checked from the header before decoding (decompression
bombs). Images are returned in pixel space: float32 in [0, 1]. Every failure raises
:class:`~robustkit.errors.DataError` naming the file and the problem.

Compressed DICOM (how hospitals export radiographs) decodes through the ``dicom`` extra,
``pip install "robustkit[dicom]"``: the pylibjpeg family (``pylibjpeg``,
``pylibjpeg-libjpeg`` for JPEG Baseline/Extended, JPEG Lossless Process 14 and JPEG-LS,
``pylibjpeg-openjpeg`` for JPEG 2000, ``pylibjpeg-rle`` for a faster RLE); deflated and
RLE also decode with pydicom alone. The pylibjpeg family was chosen over python-gdcm
because it is maintained by pydicom's own developers as pydicom's decoder plug-ins (the
same ``pydicom.pixels`` decoder interface, versioned with pydicom 3), ships binary wheels
for every platform robustkit supports, is MIT-licensed, small (no whole DICOM toolkit
pulled in) and returns pixels through pydicom's own handling of photometric
interpretation, bits stored and signedness, so a compressed file and its uncompressed
twin give identical arrays. Without the extra, a compressed file raises a DataError that
names the transfer syntax and the install command.

Example:
    >>> img = read_image("scan.dcm")                              # doctest: +SKIP
    >>> img.dtype, float(img.min()) >= 0.0, float(img.max()) <= 1.0  # doctest: +SKIP
    (dtype('float32'), True, True)
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustkit.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")

_DICOM_SUFFIXES = (".dcm", ".dicom")
_KINDS = "a PNG, JPEG, BMP, TIFF or DICOM image"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


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
                f"expected a DICOM transfer syntax pydicom can decode, got {uid.name} ({uid}) with no "
                f"decoder installed; install one with: pip install \"robustkit[dicom]\"",
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


def _nearest(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of one (h, w) plane to (H, W) (labels stay labels)."""
    if plane.shape == tuple(size):
        return plane
    rows = ((np.arange(size[0]) + 0.5) * plane.shape[0] / size[0]).astype(np.intp)  # pixel centres,
    cols = ((np.arange(size[1]) + 0.5) * plane.shape[1] / size[1]).astype(np.intp)  # as PIL's NEAREST
    return plane[rows[:, None], cols[None, :]]


def _mask_to_bool(
    mask: np.ndarray, size: tuple[int, int], image_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """A decoded mask (any positive value marks a region, relative to its maximum) -> bool (H, W).

    A mask of another size than its image (``image_hw``, same aspect ratio) is first resized
    to the image by nearest neighbour, as the image itself would be.
    """
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    peak = float(mask.max(initial=0.0))
    binary = (mask > 0.5 * peak).astype(np.float32) if peak > 0 else np.zeros_like(mask)
    if image_hw is not None:
        binary = _nearest(binary, image_hw)
    return _resize_plane(binary, size) >= 0.5


def _check_mask_shape(
    image: Path, image_hw: tuple[int, int], mask: Path, mask_hw: tuple[int, int]
) -> bool:
    """Whether the mask must be resized to its image (same aspect ratio, another size).

    Raises:
        DataError: naming both files when the aspect ratios differ.
    """
    (ih, iw), (mh, mw) = image_hw, mask_hw
    if (ih, iw) == (mh, mw):
        return False
    if ih * mw != iw * mh:
        raise _bad(
            mask,
            f"expected a mask of the size of its image {image} ({iw}x{ih}) or of the same "
            f"aspect ratio, got {mw}x{mh}.",
        )
    return True
