"""Fuzzing the image loaders: every outcome is a pixel-space image or robustkit's own DataError.

Valid PNG, JPEG, BMP, TIFF and DICOM files (8- and 16-bit, RGBA, palette, CMYK, float,
MONOCHROME1, DICOM without pixel data or with an undecodable transfer syntax, headers that
declare a decompression bomb) are built in memory, then truncated, bit-flipped, spliced,
renamed or emptied by Hypothesis; plain random bytes (with and without a plausible magic)
are fed too. :func:`read_image`, and ``load_dataset`` + ``load_images`` on a one-file class
folder, must either return float32 pixels in [0, 1] without NaN, or raise DataError whose
message names the file. Any other exception fails the test.
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from robustkit.data.dataset import IMAGE_SUFFIXES, read_image
from robustkit.data.loader import load_dataset
from robustkit.errors import DataError

MAX_PIXELS = 250_000  # small, so that a mutated header cannot make a test decode a huge image
FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- valid files


def _pil_bytes(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` 8-bit gray pixels, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _bmp_bomb(base: bytes, width: int, height: int) -> bytes:
    """A valid BMP with its BITMAPINFOHEADER width/height rewritten."""
    raw = bytearray(base)
    raw[18:26] = struct.pack("<ii", width, height)
    return bytes(raw)


def _dicom_bytes(
    arr: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    uid: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    rows_cols: tuple[int, int] | None = None,
    **attrs: Any,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["robustkit-fuzz"])
    meta.TransferSyntaxUID = uid
    ds = FileDataset("fuzz.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if arr is not None:
        ds.Rows, ds.Columns = rows_cols or arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixel_data if pixel_data is not None else arr.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@lru_cache(maxsize=1)
def _valid_files() -> dict[str, bytes]:
    """Name (with its true suffix) -> bytes of a small, valid or deliberately odd image file."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (24, 20), dtype=np.uint8)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    g16 = rng.integers(0, 4096, (16, 16), dtype=np.uint16)
    rgb_im = Image.fromarray(rgb)
    trns = rgb_im.convert("P")
    trns.info["transparency"] = 0
    bmp = _pil_bytes(rgb_im, "BMP")
    files = {
        "gray.png": _pil_bytes(Image.fromarray(gray), "PNG"),
        "rgb.png": _pil_bytes(rgb_im, "PNG"),
        "rgba.png": _pil_bytes(Image.fromarray(rgba), "PNG"),
        "la.png": _pil_bytes(Image.fromarray(rgba[..., :2].copy(), mode=None), "PNG"),
        "palette.png": _pil_bytes(rgb_im.convert("P"), "PNG"),
        "palette_trns.png": _pil_bytes(trns, "PNG", transparency=0),
        "gray16.png": _pil_bytes(Image.fromarray(g16), "PNG"),
        "gray.jpg": _pil_bytes(Image.fromarray(gray), "JPEG", quality=80),
        "rgb.jpg": _pil_bytes(rgb_im, "JPEG"),
        "cmyk.jpg": _pil_bytes(rgb_im.convert("CMYK"), "JPEG"),
        "rgb.bmp": bmp,
        "gray.bmp": _pil_bytes(Image.fromarray(gray), "BMP"),
        "gray16.tif": _pil_bytes(Image.fromarray(g16), "TIFF"),
        "rgb.tif": _pil_bytes(rgb_im, "TIFF"),
        "float.tif": _pil_bytes(Image.fromarray(rng.uniform(-2, 3, (8, 8)).astype(np.float32)), "TIFF"),
        "mono2.dcm": _dicom_bytes(g16, WindowCenter=2048, WindowWidth=4096),
        "mono1.dcm": _dicom_bytes(g16, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-10),
        "nopixels.dcm": _dicom_bytes(None),
        "jpegls.dcm": _dicom_bytes(
            np.zeros((2, 2)), uid=JPEGLSLossless, pixel_data=encapsulate([b"\xff\xd8\xff\xf7xx\xff\xd9"])
        ),
        "bomb.dcm": _dicom_bytes(g16, rows_cols=(30_000, 30_000)),
        "bomb.png": _png_bomb(40_000, 40_000),
        "bomb_small.png": _png_bomb(600, 600),  # over MAX_PIXELS, far under pillow's own limit
        "bomb.bmp": _bmp_bomb(bmp, 20_000, 20_000),
    }
    return files


# --------------------------------------------------------------------------- outcomes


def _assert_pixels_or_data_error(call: Any, name: str) -> str:
    """Run ``call``; a result must be float32 pixels in [0, 1], an error a DataError naming ``name``."""
    try:
        out = call()
    except DataError as exc:
        assert name in str(exc), f"DataError does not name {name!r}: {exc}"
        assert str(exc).strip(), "empty error message"
        return "error"
    arr = np.asarray(out)
    assert arr.dtype == np.float32
    assert arr.size > 0
    assert np.all(np.isfinite(arr))
    assert float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0
    return "image"


def _write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- mutations

_SUFFIXES = list(IMAGE_SUFFIXES)


@st.composite
def _mutated_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid file with one or two of: truncation, byte flips, a splice, a wrong suffix, emptying."""
    files = _valid_files()
    base = draw(st.sampled_from(sorted(files)))
    data = bytearray(files[base])
    stem, suffix = base.rsplit(".", 1)
    suffix = "." + suffix
    ops = draw(st.lists(st.sampled_from(["truncate", "flip", "splice", "suffix", "zero", "none"]),
                        min_size=1, max_size=2))
    for op in ops:
        if op == "truncate" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif op == "flip" and data:
            for _ in range(draw(st.integers(1, 8))):
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= draw(st.integers(1, 255))
        elif op == "splice":
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "suffix":
            suffix = draw(st.sampled_from(_SUFFIXES + [".txt", ""]))
        elif op == "zero":
            data = bytearray()
    return f"{stem}-{'-'.join(ops)}{suffix}", bytes(data)


_MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"\0" * 128 + b"DICM"]


@st.composite
def _random_file(draw: st.DrawFn) -> tuple[str, bytes]:
    magic = draw(st.sampled_from(_MAGICS))
    body = draw(st.binary(max_size=600))
    suffix = draw(st.sampled_from(_SUFFIXES))
    return f"random{suffix}", magic + body


# --------------------------------------------------------------------------- tests


def test_the_valid_files_are_read_and_the_odd_ones_refused() -> None:
    """The unmutated corpus: known outcomes (so the fuzzing starts from real files)."""
    refused = {"nopixels.dcm", "jpegls.dcm", "bomb.dcm", "bomb.png", "bomb_small.png", "bomb.bmp"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in _valid_files().items():
            path = _write(Path(tmp), name, content)
            outcome = _assert_pixels_or_data_error(lambda p=path: read_image(p, max_pixels=MAX_PIXELS), name)
            assert outcome == ("error" if name in refused else "image"), name
        bomb = _write(Path(tmp), "bomb_small.png", _valid_files()["bomb_small.png"])
        with pytest.raises(DataError, match=r"bomb_small\.png: expected at most 250,000 pixels, got 600x600"):
            read_image(bomb, max_pixels=MAX_PIXELS)
        rgba = read_image(_write(Path(tmp), "rgba.png", _valid_files()["rgba.png"]))
        cmyk = read_image(_write(Path(tmp), "cmyk.jpg", _valid_files()["cmyk.jpg"]))
        assert rgba.shape == (16, 16, 3) and cmyk.shape == (16, 16, 3)


@FUZZ
@given(_mutated_file())
def test_read_image_on_mutated_files(case: tuple[str, bytes]) -> None:
    name, content = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), name, content)
        _assert_pixels_or_data_error(lambda: read_image(path, max_pixels=MAX_PIXELS), name)


@settings(FUZZ, max_examples=60)
@given(_random_file())
def test_read_image_on_random_bytes(case: tuple[str, bytes]) -> None:
    name, content = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), name, content)
        assert _assert_pixels_or_data_error(
            lambda: read_image(path, max_pixels=MAX_PIXELS), name
        ) in ("image", "error")


@settings(FUZZ, max_examples=60)
@given(st.one_of(_mutated_file(), _random_file()), st.booleans())
def test_dataset_loading_on_mutated_files(case: tuple[str, bytes], validate: bool) -> None:
    """load_dataset + load_images on a one-file class folder (with and without validation)."""
    name, content = case
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        name += ".png"  # load_dataset only looks at image suffixes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "cls").mkdir(parents=True)
        _write(root / "cls", name, content)

        def load() -> np.ndarray:
            ds = load_dataset(root, max_pixels=MAX_PIXELS, validate=validate)
            assert len(ds) == 1 and ds.ids.tolist() == [f"cls/{Path(name).stem}"]
            x = ds.load_images([0], size=(12, 10), channels=1)
            assert x.shape == (1, 12, 10, 1)
            x3 = ds.load_images([0], size=(12, 10), channels=3)
            assert x3.shape == (1, 12, 10, 3)
            return np.concatenate([x, x3], axis=3)

        _assert_pixels_or_data_error(load, name)


def test_dicom_with_malformed_header_values_is_a_data_error(tmp_path: Path) -> None:
    """Regressions found by the fuzzer: a transfer syntax UID with a bad character (pydicom
    warned outside the guarded block) and a rescale slope of NaN (a NaN image came back)."""
    g16 = np.arange(16, dtype=np.uint16).reshape(4, 4)
    good = _dicom_bytes(g16, RescaleSlope="9876.5")
    assert good.count(b"1.2.840.10008.1.2.1\0") == 1 and good.count(b"9876.5") == 1
    bad_uid = _write(tmp_path, "bad_uid.dcm", good.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840/10008.1.2.1\0"))
    with pytest.raises(DataError, match=r"bad_uid\.dcm: expected"):
        read_image(bad_uid)
    nan_slope = _write(tmp_path, "nan_slope.dcm", good.replace(b"9876.5", b"nan   "))
    with pytest.raises(DataError, match=r"nan_slope\.dcm: expected"):
        read_image(nan_slope)
    assert read_image(_write(tmp_path, "ok.dcm", good)).shape == (4, 4)
