"""End to end (issue #11): the COVID-19 Radiography Database layout, as downloaded, built from
phantom radiographs and audited in one command line with a class map, an excluded class and
lung-field masks."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

import robustkit
from robustkit.cli import main
from robustkit.data.loader import load_dataset
from robustkit.data.phantom import render_case
from robustkit.results import load_results

# data folder -> phantom class rendered (0 COVID-19, 1 NORMAL, 2 Viral Pneumonia)
_FOLDERS = {"COVID": 0, "Normal": 1, "Viral Pneumonia": 2, "Lung_Opacity": 0}
PER_CLASS = 4


def build_database(root: Path) -> Path:
    """299 px images (every other one RGB), 256 px lung masks, metadata CSVs beside."""
    for f, (name, label) in enumerate(_FOLDERS.items()):
        rows = ["FILE NAME,FORMAT,SIZE,URL"]
        for i in range(1, PER_CLASS + 1):
            case = render_case(label, size=299, rng=np.random.default_rng([7, f, i]))
            img = Image.fromarray(case.image)
            img = img.convert("RGB") if i % 2 else img
            (root / name / "images").mkdir(parents=True, exist_ok=True)
            (root / name / "masks").mkdir(parents=True, exist_ok=True)
            img.save(root / name / "images" / f"{name}-{i}.png")
            lungs = Image.fromarray(case.lungs.astype(np.uint8) * 255).resize((256, 256), Image.Resampling.NEAREST)
            lungs.save(root / name / "masks" / f"{name}-{i}.png")
            rows.append(f"{name}-{i},PNG,299*299,https://example.org/{name}/{i}")
        (root / f"{name}.metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_database_layout_audited_in_one_command(toy_model: Path, tmp_path: Path, capsys) -> None:
    data = build_database(tmp_path / "COVID-19_Radiography_Dataset")
    out = tmp_path / "audit"
    argv = ["audit", "--model", str(toy_model), "--data", str(data), "--out", str(out), "-q",
            "--class-map", "COVID=COVID-19", "--class-map", "Normal=NORMAL",
            "--exclude-class", "Lung_Opacity", "--masks", "lung",
            "--studies", "clean,perturbation,saliency", "--profile", "quick",
            "--set", 'perturbation.transforms=["jpeg"]', "--set", "perturbation.severities=[1]",
            "--set", 'saliency.methods=["vanilla_gradient"]']
    assert main(argv) == 0, capsys.readouterr().err
    res = load_results(out)
    d = res.dataset
    assert d["n_excluded"] == PER_CLASS and d["excluded_counts"] == {"Lung_Opacity": PER_CLASS}
    assert d["class_map"] == {"COVID": "COVID-19", "Normal": "NORMAL"}
    assert d["mask_resized"] == {"256x256 -> 299x299": 3 * PER_CLASS}
    assert d["metadata_columns"] == ["FORMAT", "SIZE", "URL", "source"]
    assert d["metadata_missing"] == {"FORMAT": 0, "SIZE": 0, "URL": 0, "source": 0}
    obj = json.loads((out / "results.json").read_text())
    assert obj["dataset"]["n_excluded"] == PER_CLASS
    jsonschema.validate(obj, json.loads((Path(robustkit.__file__).parent / "schema" / "results.schema.json").read_text()))
    assert len(res.ids) == 3 * PER_CLASS and res.metadata["URL"][0].startswith("https://example.org/")

    # lung-mask metrics are present and sane
    sal, pert = res.studies["saliency"], res.studies["perturbation"]
    area = sal.metrics["lung_area_share"]
    assert 0.1 < area < 0.6
    assert abs(sal.metrics["lung_share.random"] - area) < 0.02  # a random map scores the area share
    assert 0.0 <= sal.metrics["lung_share.vanilla_gradient"] <= 1.0
    assert any(c.name == "relevance inside the lungs: vanilla_gradient" for c in sal.checks)
    for cond in ("lungs_blanked", "outside_blanked"):
        assert 0.0 <= pert.metrics[f"lung_accuracy.{cond}"] <= 1.0
        assert 0.0 <= pert.metrics[f"lung_flip_rate.{cond}"] <= 1.0
    assert pert.metrics["lung_n_samples"] == 3 * PER_CLASS
    assert any(c.name == "model reads the lungs" for c in pert.checks)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Excluded (out of scope)" in html and "Lung_Opacity 4" in html and "nearest neighbour" in html

    # clean accuracy == keras model.predict + argmax on the same images
    from robustkit._tf import keras

    model = keras.models.load_model(toy_model)
    ds = load_dataset(data, class_map={"COVID": "COVID-19", "Normal": "NORMAL"},
                      exclude_classes=["Lung_Opacity"], masks="lung",
                      class_names=["COVID-19", "NORMAL", "Viral Pneumonia"])
    assert list(ds.ids) == list(res.ids)
    x = ds.load_images(range(len(ds)), size=(32, 32), channels=1)
    pred = model.predict(x, verbose=0).argmax(axis=1)
    assert res.studies["clean"].metrics["accuracy"] == pytest.approx(float(np.mean(pred == ds.labels)))


def test_database_layout_without_the_map_suggests_it(toy_model: Path, tmp_path: Path, capsys) -> None:
    data = build_database(tmp_path / "db")
    code = main(["audit", "--model", str(toy_model), "--data", str(data), "--out", str(tmp_path / "o"),
                 "-q", "--studies", "clean"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("robustkit: error: ")
    assert "did you mean `--class-map COVID=COVID-19 --class-map Normal=NORMAL --exclude-class Lung_Opacity`?" in err[0]
    code = main(["audit", "--model", str(toy_model), "--data", str(data), "--out", str(tmp_path / "o"),
                 "-q", "--class-map", "Covid=COVID-19"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'--class-map'" in err[0] and "'Covid'" in err[0]


@pytest.mark.slow
def test_train_on_the_database_layout_with_the_same_options(tmp_path: Path, capsys) -> None:
    data = build_database(tmp_path / "db")
    out = tmp_path / "m.keras"
    argv = ["train", "--data", str(data), "--out", str(out), "--arch", "small_cnn", "--input-size", "32",
            "--epochs", "1", "--batch-size", "8", "-q", "--class-map", "COVID=COVID-19",
            "--class-map", "Normal=NORMAL", "--exclude-class", "Lung_Opacity"]
    assert main(argv) == 0, capsys.readouterr().err
    meta = json.loads(out.with_name("m.meta.json").read_text(encoding="utf-8"))
    assert meta["class_names"] == ["COVID-19", "NORMAL", "Viral Pneumonia"]  # Lung_Opacity left out
    bad = ["train", "--data", str(data), "--out", str(tmp_path / "x.keras"), "--arch", "small_cnn",
           "--input-size", "32", "--epochs", "1", "-q", "--class-map", "COVID=Normal"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustkit: error: ") and "'COVID' and 'Normal' both as 'Normal'" in err
