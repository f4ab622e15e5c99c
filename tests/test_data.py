"""Tests of robustkit.data.dataset: decoding known pixels, layouts, sampling, fingerprints, errors."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from robustkit.data import dataset as data_module
from robustkit.data.dataset import Dataset, Sample, read_image
from robustkit.data.loader import load_dataset
from robustkit.errors import ConfigError, DataError

CLASSES = ["COVID-19", "NORMAL", "Viral Pneumonia"]


# --------------------------------------------------------------------------- builders


def _save(path: Path, arr: np.ndarray, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _gray(value: int, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def _dicom(
    path: Path,
    arr: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    uid: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    **attrs: object,
) -> Path:
    """Write a 16-bit single-frame DICOM file with pydicom 3's FileDataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = uid
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if arr is not None:
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixel_data if pixel_data is not None else arr.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _insert_after_ihdr(path: Path, chunk: bytes) -> None:
    raw = path.read_bytes()
    end = 8 + 8 + 13 + 4  # signature + IHDR header, body, CRC
    path.write_bytes(raw[:end] + chunk + raw[end:])


def _folder(root: Path, counts: dict[str, int], *, size: int = 8) -> Path:
    """A folder-per-class dataset: image i of class k has the constant value 10 * (k + 1) + i."""
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _save(root / name / f"{name}_{i:04d}.png", _gray(10 * (k + 1) + i, (size, size)))
    return root


@pytest.fixture
def xray_tree(tmp_path: Path) -> Path:
    """Three classes, root-level masks for two images, junk files that must be ignored."""
    root = _folder(tmp_path / "xray", {"COVID-19": 3, "NORMAL": 2, "Viral Pneumonia": 2})
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255  # left half is the lesion
    _save(root / "masks" / "COVID-19" / "COVID-19_0000.png", mask)
    _save(root / "masks" / "COVID-19" / "COVID-19_0001.png", mask[:, ::-1].copy())
    (root / "phantom.json").write_text("{}")
    (root / "COVID-19" / "README").write_text("notes")
    (root / "COVID-19" / ".DS_Store").write_bytes(b"\0\1")
    (root / ".hidden").mkdir()
    _save(root / ".hidden" / "x.png", _gray(1))
    _save(root / "NORMAL" / "sub" / "deep.png", _gray(99))
    return root


# --------------------------------------------------------------------------- read_image


def test_read_8bit_grayscale_png_known_values(tmp_path: Path) -> None:
    arr = np.array([[0, 51, 255]], dtype=np.uint8)
    out = read_image(_save(tmp_path / "a.png", arr))
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-7)


def test_read_16bit_png_scales_by_65535(tmp_path: Path) -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    out = read_image(_save(tmp_path / "a.png", arr))
    np.testing.assert_allclose(out, [[0.0, 32768 / 65535, 1.0]], atol=1e-7)


def test_read_16bit_png_uses_sbit_depth(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.png", np.array([[0, 2048, 4095]], dtype=np.uint16))
    _insert_after_ihdr(path, _png_chunk(b"sBIT", bytes([12])))
    np.testing.assert_allclose(read_image(path), [[0.0, 2048 / 4095, 1.0]], atol=1e-7)


def test_read_16bit_tiff(tmp_path: Path) -> None:
    out = read_image(_save(tmp_path / "a.tif", np.array([[0, 65535]], dtype=np.uint16)))
    np.testing.assert_allclose(out, [[0.0, 1.0]])


def test_rgb_kept_and_equal_channel_rgb_becomes_grayscale(tmp_path: Path) -> None:
    rgb = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    out = read_image(_save(tmp_path / "c.png", rgb))
    assert out.shape == (1, 2, 3)
    np.testing.assert_allclose(out, rgb / 255.0)
    gray = np.repeat(np.array([[[10], [200]]], dtype=np.uint8), 3, axis=2)
    out = read_image(_save(tmp_path / "g.png", gray))
    assert out.shape == (1, 2)
    np.testing.assert_allclose(out, [[10 / 255, 200 / 255]], atol=1e-7)


def test_rgba_is_composited_over_black(tmp_path: Path) -> None:
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 102]]], dtype=np.uint8)
    out = read_image(_save(tmp_path / "a.png", rgba))
    expected = rgba[..., :3] / 255.0 * (rgba[..., 3:] / 255.0)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_la_and_palette(tmp_path: Path) -> None:
    la = Image.fromarray(np.array([[[200, 255], [200, 0]]], dtype=np.uint8), mode=None)
    assert la.mode == "LA"
    la.save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), [[200 / 255, 0.0]], atol=1e-7)
    rgb = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), rgb / 255.0)


def test_cmyk_jpeg_converted_to_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "white.jpg")
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg")
    np.testing.assert_allclose(read_image(tmp_path / "white.jpg"), 1.0, atol=0.02)
    cyan = read_image(tmp_path / "cyan.jpg")
    assert cyan.shape == (8, 8, 3)
    np.testing.assert_allclose(cyan[0, 0], [0.0, 1.0, 1.0], atol=0.02)


def test_jpeg_named_png_is_read(tmp_path: Path) -> None:
    _save(tmp_path / "x.jpg", _gray(128))
    shutil.copy(tmp_path / "x.jpg", tmp_path / "x.png")
    np.testing.assert_allclose(read_image(tmp_path / "x.png"), 128 / 255, atol=0.01)


def test_float_tiff_in_unit_range_and_nan(tmp_path: Path) -> None:
    good = np.array([[0.25, 0.75]], dtype=np.float32)
    np.testing.assert_allclose(read_image(_save(tmp_path / "f.tif", good)), good)
    bad = _save(tmp_path / "nan.tif", np.array([[0.1, np.nan]], dtype=np.float32))
    with pytest.raises(DataError, match=r"nan\.tif: expected finite pixel values"):
        read_image(bad)


def test_dicom_monochrome2_window_and_rescale(tmp_path: Path) -> None:
    raw = np.array([[0, 500, 1000], [1500, 2000, 3000]], dtype=np.uint16)
    path = _dicom(tmp_path / "a.dcm", raw, WindowCenter=1000, WindowWidth=1001)
    # DICOM linear window: y = (x - (c - 0.5)) / (w - 1) + 0.5, clipped.
    expected = np.clip((raw - 999.5) / 1000 + 0.5, 0, 1)
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)
    path = _dicom(
        tmp_path / "b.dcm",
        raw,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=2001,
    )
    hu = raw * 2.0 - 1000
    np.testing.assert_allclose(read_image(path), np.clip((hu + 0.5) / 2000 + 0.5, 0, 1), atol=1e-6)


def test_dicom_monochrome1_inverted_minmax(tmp_path: Path) -> None:
    raw = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = read_image(_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_allclose(out, 1.0 - raw / 4000.0, atol=1e-6)
    assert out[1, 1] == 0.0 and out[0, 0] == 1.0


def test_dicom_found_by_magic_with_wrong_suffix(tmp_path: Path) -> None:
    raw = np.array([[0, 10]], dtype=np.uint16)
    path = _dicom(tmp_path / "a.dcm", raw)
    shutil.copy(path, tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), [[0.0, 1.0]])


def test_dicom_without_pixel_data_and_unsupported_syntax(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"empty\.dcm: .*without pixel data"):
        read_image(_dicom(tmp_path / "empty.dcm", None))
    frame = encapsulate([b"\xff\xd8\xff\xf7not really JPEG-LS\xff\xd9"])
    path = _dicom(tmp_path / "jls.dcm", np.zeros((2, 2)), uid=JPEGLSLossless, pixel_data=frame)
    with pytest.raises(DataError, match=r"jls\.dcm: expected"):
        read_image(path)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("zero.png", b"", "zero-byte file"),
        ("text.png", b"this is not an image\n", "not a readable image"),
        ("text.dcm", b"this is not a DICOM file\n", "expected a readable DICOM file"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=reason) as info:
        read_image(tmp_path / name)
    assert str(tmp_path / name) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def _truncated_png(path: Path) -> Path:
    rng = np.random.default_rng(0)
    _save(path, rng.integers(0, 256, (64, 64), dtype=np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def test_truncated_png(tmp_path: Path) -> None:
    path = _truncated_png(tmp_path / "cut.png")
    with pytest.raises(
        DataError, match=r"cut\.png: expected a readable image, got a truncated PNG file"
    ):
        read_image(path)


def test_decompression_bomb_checked_before_decoding(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", _gray(0, (100, 100)))
    with pytest.raises(DataError, match=r"big\.png: expected at most 5,000 pixels, got 100x100"):
        read_image(path, max_pixels=5000)
    # A header that claims 12000 x 12000 pixels with no image data behind it.
    ihdr = struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    with pytest.raises(
        DataError, match=r"bomb\.png: expected at most 100,000,000 pixels, got 12000x12000"
    ):
        read_image(bomb)


# --------------------------------------------------------------------------- folder layout


def test_folder_layout_discovery_order_and_masks(xray_tree: Path) -> None:
    ds = load_dataset(xray_tree)
    assert ds.class_names == CLASSES
    assert ds.format == "folder"
    assert list(ds.ids) == [
        "COVID-19/COVID-19_0000",
        "COVID-19/COVID-19_0001",
        "COVID-19/COVID-19_0002",
        "NORMAL/NORMAL_0000",
        "NORMAL/NORMAL_0001",
        "NORMAL/sub/deep",
        "Viral Pneumonia/Viral Pneumonia_0000",
        "Viral Pneumonia/Viral Pneumonia_0001",
    ]
    assert ds.labels.dtype == np.int64 and list(ds.labels) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert ds.class_counts() == {"COVID-19": 3, "NORMAL": 3, "Viral Pneumonia": 2}
    assert ds.has_masks
    assert [s.mask_path is not None for s in ds.samples] == [True, True] + [False] * 6
    info = ds.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["n_samples"] == 8 and info["format"] == "folder" and info["skipped"] == []


def test_load_images_values_shapes_and_channels(xray_tree: Path) -> None:
    ds = load_dataset(xray_tree)
    x = ds.load_images([0, 3], size=(4, 6), channels=3)
    assert x.shape == (2, 4, 6, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 10 / 255, atol=1e-6)  # constant images stay constant
    np.testing.assert_allclose(x[1], 20 / 255, atol=1e-6)
    x1 = ds.load_images([0], size=(16, 16), channels=1)
    assert x1.shape == (1, 16, 16, 1)
    np.testing.assert_allclose(x1[0, ..., 0], 10 / 255, atol=1e-6)


def test_rgb_to_one_channel_is_bt601_luma(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _save(root / "a" / "x.png", np.full((4, 4, 3), [200, 100, 50], dtype=np.uint8))
    _save(root / "b" / "y.png", _gray(3, (4, 4)))
    x = load_dataset(root).load_images([0], size=(4, 4), channels=1)
    np.testing.assert_allclose(
        x[0, ..., 0], (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, atol=1e-5
    )


def test_downscale_is_antialiased(tmp_path: Path) -> None:
    root = tmp_path / "d"
    stripes = np.zeros((16, 16), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes average to grey
    _save(root / "a" / "x.png", stripes)
    _save(root / "b" / "y.png", _gray(3))
    x = load_dataset(root).load_images([0], size=(4, 4), channels=1)
    np.testing.assert_allclose(x, 0.5, atol=0.1)


def test_load_masks(xray_tree: Path) -> None:
    ds = load_dataset(xray_tree)
    m = ds.load_masks([0, 1, 2], size=(4, 4))
    assert m.shape == (3, 4, 4) and m.dtype == bool
    assert m[0, :, :2].all() and not m[0, :, 2:].any()
    assert m[1, :, 2:].all() and not m[1, :, :2].any()
    assert not m[2].any()


def test_radiography_database_images_masks_layout(tmp_path: Path) -> None:
    root = tmp_path / "rdb"
    for name in ("COVID", "Normal"):
        _save(root / name / "images" / f"{name}-1.png", _gray(50))
        mask = np.zeros((8, 8), dtype=np.uint8)
        mask[2:4, 2:4] = 255
        _save(root / name / "masks" / f"{name}-1.png", mask)
    ds = load_dataset(root)
    assert ds.class_names == ["COVID", "Normal"]
    assert list(ds.ids) == ["COVID/images/COVID-1", "Normal/images/Normal-1"]
    assert all(s.mask_path is not None and s.mask_path.parent.name == "masks" for s in ds.samples)
    m = ds.load_masks([0], size=(8, 8))
    assert m[0].sum() == 4 and m[0, 2:4, 2:4].all()


def test_class_local_masks_folder_is_not_images(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1, "b": 1})
    _save(root / "a" / "masks" / "a_0000.png", _gray(255))
    ds = load_dataset(root)
    assert len(ds) == 2 and ds.samples[0].mask_path == root / "a" / "masks" / "a_0000.png"
    assert ds.load_masks([0, 1], size=(8, 8)).sum() == 64


def test_batches_cover_everything_in_order(xray_tree: Path) -> None:
    ds = load_dataset(xray_tree)
    got = list(ds.batches(3, size=(4, 4), channels=1))
    assert [len(i) for i, _ in got] == [3, 3, 2]
    idx = np.concatenate([i for i, _ in got])
    assert idx.dtype == np.int64 and list(idx) == list(range(8))
    np.testing.assert_array_equal(
        np.concatenate([x for _, x in got]), ds.load_images(range(8), size=(4, 4), channels=1)
    )
    sub = list(ds.batches(4, size=(4, 4), channels=1, indices=[5, 1]))
    assert len(sub) == 1 and list(sub[0][0]) == [5, 1]


def test_cache_decodes_once_and_streams_over_budget(
    xray_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = load_dataset(xray_tree)
    first = ds.load_images([0], size=(4, 4), channels=3)
    (xray_tree / "COVID-19" / "COVID-19_0000.png").unlink()
    np.testing.assert_array_equal(ds.subset([0]).load_images([0], size=(4, 4), channels=3), first)
    monkeypatch.setattr(data_module, "CACHE_BYTES", 0)
    streaming = load_dataset(xray_tree, validate=False)
    assert streaming.ids[0] == "COVID-19/COVID-19_0001"
    streaming.load_images([0], size=(4, 4), channels=3)
    (xray_tree / "COVID-19" / "COVID-19_0001.png").unlink()
    with pytest.raises(DataError, match="COVID-19_0001.png"):
        streaming.load_images([0], size=(4, 4), channels=3)


def test_class_names_argument_orders_and_checks(xray_tree: Path) -> None:
    order = ["Viral Pneumonia", "COVID-19", "NORMAL"]
    ds = load_dataset(xray_tree, class_names=order)
    assert ds.class_names == order
    assert ds.class_counts() == {"Viral Pneumonia": 2, "COVID-19": 3, "NORMAL": 3}
    assert list(ds.labels) == [0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(
        DataError, match=r"missing from the data: \['Bacterial'\].*not in class_names: \['NORMAL'\]"
    ):
        load_dataset(xray_tree, class_names=["COVID-19", "Viral Pneumonia", "Bacterial"])


def test_with_class_order(xray_tree: Path) -> None:
    ds = load_dataset(xray_tree)
    re = ds.with_class_order(["NORMAL", "Viral Pneumonia", "COVID-19"])
    assert list(re.ids) == list(ds.ids)
    names = [re.class_names[label] for label in re.labels]
    assert names == [ds.class_names[label] for label in ds.labels]
    with pytest.raises(
        DataError, match=r"missing from the data: \['X'\].*not in class_names: \['NORMAL'\]"
    ):
        ds.with_class_order(["COVID-19", "Viral Pneumonia", "X"])


# --------------------------------------------------------------------------- csv manifest


def test_csv_manifest(tmp_path: Path) -> None:
    _save(tmp_path / "img" / "b.png", _gray(1))
    _save(tmp_path / "img" / "a.png", _gray(2))
    _save(tmp_path / "img" / "c.png", _gray(3))
    _save(tmp_path / "lesions" / "b.png", _gray(255))
    manifest = tmp_path / "train.csv"
    manifest.write_text(
        "path,label,mask\nimg/b.png,sick,lesions/b.png\nimg/a.png,well,\nimg/c.png,sick,\n"
    )
    ds = load_dataset(manifest)
    assert ds.format == "manifest" and ds.root == tmp_path
    assert list(ds.ids) == ["img/b", "img/a", "img/c"]  # row order
    assert ds.class_names == ["sick", "well"] and list(ds.labels) == [0, 1, 0]
    assert (
        ds.samples[0].mask_path == tmp_path / "lesions" / "b.png"
        and ds.samples[1].mask_path is None
    )
    np.testing.assert_allclose(ds.load_images([2], size=(8, 8), channels=1), 3 / 255, atol=1e-6)


def test_csv_manifest_errors(tmp_path: Path) -> None:
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("file,class\nx.png,a\n")
    with pytest.raises(
        DataError, match=r"h\.csv: expected a CSV header with the columns 'path' and 'label'"
    ):
        load_dataset(bad_header)
    missing = tmp_path / "m.csv"
    missing.write_text("path,label\nnope.png,a\n")
    with pytest.raises(DataError, match=r"nope\.png: .*does not exist"):
        load_dataset(missing)


# --------------------------------------------------------------------------- sampling


def test_subset_keeps_order(xray_tree: Path) -> None:
    ds = load_dataset(xray_tree)
    sub = ds.subset([5, 0, 2])
    assert list(sub.ids) == [ds.ids[5], ds.ids[0], ds.ids[2]]
    assert sub.class_names == ds.class_names


def test_subsample_stratified_counts_and_determinism(tmp_path: Path) -> None:
    ds = load_dataset(_folder(tmp_path / "d", {"a": 2, "b": 12, "c": 6}, size=2), validate=False)
    sub = ds.subsample(5, seed=3)
    # quotas 0.5, 3, 1.5 -> floors 0, 3, 1 -> at least one per class -> 1, 3, 1
    assert sub.class_counts() == {"a": 1, "b": 3, "c": 1}
    positions = [list(ds.ids).index(i) for i in sub.ids]
    assert positions == sorted(positions)
    assert ds.subsample_positions(5, seed=3).tolist() == positions  # what studies sub-sample with
    assert list(ds.subsample(5, seed=3).ids) == list(sub.ids)
    assert ds.subsample(10, seed=0).class_counts() == {"a": 1, "b": 6, "c": 3}
    assert {tuple(ds.subsample(5, seed=s).ids) for s in range(5)} != {tuple(sub.ids)}
    assert ds.subsample(None, seed=0) is ds and ds.subsample(20, seed=0) is ds
    with pytest.raises(ConfigError, match="'n'"):
        ds.subsample(2, seed=0)


def test_split_disjoint_stratified_deterministic(tmp_path: Path) -> None:
    ds = load_dataset(_folder(tmp_path / "d", {"a": 10, "b": 4, "c": 1}, size=2), validate=False)
    first, second = ds.split(0.3, seed=7)
    assert set(first.ids).isdisjoint(second.ids)
    assert sorted([*first.ids, *second.ids]) == sorted(ds.ids)
    assert first.class_counts() == {"a": 3, "b": 1, "c": 0}
    assert second.class_counts() == {"a": 7, "b": 3, "c": 1}
    again = ds.split(0.3, seed=7)
    assert list(again[0].ids) == list(first.ids) and list(again[1].ids) == list(second.ids)
    with pytest.raises(ConfigError, match="'fraction'"):
        ds.split(0.0, seed=0)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_sensitive(tmp_path: Path, xray_tree: Path) -> None:
    base = load_dataset(xray_tree).fingerprint
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(xray_tree, copy)
    assert load_dataset(copy).fingerprint == base  # independent of the absolute path
    _save(copy / "NORMAL" / "NORMAL_0000.png", _gray(21))  # one image changes
    assert load_dataset(copy).fingerprint != base
    shutil.copytree(xray_tree, tmp_path / "m")
    _save(tmp_path / "m" / "masks" / "COVID-19" / "COVID-19_0000.png", _gray(255))  # a mask changes
    assert load_dataset(tmp_path / "m").fingerprint != base
    shutil.copytree(xray_tree, tmp_path / "r")
    (tmp_path / "r" / "NORMAL").rename(tmp_path / "r" / "Normal")  # a class name changes
    assert load_dataset(tmp_path / "r").fingerprint != base
    ds = load_dataset(xray_tree)
    assert ds.with_class_order(["NORMAL", "COVID-19", "Viral Pneumonia"]).fingerprint != base
    assert ds.subset(range(len(ds))[::-1]).fingerprint == base  # sample order does not matter


# --------------------------------------------------------------------------- dataset errors


def test_missing_root_and_no_class_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: expected a dataset folder or a \.csv manifest"):
        load_dataset(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    _save(flat / "x.png", _gray(0))
    (flat / "masks").mkdir()
    with pytest.raises(DataError, match=r"flat: expected class folders .*got none"):
        load_dataset(flat)


def test_empty_class_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    (root / "Empty Class").mkdir()
    (root / "Empty Class" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="'Empty Class'"):
        load_dataset(root)


def test_duplicate_ids(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1, "b": 1})
    _save(root / "a" / "a_0000.jpg", _gray(0))
    with pytest.raises(DataError, match=r"unique sample ids.*'a/a_0000'"):
        load_dataset(root)


@pytest.mark.parametrize("kind", ["zero", "truncated", "text"])
def test_bad_image_fails_or_is_skipped(tmp_path: Path, kind: str) -> None:
    root = _folder(tmp_path / "d", {"a": 2, "b": 1})
    bad = root / "a" / "bad.png"
    if kind == "zero":
        bad.write_bytes(b"")
    elif kind == "truncated":
        _truncated_png(bad)
    else:
        bad.write_text("hello")
    with pytest.raises(DataError, match=r"bad\.png: expected"):
        load_dataset(root)
    ds = load_dataset(root, on_bad_input="skip")
    assert len(ds) == 3 and "a/bad" not in set(ds.ids)
    assert [p for p, _ in ds.skipped] == ["a/bad.png"]
    assert ds.skipped[0][1].startswith("expected")
    assert ds.describe()["skipped"][0]["path"] == "a/bad.png"


def test_skipping_every_image_of_a_class_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    (root / "b").mkdir()
    (root / "b" / "only.png").write_bytes(b"")
    with pytest.raises(DataError, match="class 'b'"):
        load_dataset(root, on_bad_input="skip")


def test_bomb_in_dataset(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1, "b": 1}, size=20)
    with pytest.raises(DataError, match=r"a_0000\.png: expected at most 100 pixels"):
        load_dataset(root, max_pixels=100)


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1, "b": 1})
    _save(root / "masks" / "a" / "a_0000.png", _gray(255, (4, 6)))  # another aspect ratio
    with pytest.raises(
        DataError, match=r"masks/a/a_0000\.png: .*its image .*a/a_0000\.png \(8x8\).*, got 6x4"
    ):
        load_dataset(root)
    ds = load_dataset(root, validate=False)  # found when the mask is loaded
    with pytest.raises(DataError, match=r"masks/a/a_0000\.png: .*a/a_0000\.png"):
        ds.load_masks([0], size=(8, 8))


def test_bad_options(xray_tree: Path) -> None:
    with pytest.raises(ConfigError, match="'on_bad_input'"):
        load_dataset(xray_tree, on_bad_input="ignore")
    ds = load_dataset(xray_tree)
    with pytest.raises(ConfigError, match="'channels'"):
        ds.load_images([0], size=(4, 4), channels=2)
    with pytest.raises(ConfigError, match="'size'"):
        ds.load_images([0], size=(0, 4), channels=1)


def test_dicom_in_a_dataset(tmp_path: Path) -> None:
    root = tmp_path / "d"
    raw = np.array([[0, 4000]], dtype=np.uint16)
    _dicom(root / "a" / "x.dcm", raw, photometric="MONOCHROME1")
    _save(root / "b" / "y.png", np.array([[0, 255]], dtype=np.uint8))
    (root / "c").mkdir()
    _dicom(root / "c" / "nopix.dcm", None)
    with pytest.raises(DataError, match=r"nopix\.dcm: .*without pixel data"):
        load_dataset(root)
    shutil.rmtree(root / "c")
    ds = load_dataset(root)
    x = ds.load_images([0, 1], size=(1, 2), channels=1)
    np.testing.assert_allclose(x[..., 0], [[[1.0, 0.0]], [[0.0, 1.0]]], atol=1e-6)


def test_public_types() -> None:
    from robustkit.data import loader

    assert set(data_module.__all__) >= {"Dataset", "Sample", "read_image", "IMAGE_SUFFIXES"}
    assert loader.__all__ == ["load_dataset"]
    s = Sample("a/x", Path("a/x.png"), 0, None)
    with pytest.raises(AttributeError):
        s.label = 1  # type: ignore[misc]
    assert len(Dataset(Path("."), ["a"], [s])) == 1
