"""The robustkit command: help texts, an end-to-end audit, and one-line errors with exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from robustkit.cli import build_parser, main
from tests.conftest import CLASSES, SIZE


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("robustkit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "phantom", "train", "audit", "report", "compare", "gate", "studies"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: robustkit" in capsys.readouterr().out


def test_audit_then_report(capsys, toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    code, stdout, _ = _run(capsys, "audit", "--model", str(toy_model), "--data", str(toy_data),
                           "--out", str(out), "--studies", "clean", "--seed", "1", "-q")
    assert code == 0 and stdout.strip() == str(out / "report.html")
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["seed"] == 1 and list(results["studies"]) == ["clean"]
    (out / "report.html").unlink()
    code, stdout, _ = _run(capsys, "report", str(out))
    assert code == 0 and (out / "report.html").is_file()


def test_phantom_command(capsys, tmp_path: Path) -> None:
    code, stdout, _ = _run(capsys, "phantom", "--out", str(tmp_path / "p"), "--per-class", "2",
                           "--size", "64", "--seed", "3", "-q")
    assert code == 0
    for name in CLASSES:
        assert len(list((tmp_path / "p" / name).glob("*.png"))) == 2
        assert len(list((tmp_path / "p" / "masks" / name).glob("*.png"))) == 2


def test_missing_class_folder(capsys, toy_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in CLASSES[:2]:
        shutil.copytree(Path(__file__).parent.parent / "data" / "sample" / name, data / name)
    code, _, err = _run(capsys, "audit", "--model", str(toy_model), "--data", str(data),
                        "--out", str(tmp_path / "o"), "-q")
    assert code == 2
    assert "Viral Pneumonia" in _one_line_error(err)


def test_unreadable_image(capsys, toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    bad = data / "NORMAL" / "NORMAL_003.png"
    bad.write_bytes(b"this is not a PNG at all")
    code, _, err = _run(capsys, "audit", "--model", str(toy_model), "--data", str(data),
                        "--out", str(tmp_path / "o"), "-q")
    assert code == 2
    assert "NORMAL_003.png" in _one_line_error(err)
    code, _, err = _run(capsys, "audit", "--model", str(toy_model), "--data", str(data),
                        "--out", str(tmp_path / "o2"), "--studies", "clean", "--on-bad-input", "skip", "-q")
    assert code == 0
    skipped = json.loads((tmp_path / "o2" / "results.json").read_text())["dataset"]["skipped"]
    assert [s["path"] for s in skipped] == ["NORMAL/NORMAL_003.png"]


def test_checkpoint_with_wrong_output_size(capsys, toy_data: Path, tmp_path: Path) -> None:
    from robustkit._tf import keras

    inp = keras.Input((SIZE, SIZE, 1))
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(inp))
    path = tmp_path / "four.keras"
    keras.Model(inp, out).save(path)
    code, _, err = _run(capsys, "audit", "--model", str(path), "--data", str(toy_data),
                        "--out", str(tmp_path / "o"), "-q")
    assert code == 2
    line = _one_line_error(err)
    assert "four.keras" in line and "4 outputs" in line


def test_unknown_study(capsys, toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "audit", "--model", str(toy_model), "--data", str(toy_data),
                        "--out", str(tmp_path / "o"), "--studies", "clean,bogus", "-q")
    assert code == 2
    assert "'bogus'" in _one_line_error(err)


def test_bad_option_values(capsys, toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "audit", "--model", str(toy_model), "--data", str(toy_data),
                        "--out", str(tmp_path / "o"), "--limit", "0", "-q")
    assert code == 2 and "'limit'" in _one_line_error(err)
    code, _, err = _run(capsys, "phantom", "--out", str(tmp_path / "p"), "--per-class", "0", "-q")
    assert code == 2 and "per_class" in _one_line_error(err)


def test_set_overrides_reach_the_study_config(capsys, toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, _, _ = _run(capsys, "audit", "--model", str(toy_model), "--data", str(toy_data), "--out", str(out),
                      "--studies", "clean", "--set", "clean.n_bootstrap=50", "--set", "clean.n_examples=0", "-q")
    assert code == 0
    cfg = json.loads((out / "results.json").read_text())["config"]["studies"]["clean"]
    assert cfg["n_bootstrap"] == 50 and cfg["n_examples"] == 0
    code, _, err = _run(capsys, "audit", "--model", str(toy_model), "--data", str(toy_data), "--out", str(out),
                        "--studies", "clean", "--set", "clean.n_bootstrap", "-q")
    assert code == 2 and "STUDY.KEY=VALUE" in _one_line_error(err)
    code, _, err = _run(capsys, "audit", "--model", str(toy_model), "--data", str(toy_data), "--out", str(out),
                        "--studies", "clean", "--set", "clean.n_boot=5", "-q")
    assert code == 2 and "Unknown key 'n_boot'" in _one_line_error(err)


def test_input_scale_option(capsys, toy_data: Path, tmp_path: Path) -> None:
    import numpy as np

    from robustkit._tf import keras
    from robustkit.data.loader import load_dataset

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 1))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(inp))
    path = tmp_path / "raw255.keras"
    model = keras.Model(inp, out)
    model.save(path)
    code, _, _ = _run(capsys, "audit", "--model", str(path), "--data", str(toy_data), "--out", str(tmp_path / "o"),
                      "--studies", "clean", "--input-scale", "255", "-q")
    assert code == 0
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["model"]["input_scale"] == "255"
    data = load_dataset(toy_data)
    x = data.load_images(np.arange(len(data)), size=(SIZE, SIZE), channels=1)
    logits = np.load(tmp_path / "o" / "records.npz")["clean/logits"]
    np.testing.assert_allclose(logits, model.predict(x * 255.0, verbose=0), rtol=1e-4, atol=1e-3)


def test_study_shortcuts_come_from_the_study_plugin_records() -> None:
    from robustkit.cli import _config_with_settings, build_parser
    from robustkit.plugins import CliOption, StudyPlugin, plugins, register_plugin

    args = ["audit", "--model", "m.keras", "--data", "d", "--out", "o", "--layer", "conv2", "--layers", "conv1,conv2"]
    cfg = _config_with_settings(build_parser().parse_args(args))
    assert cfg.overrides["saliency"] == {"layer": "conv2", "layers": ["conv1", "conv2"]}
    saved = dict(plugins())
    try:  # a third-party record's shortcut appears in the audit command, owned by its study
        register_plugin(StudyPlugin("clean", saved["clean"].study, saved["clean"].view, saved["clean"].template,
                                    options=(CliOption("--boots", "n_bootstrap", "clean: resamples", text=False),)))
        cfg = _config_with_settings(build_parser().parse_args(["audit", "--model", "m", "--data", "d", "--out", "o",
                                                               "--boots", "50"]))
        assert cfg.overrides["clean"] == {"n_bootstrap": 50}
    finally:
        register_plugin(saved["clean"])
