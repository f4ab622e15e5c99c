"""DICOM as hospitals export it (issue #11): compressed transfer syntaxes through the ``dicom``
extra (the pylibjpeg family), pixel-identical to their uncompressed twins, and a real chest CR
(MONOCHROME1, 15-bit) read the right way up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from robustkit.data.imageio import read_image
from robustkit.errors import DataError

_DECODERS = ("pylibjpeg", "libjpeg", "openjpeg", "rle")
_HAS_EXTRA = all(importlib.util.find_spec(m) is not None for m in _DECODERS)
needs_extra = pytest.mark.skipif(
    not _HAS_EXTRA, reason='needs the dicom extra: pip install "robustkit[dicom]" (the pylibjpeg family)'
)
needs_cr = pytest.mark.skipif(
    importlib.util.find_spec("data_store") is None,
    reason="needs pydicom-data (pip install pydicom-data) for the real chest CR RG1_UNCR.dcm",
)


def _testfile(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available")
    return Path(str(path))


def _raw(name: str) -> np.ndarray:
    import pydicom

    return pydicom.dcmread(_testfile(name)).pixel_array


# (compressed file, transfer syntax name, its uncompressed twin or None)
CASES = [
    ("SC_rgb_jpeg_dcmtk.dcm", "JPEG Baseline (Process 1)", None),
    ("JPGExtended.dcm", "JPEG Extended (Process 2 and 4)", None),  # 12-bit; JPEG-lossy.dcm is a known-corrupt stream
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG Lossless, Non-Hierarchical, First-Order Prediction", None),
    ("SC_rgb_jpeg_gdcm.dcm", "JPEG Lossless, Non-Hierarchical, First-Order Prediction", "SC_rgb.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 Image Compression (Lossless Only)", "MR_small.dcm"),
    ("JPEG2000.dcm", "JPEG 2000 Image Compression", "JPEG2000_UNC.dcm"),
    ("MR_small_RLE.dcm", "RLE Lossless", "MR_small.dcm"),
    ("image_dfl.dcm", "Deflated Explicit VR Little Endian", None),
]


@needs_extra
@pytest.mark.parametrize("name,syntax,twin", CASES, ids=[c[0] for c in CASES])
def test_compressed_transfer_syntaxes_decode(name: str, syntax: str, twin: str | None) -> None:
    import pydicom

    path = _testfile(name)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name.startswith(syntax)
    img = read_image(path)
    assert img.dtype == np.float32 and img.ndim in (2, 3) and 0.0 <= img.min() < img.max() <= 1.0
    if twin is not None:
        np.testing.assert_array_equal(_raw(name), _raw(twin))  # the decoder is lossless
        np.testing.assert_array_equal(img, read_image(_testfile(twin)))  # and so is robustkit's path


def test_without_a_decoder_the_error_names_the_syntax_and_the_extra(monkeypatch) -> None:
    import pydicom.pixels

    class _Missing:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: _Missing())
    with pytest.raises(DataError) as err:
        read_image(_testfile("MR_small_jpeg_ls_lossless.dcm"))
    text = str(err.value)
    assert "MR_small_jpeg_ls_lossless.dcm: " in text and "\n" not in text
    assert "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in text
    assert 'pip install "robustkit[dicom]"' in text


def _bands(img: np.ndarray) -> tuple[float, float, float]:
    """Mean of the central column (mediastinum, spine) and of each lateral lung band, over the
    middle rows of a PA chest film."""
    h, w = img.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    band = lambda lo, hi: float(img[rows, int(lo * w) : int(hi * w)].mean())  # noqa: E731
    return band(0.45, 0.55), band(0.2, 0.3), band(0.7, 0.8)


@needs_cr
@pytest.mark.slow
def test_real_chest_cr_monochrome1_is_inverted() -> None:
    import pydicom

    path = _testfile("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (ds.PhotometricInterpretation, ds.BitsStored, ds.Rows, ds.Columns) == ("MONOCHROME1", 15, 1955, 1841)
    img = read_image(path)
    assert img.shape == (1955, 1841)
    centre, right, left = _bands(img)
    # After a correct MONOCHROME1 -> MONOCHROME2 inversion the mediastinum and spine are bright
    # and the lung fields dark; without it (or inverted twice) the order is reversed.
    assert centre > right + 0.1 and centre > left + 0.1
    raw_centre, raw_right, raw_left = _bands(_raw("RG1_UNCR.dcm").astype(np.float64))
    assert raw_centre < raw_right and raw_centre < raw_left  # stored values: lungs high in MONOCHROME1


@needs_cr
@needs_extra
@pytest.mark.slow
def test_real_chest_cr_lossless_j2k_twin_is_identical() -> None:
    np.testing.assert_array_equal(read_image(_testfile("RG1_J2KR.dcm")), read_image(_testfile("RG1_UNCR.dcm")))
