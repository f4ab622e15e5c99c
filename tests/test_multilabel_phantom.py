"""The multi-label phantom (co-occurring findings, a mask per finding) and ``train --multilabel``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustkit.cli import main
from robustkit.data.loader import load_dataset
from robustkit.data.phantom import (
    FINDINGS,
    NO_FINDING,
    PREVALENCE,
    case_findings,
    generate_phantom,
    render_findings,
)
from robustkit.errors import ConfigError

MASK_COLUMNS = [f"mask.{f}" for f in FINDINGS]


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _findings(label: str) -> set[str]:
    return set() if label == NO_FINDING else set(label.split("|"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("ml") / "d", per_class=6, size=48, seed=2, multilabel=True)


# ------------------------------------------------------------------ generator


def test_generate_is_byte_identical_prefix_stable_and_seeded(small: Path, tmp_path: Path) -> None:
    again = generate_phantom(tmp_path / "again", per_class=6, size=48, seed=2, multilabel=True)
    longer = generate_phantom(tmp_path / "longer", per_class=7, size=48, seed=2, multilabel=True)
    other = generate_phantom(tmp_path / "other", per_class=6, size=48, seed=3, multilabel=True)
    files = sorted(p.relative_to(small) for p in small.rglob("*.png"))
    assert len(files) > 24 * 2  # images, lung masks and finding masks
    for rel in files:
        assert (small / rel).read_bytes() == (again / rel).read_bytes() == (longer / rel).read_bytes()
    assert (small / "manifest.csv").read_bytes() == (again / "manifest.csv").read_bytes()
    assert _rows(longer)[:24] == _rows(small) and len(_rows(longer)) == 28
    assert (small / "images" / "phantom_0000.png").read_bytes() != (other / "images" / "phantom_0000.png").read_bytes()


def test_manifest_is_in_the_multilabel_form(small: Path) -> None:
    rows = _rows(small)
    assert list(rows[0]) == ["path", "label", *MASK_COLUMNS] and len(rows) == 24
    for row in rows:
        present = _findings(row["label"])
        assert row["label"] == ("|".join(sorted(present)) or NO_FINDING) and present <= set(FINDINGS)
        with Image.open(small / row["path"]) as im:
            assert im.mode == "L" and im.size == (48, 48)
        assert (small / "lung_masks" / Path(row["path"]).name).is_file()
        for f in FINDINGS:
            assert bool(row[f"mask.{f}"]) == (f in present)
            if f in present:
                assert row[f"mask.{f}"] == f"masks/{f}/{Path(row['path']).name}"
                assert np.asarray(Image.open(small / row[f"mask.{f}"])).max() == 255


def test_sites_add_metadata_columns_and_single_label_options_are_refused(tmp_path: Path) -> None:
    root = generate_phantom(tmp_path / "s", per_class=2, size=32, seed=0, multilabel=True, sites=2)
    rows = _rows(root)
    assert list(rows[0]) == ["path", "label", *MASK_COLUMNS, "site", "view", "sex", "age"]
    assert {r["site"] for r in rows} == {"A", "B"}
    for kwargs in ({"shortcut": True}, {"sites": 2, "confounded": True}):
        with pytest.raises(ConfigError, match="multilabel"):
            generate_phantom(tmp_path / "x", per_class=2, size=32, multilabel=True, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'findings'"):
        render_findings(("Cardiomegaly",), size=32, rng=np.random.default_rng(0))


def test_findings_co_occur_with_the_stated_prevalence(small: Path) -> None:
    info = json.loads((small / "phantom.json").read_text())
    assert info["multilabel"] is True and info["findings"] == list(FINDINGS) and info["prevalence"] == PREVALENCE
    sets = [_findings(r["label"]) for r in _rows(small)]
    counts = info["co_occurrence"]
    assert counts["per_finding"] == {f: sum(f in s for s in sets) for f in FINDINGS}
    assert counts["per_number_of_findings"] == {str(k): sum(len(s) == k for s in sets) for k in range(4)}
    assert counts["labels"][NO_FINDING] == sum(not s for s in sets) > 0
    assert sum(len(s) >= 2 for s in sets) >= 3 and all(n > 0 for n in counts["pairs"].values())
    draws = np.array([[f in case_findings(0, i) for f in FINDINGS] for i in range(3000)])
    np.testing.assert_allclose(draws.mean(0), [PREVALENCE[f] for f in FINDINGS], atol=0.03)
    corr = np.corrcoef(draws.T)[np.triu_indices(3, 1)]
    assert np.all(np.abs(corr) < 0.06)  # drawn independently


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_mask_covers_where_its_finding_was_drawn(finding: str) -> None:
    for i in range(8):
        case = render_findings((finding,), size=64, rng=np.random.default_rng([4, i]))
        clear = render_findings((), size=64, rng=np.random.default_rng([4, i]))
        assert np.array_equal(case.lungs, clear.lungs) and list(case.masks) == [finding] and not clear.masks
        mask = case.masks[finding]
        assert 0.005 < mask.mean() < 0.2 and (mask & ~case.lungs).sum() == 0
        diff = np.abs(case.image.astype(float) - clear.image.astype(float))
        assert diff[mask].mean() > 15 and diff[mask].mean() > 5 * diff[~mask].mean()
        assert diff[~mask].mean() < 5  # outside: only the per-image windowing moves


def test_co_occurring_findings_change_only_the_union_of_their_masks() -> None:
    for i in range(6):
        case = render_findings(FINDINGS, size=64, rng=np.random.default_rng([5, i]))
        clear = render_findings((), size=64, rng=np.random.default_rng([5, i]))
        assert case.label == "Effusion|Infiltration|Opacity" and clear.label == NO_FINDING
        union = np.logical_or.reduce(list(case.masks.values()))
        diff = np.abs(case.image.astype(float) - clear.image.astype(float))
        assert diff[union].mean() > 5 * diff[~union].mean()
        for f in FINDINGS:  # each finding is still visible beside the others
            assert diff[case.masks[f]].mean() > 10


def test_phantom_cli_writes_the_multilabel_layout(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert main(["phantom", "--multilabel", "--out", str(out), "--per-class", "1", "--size", "32", "-q"]) == 0
    assert len(_rows(out)) == 4 and (out / "phantom.json").is_file()


# ------------------------------------------------------------------ train --multilabel


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from robustkit.model.training import train

    root = generate_phantom(tmp_path_factory.mktemp("mltrain") / "d", per_class=100, size=64, seed=0,
                            multilabel=True)
    out = tmp_path_factory.mktemp("mlmodel") / "ml.keras"
    # val_fraction 0.5: 200 images fitted, 200 to pick the best epoch
    return train(load_dataset(root / "manifest.csv"), out, arch="small_cnn", input_size=64, epochs=25, batch_size=16,
                 val_fraction=0.5, augment=False, seed=0, quiet=True, multilabel=True)


def test_train_multilabel_writes_a_sigmoid_checkpoint_that_learns_every_finding(ml_run, tmp_path: Path) -> None:
    import keras
    from sklearn.metrics import roc_auc_score

    meta = json.loads(ml_run.checkpoint.with_name("ml.meta.json").read_text())
    assert meta["output"] == "multilabel" and meta["class_names"] == list(FINDINGS)
    history = json.loads(ml_run.history_json.read_text())
    assert history["output"] == "multilabel" and history["recipe"]["loss"].startswith("binary_crossentropy")
    assert {"val_auroc", "val_accuracy"} <= set(history["epochs"][0])
    model = keras.models.load_model(ml_run.checkpoint)
    assert model.get_layer("predictions").activation.__name__ == "sigmoid" and model.output_shape == (None, 3)
    test = load_dataset(generate_phantom(tmp_path / "test", per_class=25, size=64, seed=1, multilabel=True) / "manifest.csv")
    x = test.load_images(np.arange(len(test)), size=(64, 64), channels=3)
    probs = model.predict(x, verbose=0)
    y = np.asarray(test.targets, bool)
    aurocs = [roc_auc_score(y[:, k], probs[:, k]) for k in range(len(FINDINGS))]
    assert min(aurocs) > 0.7, dict(zip(FINDINGS, aurocs))  # measured 0.86, 0.81, 0.89
    assert ml_run.output == "multilabel" and ml_run.best_val_auroc is not None and ml_run.best_val_auroc > 0.7


def test_train_refuses_multilabel_data_without_the_flag(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import robustkit.data.loader as dataset

    root = generate_phantom(tmp_path / "d", per_class=2, size=32, seed=0, multilabel=True)
    loaded = load_dataset(root / "manifest.csv")
    monkeypatch.setattr(dataset, "load_dataset", lambda *a, **k: loaded)  # the contract's loader until it lands
    args = ["train", "--data", str(root / "manifest.csv"), "--out", str(tmp_path / "m.keras"), "--arch", "small_cnn",
            "--input-size", "32", "--epochs", "1", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--multilabel" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.keras").exists()


def test_train_multilabel_on_single_label_data_says_one_hot(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    root = generate_phantom(tmp_path / "single", per_class=4, size=32, seed=0)
    out = tmp_path / "s.keras"
    args = ["train", "--data", str(root), "--out", str(out), "--arch", "small_cnn", "--input-size", "32",
            "--epochs", "1", "--batch-size", "8", "--multilabel", "-q"]
    assert main(args) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "one-hot" in line]
    assert len(notes) == 1 and "single-label" in notes[0]
    meta = json.loads(out.with_name("s.meta.json").read_text())
    assert meta["output"] == "multilabel" and meta["class_names"] == ["COVID-19", "NORMAL", "Viral Pneumonia"]


def test_a_multilabel_phantom_is_audited_end_to_end(ml_run, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The phantom, ``train --multilabel``, then ``audit`` with every study that scores findings:
    results per finding, a report section per study naming every finding, the card, a gate rule
    on ``clean.auroc.<finding>``."""
    from robustkit.report.render import study_anchor
    from robustkit.results import load_results

    test = generate_phantom(tmp_path / "test", per_class=10, size=64, seed=7, multilabel=True, sites=2)
    out = tmp_path / "audit"
    settings = ["adversarial.max_samples=8", "adversarial.apgd_steps=4", "saliency.max_samples=4",
                "ood.n_per_set=4", "slices.min_size=4", "calibration.n_bootstrap=20", "clean.n_bootstrap=50"]
    code = main(["audit", "--model", str(ml_run.checkpoint), "--data", str(test / "manifest.csv"), "--out", str(out),
                 "--profile", "quick", "--quiet", *[a for s in settings for a in ("--set", s)]])
    assert code in (0, 1), capsys.readouterr().err
    result = load_results(out)
    assert result.model["output_kind"] == "multilabel" and set(result.model["thresholds"]) == set(FINDINGS)
    assert result.dataset["multilabel"] and result.targets is not None and result.targets.shape == (40, 3)
    assert all(s.status == "ok" for s in result.studies.values()), {n: s.error for n, s in result.studies.items()}
    assert {"clean", "perturbation", "noise", "adversarial", "calibration", "saliency", "slices", "ood"} <= set(
        result.studies)
    for name in FINDINGS:
        assert 0.0 <= result.metric(f"clean.auroc.{name}") <= 1.0
    html = (out / "report.html").read_text()
    for study in result.studies:
        start = html.index(f'<section id="{study_anchor(study)}"')
        section = html[start:html.find("<section id=", start + 10)]
        if study == "ood":  # scores per image, not per finding: says how it reads a sigmoid head
            assert "JointEnergy" in section
        else:
            assert all(name in section for name in FINDINGS), f"the {study} section does not name every finding"
    assert main(["card", str(out), "--quiet"]) == 0
    card = (out / "card.html").read_text()
    assert all(name in card for name in FINDINGS)
    assert "present finding turned off (macro over findings), LINF" in card  # the card's adversarial block
    auroc = result.metric("clean.auroc.Effusion")
    policy = tmp_path / "gate.toml"
    policy.write_text(f'judge = "point"\n[[rule]]\nmetric = "clean.auroc.Effusion"\nmin = {auroc - 0.01:.4f}\n')
    assert main(["gate", str(out), "--policy", str(policy)]) == 0
    policy.write_text(f'judge = "point"\n[[rule]]\nmetric = "clean.auroc.Effusion"\nmin = {min(auroc + 0.01, 1.0):.4f}\n')
    assert main(["gate", str(out), "--policy", str(policy)]) == 1
