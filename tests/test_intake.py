"""Real-world intake (issue #11): class maps and excluded classes, mask kinds and resizing,
per-sample metadata, the lung-mask metrics and conditions (pure parts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustkit.config import load_config
from robustkit.data.classes import apply_class_map, parse_class_map, suggest_class_map
from robustkit.data.loader import load_dataset
from robustkit.data.regions import blank_lungs, blank_outside
from robustkit.errors import ConfigError, DataError
from robustkit.metrics.saliency import area_share, mask_share


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _database(root: Path, *, per_class: int = 2, image: int = 12, mask: int = 8) -> Path:
    """The COVID-19 Radiography Database layout: <class>/images, <class>/masks (lung fields)."""
    rng = np.random.default_rng(0)
    for name in ("COVID", "Normal", "Viral Pneumonia", "Lung_Opacity"):
        rows = ["FILE NAME,FORMAT,SIZE,URL"]
        for i in range(1, per_class + 1):
            _save(root / name / "images" / f"{name}-{i}.png", rng.integers(0, 255, (image, image), np.uint8))
            lungs = np.zeros((mask, mask), np.uint8)
            lungs[mask // 4 : -mask // 4, 1:-1] = 255
            _save(root / name / "masks" / f"{name}-{i}.png", lungs)
            rows.append(f"{name}-{i},PNG,{image}*{image},https://example.org/{i}")
        (root / f"{name}.metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


MAP = {"COVID": "COVID-19", "Normal": "NORMAL"}


# ------------------------------------------------------------------ class maps


def test_class_map_and_exclusion_keep_the_out_of_scope_set(tmp_path: Path) -> None:
    root = _database(tmp_path / "db")
    ds = load_dataset(root, class_map=MAP, exclude_classes=["Lung_Opacity"], masks="lung",
                      class_names=["COVID-19", "NORMAL", "Viral Pneumonia"])
    assert ds.class_names == ["COVID-19", "NORMAL", "Viral Pneumonia"]
    assert ds.class_counts() == {"COVID-19": 2, "NORMAL": 2, "Viral Pneumonia": 2}
    assert ds.n_excluded == 2 and ds.out_of_scope is not None
    assert [s.id for s in ds.out_of_scope.samples] == ["Lung_Opacity/images/Lung_Opacity-1",
                                                       "Lung_Opacity/images/Lung_Opacity-2"]
    info = ds.describe()
    assert info["n_excluded"] == 2 and info["excluded_counts"] == {"Lung_Opacity": 2}
    assert info["class_map"] == MAP
    # nothing dropped silently: excluded samples change the fingerprint
    before = load_dataset(root, class_map=MAP, exclude_classes=["Lung_Opacity"], masks="lung").fingerprint
    (root / "Lung_Opacity" / "images" / "Lung_Opacity-2.png").unlink()
    (root / "Lung_Opacity" / "masks" / "Lung_Opacity-2.png").unlink()
    fewer = load_dataset(root, class_map=MAP, exclude_classes=["Lung_Opacity"], masks="lung")
    assert fewer.fingerprint != before and fewer.n_excluded == 1


def test_class_mismatch_suggests_the_map(tmp_path: Path) -> None:
    root = _database(tmp_path / "db")
    with pytest.raises(DataError) as err:
        load_dataset(root, class_names=["COVID-19", "NORMAL", "Viral Pneumonia"])
    text = str(err.value)
    assert "\n" not in text
    assert "did you mean `--class-map COVID=COVID-19 --class-map Normal=NORMAL --exclude-class Lung_Opacity`?" in text


@pytest.mark.parametrize("extra,missing,want", [
    (["covid"], ["COVID-19"], "`--class-map covid=COVID-19`"),   # case-insensitive prefix
    (["NORMAL_CXR"], ["normal"], "`--class-map NORMAL_CXR=normal`"),  # the other way round
    (["Pneumonia"], ["COVID-19"], ""),                           # nothing similar: no map
    (["Viral"], ["Viral Pneumonia"], "`--class-map 'Viral=Viral Pneumonia'`"),  # shell-quoted
])
def test_suggest_class_map(extra: list[str], missing: list[str], want: str) -> None:
    assert suggest_class_map(extra, missing) == want


def test_bad_class_maps_name_the_option(tmp_path: Path) -> None:
    found = ["COVID", "Lung_Opacity", "Normal"]
    with pytest.raises(ConfigError, match=r"'--class-map'.*one of \['COVID'.*Got 'Covid' instead"):
        apply_class_map(found, {"Covid": "COVID-19"})
    with pytest.raises(ConfigError, match=r"'--exclude-class'.*Got 'Opacity' instead"):
        apply_class_map(found, {}, exclude=["Opacity"])
    with pytest.raises(ConfigError, match=r"'COVID' and 'Lung_Opacity' both as 'COVID-19'.*--merge-classes"):
        apply_class_map(found, {"COVID": "COVID-19", "Lung_Opacity": "COVID-19"})
    merged = apply_class_map(found, {"COVID": "COVID-19", "Lung_Opacity": "COVID-19"}, merge=True)
    assert merged.kept == ["COVID-19", "Normal"]
    with pytest.raises(ConfigError, match=r"'--class-map'.*DATA_CLASS=MODEL_CLASS.*Got 'COVID' instead"):
        parse_class_map(["COVID"])
    assert parse_class_map(["COVID=COVID-19", " Normal = NORMAL"]) == MAP


def test_config_classes_table(tmp_path: Path) -> None:
    toml = tmp_path / "audit.toml"
    toml.write_text('masks = "lung"\nexclude_classes = ["Lung_Opacity"]\n'
                    '[classes]\nCOVID = "COVID-19"\nNormal = "NORMAL"\n', encoding="utf-8")
    cfg = load_config(toml)
    assert cfg.class_map == MAP and cfg.exclude_classes == ("Lung_Opacity",) and cfg.masks == "lung"
    merged = cfg.merged(class_map={"Viral Pneumonia": "VP"})
    assert merged.class_map == {**MAP, "Viral Pneumonia": "VP"}
    toml.write_text('masks = "lungs"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"audit.toml: .*'masks'.*Got 'lungs'"):
        load_config(toml)


# ------------------------------------------------------------------ masks


def test_lung_masks_resized_by_nearest_neighbour(tmp_path: Path) -> None:
    root = _database(tmp_path / "db", image=299, mask=256, per_class=1)
    ds = load_dataset(root, masks="lung", exclude_classes=["Lung_Opacity"])
    assert not ds.has_masks and ds.has_lung_masks
    assert ds.describe()["mask_resized"] == {"256x256 -> 299x299": 3}
    got = ds.load_masks([0], size=(299, 299), kind="lung")[0]
    ref = np.asarray(Image.open(ds.samples[0].lung_mask_path).resize((299, 299), Image.Resampling.NEAREST)) > 127
    np.testing.assert_array_equal(got, ref)
    assert not ds.load_masks([0], size=(299, 299)).any()  # no lesion masks declared


def test_mask_of_another_aspect_ratio_names_both_files(tmp_path: Path) -> None:
    root = _database(tmp_path / "db", per_class=1)
    _save(root / "COVID" / "masks" / "COVID-1.png", np.zeros((8, 6), np.uint8))
    with pytest.raises(DataError, match=r"COVID/masks/COVID-1\.png: .*COVID/images/COVID-1\.png \(12x12\).*got 6x8"):
        load_dataset(root, masks="lung")


def test_mask_kind_must_match_the_files(tmp_path: Path) -> None:
    root = tmp_path / "m"
    _save(root / "a.png", np.zeros((4, 4), np.uint8))
    _save(root / "b.png", np.zeros((4, 4), np.uint8))
    _save(root / "ma.png", np.full((4, 4), 255, np.uint8))
    (root / "list.csv").write_text("path,label,mask,mask_kind\na.png,x,ma.png,lung\nb.png,y,,\n")
    assert load_dataset(root / "list.csv").has_lung_masks
    with pytest.raises(DataError, match=r"list\.csv: expected mask_kind 'lesion' \(--masks lesion\) for a\.png, got 'lung'"):
        load_dataset(root / "list.csv", masks="lesion")
    (root / "list.csv").write_text("path,label\na.png,x\nb.png,y\n")
    with pytest.raises(DataError, match=r"expected lung masks \(--masks lung\), got no mask files"):
        load_dataset(root / "list.csv", masks="lung")


# ------------------------------------------------------------------ metadata


def test_manifest_metadata_columns(tmp_path: Path) -> None:
    root = tmp_path / "m"
    for i in range(3):
        _save(root / f"{i}.png", np.full((4, 4), 10 * i, np.uint8))
    csv = root / "list.csv"
    csv.write_text("path,label,site,age,weight\n0.png,a,H1,61,70.5\n1.png,b,H2,7,80\n2.png,a,H1,45,60\n")
    ds = load_dataset(csv)
    meta = ds.metadata
    assert ds.metadata_columns == ["site", "age", "weight"]
    assert meta["site"].tolist() == ["H1", "H2", "H1"]
    assert meta["age"].dtype.kind == "i" and meta["age"].tolist() == [61, 7, 45]
    assert meta["weight"].dtype.kind == "f" and meta["weight"].tolist() == [70.5, 80.0, 60.0]
    assert ds.subset([2, 0]).metadata["age"].tolist() == [45, 61]
    before = ds.fingerprint
    csv.write_text("path,label,site,age,weight\n0.png,a,H1,61,70.5\n1.png,b,H3,7,80\n2.png,a,H1,45,60\n")
    assert load_dataset(csv).fingerprint != before  # metadata is part of the fingerprint
    csv.write_text("path,label,site\n0.png,a,H1\n1.png,b,\n2.png,a,H1\n")
    with pytest.raises(DataError, match=r"list\.csv: expected a value of metadata column 'site' .* line 3"):
        load_dataset(csv)


def test_database_spreadsheets_joined_by_file_name(tmp_path: Path) -> None:
    root = _database(tmp_path / "db", per_class=2)
    ds = load_dataset(root, masks="lung", class_map=MAP, exclude_classes=["Lung_Opacity"])
    assert ds.metadata_columns == ["FORMAT", "SIZE", "URL", "source"]
    assert ds.metadata["URL"].tolist() == [f"https://example.org/{i}" for i in (1, 2)] * 3
    assert ds.out_of_scope is not None and ds.out_of_scope.metadata["FORMAT"].tolist() == ["PNG", "PNG"]
    (root / "Normal.metadata.csv").write_text("FILE NAME,FORMAT,SIZE,URL\nNormal-1,PNG,1,u\n")
    assert load_dataset(root, masks="lung").describe()["metadata_missing"]["URL"] == 1  # Normal-2: no row
    with pytest.raises(DataError, match=r"Normal\.metadata\.csv: expected a row with FILE NAME 'Normal-2'"):
        load_dataset(root, masks="lung", strict_metadata=True)


# ------------------------------------------------------------------ lung metrics and conditions


def _slow_share(m: np.ndarray, k: np.ndarray) -> float:
    inside = total = 0.0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            total += abs(m[i, j])
            inside += abs(m[i, j]) if k[i, j] else 0.0
    return inside / total if total and k.any() else float("nan")


def test_mask_share_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((5, 9, 7))
    masks = rng.random((5, 9, 7)) < 0.3
    masks[3] = False
    maps[4] = 0.0
    want = [_slow_share(m, k) for m, k in zip(maps, masks)]
    np.testing.assert_allclose(mask_share(maps, masks), want, equal_nan=True)
    # a uniform map scores the mask's area share
    np.testing.assert_allclose(mask_share(np.ones((5, 9, 7)), masks), area_share(masks), equal_nan=True)
    assert np.isnan(area_share(masks)[3])


def _slow_blank(x: np.ndarray, k: np.ndarray, inside: bool) -> np.ndarray:
    out = x.copy()
    for n in range(len(x)):
        region = k[n] if inside else ~k[n]
        if not k[n].any() or k[n].all():
            continue
        for c in range(x.shape[3]):
            out[n, ..., c][region] = x[n, ..., c][~region].mean()
    return out


def test_blank_conditions_against_a_loop() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((4, 6, 5, 3)).astype(np.float32)
    k = rng.random((4, 6, 5)) < 0.4
    k[2] = False
    k[3] = True
    np.testing.assert_allclose(blank_lungs(x, k), _slow_blank(x, k, True), rtol=1e-6)
    np.testing.assert_allclose(blank_outside(x, k), _slow_blank(x, k, False), rtol=1e-6)
    assert blank_lungs(x, k).dtype == np.float32
    np.testing.assert_array_equal(blank_lungs(x, k)[~k], x[~k])  # the outside is untouched
    with pytest.raises(ConfigError, match="'masks'"):
        blank_lungs(x, k[:, :3])


@pytest.mark.parametrize("lungs,outside,status", [
    (0.35, 0.90, "pass"),   # reads the lungs: falls without them, holds up without the rest
    (0.90, 0.30, "warn"),   # the reverse: a shortcut outside the lung fields
    (0.90, 0.85, "pass"),   # holds up either way: not flagged as a shortcut
])
def test_lung_check_flags_the_reverse(lungs: float, outside: float, status: str) -> None:
    from robustkit.studies.perturbation import _lung_check

    metrics = {"lung_accuracy.lungs_blanked": lungs, "lung_accuracy.outside_blanked": outside}
    check = _lung_check(metrics, 0.95, 3)
    assert check.status == status and check.name == "model reads the lungs"
    assert f"{lungs:.3f} with the lungs blanked" in check.detail


def test_xlsx_spreadsheets_read_on_a_plain_install(tmp_path: Path) -> None:
    import openpyxl  # a core dependency: the database ships its metadata as .xlsx

    root = _database(tmp_path / "db", per_class=1)
    for csv in root.glob("*.metadata.csv"):
        book = openpyxl.Workbook()
        for line in csv.read_text().splitlines():
            book.active.append(line.split(","))
        book.save(csv.with_suffix(".xlsx"))
        csv.unlink()
    ds = load_dataset(root, masks="lung")
    assert ds.metadata_columns == ["FORMAT", "SIZE", "URL", "source"] and ds.describe()["notes"] == []
    assert ds.metadata["URL"].tolist() == ["https://example.org/1"] * 4
    assert ds.metadata["source"].tolist() == ["example.org"] * 4
