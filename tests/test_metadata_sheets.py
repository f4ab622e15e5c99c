"""Metadata as shipped (issue #25, item 7): the COVID-19 Radiography Database's four
``<class>.metadata.xlsx`` sheets read on a plain install, the URL column as a ``source`` slice,
``missing`` for an image without a row (counted in results.json, the report and the card), and
``--strict-metadata`` restoring the stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image

import robustkit
from robustkit.cli import main
from robustkit.config import load_config
from robustkit.data.loader import load_dataset
from robustkit.data.metadata import MISSING, url_source
from robustkit.errors import ConfigError, DataError
from tests.conftest import _pattern

# data folder -> (class pattern drawn, URL of each image; None: the image has no row in the sheet)
IEEE = "https://github.com/ieee8023/covid-chestxray-dataset"
SIRM = "https://sirm.org/category/senza-categoria/covid-19/"
RSNA = "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data"
MOONEY = "https://www.kaggle.com/paultimothymooney/chest-xray-pneumonia"
DATABASE = {
    "COVID": (0, [IEEE, IEEE, SIRM, None]),
    "Normal": (1, [RSNA, RSNA, RSNA, None]),
    "Viral Pneumonia": (2, [MOONEY] * 4),
    "Lung_Opacity": (0, [RSNA] * 4),
}
EMPTY_SIZE = ("Viral Pneumonia", 2)  # this image's row has an empty SIZE cell
MAP = ["--class-map", "COVID=COVID-19", "--class-map", "Normal=NORMAL", "--exclude-class", "Lung_Opacity"]
WANT_MISSING = {"FORMAT": 2, "SIZE": 3, "URL": 2, "source": 2}


def write_database(root: Path) -> Path:
    """Four class folders of 32 px images and four .xlsx sheets (FILE NAME, FORMAT, SIZE, URL),
    written by openpyxl as the database ships them."""
    rng = np.random.default_rng(3)
    for name, (label, urls) in DATABASE.items():
        book = openpyxl.Workbook()
        book.active.append(["FILE NAME", "FORMAT", "SIZE", "URL"])
        (root / name / "images").mkdir(parents=True)
        for i, url in enumerate(urls, start=1):
            img, _ = _pattern(label, rng)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name / "images" / f"{name}-{i}.png")
            if url is not None:
                book.active.append([f"{name.upper()}-{i}", "PNG", None if (name, i) == EMPTY_SIZE else "32*32", url])
        book.save(root / f"{name}.metadata.xlsx")
    return root


@pytest.mark.parametrize("url,want", [
    (IEEE, "github.com/ieee8023"),
    ("https://github.com/armiro/COVID-CXNet", "github.com/armiro"),
    (SIRM, "sirm.org"),
    (RSNA, "kaggle.com/rsna-pneumonia-detection-challenge"),
    (MOONEY, "kaggle.com/paultimothymooney"),
    ("https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/#1590858128006-9e640421-6711", "bimcv.cipf.es"),
    ("https://eurorad.org", "eurorad.org"),
    ("HTTPS://WWW.Eurorad.org/case/1", "eurorad.org"),
    ("eurorad.org/case/1", "eurorad.org"),
    ("Hospital A", "Hospital A"),
])
def test_url_source(url: str, want: str) -> None:
    assert url_source(url) == want


def test_rows_missing_from_a_sheet_read_as_missing_and_counted(tmp_path: Path) -> None:
    root = write_database(tmp_path / "db")
    ds = load_dataset(root, class_map={"COVID": "COVID-19", "Normal": "NORMAL"}, exclude_classes=["Lung_Opacity"])
    assert ds.metadata_columns == ["FORMAT", "SIZE", "URL", "source"]
    meta = ds.metadata
    by_id = dict(zip(ds.ids, meta["source"].tolist()))
    assert by_id["COVID/images/COVID-1"] == "github.com/ieee8023" and by_id["COVID/images/COVID-3"] == "sirm.org"
    assert by_id["COVID/images/COVID-4"] == "missing" and by_id["Normal/images/Normal-4"] == "missing"
    row = ds.ids.tolist().index("Viral Pneumonia/images/Viral Pneumonia-2")
    assert meta["SIZE"][row] == "missing" and meta["URL"][row] == MOONEY  # an empty cell: that column only
    info = ds.describe()
    assert info["metadata_missing"] == WANT_MISSING
    # counted by an independent look at the values
    assert {c: int(sum(v == "missing" for v in meta[c])) for c in meta} == WANT_MISSING
    note = next(n for n in info["notes"] if "without a row" in n)
    assert note.startswith("2 image(s) without a row")  # COVID-4 and Normal-4
    assert "COVID/images/COVID-4.png in COVID.metadata.xlsx" in note
    assert ds.subset([row]).describe()["metadata_missing"] == {"FORMAT": 0, "SIZE": 1, "URL": 0, "source": 0}


def test_strict_metadata_stops_on_the_first_image_without_a_row(tmp_path: Path) -> None:
    root = write_database(tmp_path / "db")
    with pytest.raises(DataError) as err:
        load_dataset(root, strict_metadata=True)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(root / "COVID.metadata.xlsx") + ": ")
    assert "FILE NAME 'COVID-4'" in text and "--strict-metadata" in text
    # an empty cell is refused too, naming the sheet and the image
    book = openpyxl.load_workbook(root / "COVID.metadata.xlsx")
    book.active.append(["COVID-4", "PNG", "32*32", IEEE])
    book.save(root / "COVID.metadata.xlsx")
    book = openpyxl.load_workbook(root / "Normal.metadata.xlsx")
    book.active.append(["NORMAL-4", "PNG", "32*32", RSNA])
    book.save(root / "Normal.metadata.xlsx")
    with pytest.raises(DataError, match=r"metadata column 'SIZE'.*Viral Pneumonia-2\.png in Viral Pneumonia\.metadata\.xlsx"):
        load_dataset(root, strict_metadata=True)


def test_a_class_without_a_sheet(tmp_path: Path) -> None:
    root = write_database(tmp_path / "db")
    (root / "Lung_Opacity.metadata.xlsx").unlink()
    ds = load_dataset(root)
    opacity = [i for i, s in enumerate(ds.ids) if s.startswith("Lung_Opacity/")]
    assert len(opacity) == 4 and all(ds.metadata["URL"][i] == "missing" for i in opacity)
    assert any("no Lung_Opacity.metadata.csv or .xlsx" in n for n in ds.describe()["notes"])
    with pytest.raises(DataError, match=r"expected a metadata table for every class \(--strict-metadata\), got none "
                                        r"for 'Lung_Opacity'"):
        load_dataset(root, strict_metadata=True)


def test_a_numeric_column_with_missing_values_is_binned_as_without_them() -> None:
    from robustkit.metrics.slices import discretize

    rng = np.random.default_rng(0)
    ages = rng.integers(1, 95, 40)
    absent = rng.random(40) < 0.3
    column = np.asarray([MISSING if a else int(v) for v, a in zip(ages, absent)])  # as Dataset.metadata holds it
    got = discretize(column, bin_width=10, missing=MISSING)
    assert got[absent].tolist() == [MISSING] * int(absent.sum())
    assert got[~absent].tolist() == discretize(ages[~absent], bin_width=10).tolist()
    assert got[~absent].tolist() == [f"{v // 10 * 10}-{v // 10 * 10 + 9}" for v in ages[~absent]]  # a slow loop
    words = np.asarray(["PA", MISSING, "AP"])
    assert discretize(words, bin_width=10, missing=MISSING).tolist() == ["PA", MISSING, "AP"]
    few = np.asarray(["1", MISSING, "2"])  # ten values or fewer: each its own label, as without missing
    assert discretize(few, bin_width=10, missing=MISSING).tolist() == ["1", MISSING, "2"]


def test_config_key_strict_metadata(tmp_path: Path) -> None:
    toml = tmp_path / "audit.toml"
    toml.write_text("strict_metadata = true\n", encoding="utf-8")
    assert load_config(toml).strict_metadata is True and load_config(None).strict_metadata is False
    toml.write_text('strict_metadata = "yes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"audit\.toml: .*'strict_metadata'.*Got 'yes'"):
        load_config(toml)


def test_database_sheets_audit_and_the_source_is_a_slice(toy_model: Path, tmp_path: Path, capsys) -> None:
    root = write_database(tmp_path / "COVID-19_Radiography_Dataset")
    out = tmp_path / "audit"
    res = robustkit.audit(toy_model, root, out=out, studies=["clean", "slices"], profile="quick",
                          class_map={"COVID": "COVID-19", "Normal": "NORMAL"}, exclude_classes=["Lung_Opacity"],
                          config={"slices": {"min_size": 2}})
    assert res.dataset["metadata_missing"] == WANT_MISSING
    obj = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert obj["dataset"]["metadata_missing"] == WANT_MISSING
    slices = res.studies["slices"]
    names = {row["slice"]: row["n"] for row in slices.data["slices"]}
    assert names["source=github.com/ieee8023"] == 2 and names["source=missing"] == 2
    assert names["source=kaggle.com/rsna-pneumonia-detection-challenge"] == 3
    assert "source=sirm.org" not in names  # one image: under min_size
    assert slices.data["missing"] == "missing"  # compare bins the stored metadata with the same label

    # the 'missing' slice's accuracy against Keras on the same images
    from robustkit._tf import keras

    ds = load_dataset(root, class_map={"COVID": "COVID-19", "Normal": "NORMAL"}, exclude_classes=["Lung_Opacity"],
                      class_names=["COVID-19", "NORMAL", "Viral Pneumonia"])
    assert list(ds.ids) == list(res.ids)
    pred = keras.models.load_model(toy_model).predict(ds.load_images(range(len(ds)), size=(32, 32), channels=1),
                                                      verbose=0).argmax(axis=1)
    right = pred == np.asarray(ds.labels)
    for value in ("missing", "kaggle.com/paultimothymooney"):
        mask = ds.metadata["source"] == value
        assert slices.metrics[f"accuracy.source={value}"] == pytest.approx(float(right[mask].mean()))

    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Missing metadata" in html and "FORMAT 2, SIZE 3, URL 2, source 2 of 12 images" in html
    from robustkit.card_export import write_card

    paths = write_card(out)
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["data"]["metadata_missing"] == WANT_MISSING
    card = paths["html"].read_text(encoding="utf-8")
    assert "Missing metadata" in card and "FORMAT 2, SIZE 3, URL 2, source 2 of 12 images" in card

    # --strict-metadata through the command line: exit 2, one line naming the sheet and the file
    argv = ["audit", "--model", str(toy_model), "--data", str(root), "--out", str(tmp_path / "o"), "-q",
            "--studies", "clean", *MAP, "--strict-metadata"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustkit: error: ")
    assert "COVID.metadata.xlsx" in err[0] and "'COVID-4'" in err[0]
    assert not (tmp_path / "o" / "results.json").exists()
