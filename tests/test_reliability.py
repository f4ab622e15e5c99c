"""Reliability end to end: determinism, bad models, bad datasets, bad configs, hostile strings, skips.

Everything goes through the public entry points (``robustkit.runner.audit`` and the CLI's
``main``) on the toy fixtures of conftest.py. Input errors must leave the CLI as one line
``robustkit: error: ...`` with exit code 2 that names the file or key and the expectation.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from robustkit.cli import main
from robustkit.data.loader import load_dataset
from robustkit.errors import ModelError
from robustkit.model.adapter import load_model
from robustkit.runner import audit
from robustkit.studies import available, get_study
from tests.conftest import CLASSES, SIZE, build_toy_model, strip_volatile

HOSTILE_CLASSES = ["<script>alert(1)", '"><img src=x onerror=alert(1)>', "a&b 'q' <b>"]
HOSTILE_FILES = ["<script>alert(2)", '" onmouseover="alert(3)', "x'><svg onload=alert(4)>"]
# Small per-study sample caps so that the determinism check stays quick on two cores.
QUICK_CAPS: dict[str, dict[str, Any]] = {
    "adversarial": {"max_samples": 6},
    "saliency": {"max_samples": 6},
    "perturbation": {"max_samples": 9},
    "noise": {"max_samples": 9},
    "calibration": {"max_samples": 36},
}


# --------------------------------------------------------------------------- helpers


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main([*argv, "-q"])
    _, err = capsys.readouterr()
    return code, err


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("robustkit: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _audit_cli(capsys, model: Path, data: Path, out: Path, *extra: str) -> tuple[int, str]:
    return _cli(capsys, "audit", "--model", str(model), "--data", str(data), "--out", str(out),
                "--studies", "clean", *extra)



class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser.tags


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _png(path: Path, value: float = 0.5, size: int = SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), int(255 * value), dtype=np.uint8)).save(path, format="PNG")
    return path


# --------------------------------------------------------------------------- determinism


@pytest.mark.slow
@pytest.mark.parametrize("study", available())
def test_same_seed_gives_identical_results_json_and_records(
    study: str, toy_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    config = {study: QUICK_CAPS[study]} if study in QUICK_CAPS else None
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        res = audit(toy_model, toy_data, studies=[study], profile="quick", seed=7, out=out,
                    config=config, report=False)
        assert all(s.status == "ok" for s in res.studies.values()), {
            n: s.error for n, s in res.studies.items() if s.status != "ok"}
        runs.append(out)
    a, b = (json.loads((out / "results.json").read_text(encoding="utf-8")) for out in runs)
    assert a["created"] and a["studies"]["clean"]["seconds"] >= 0  # the volatile keys exist
    assert strip_volatile(a) == strip_volatile(b)
    with np.load(runs[0] / "records.npz") as ra, np.load(runs[1] / "records.npz") as rb:
        assert sorted(ra.files) == sorted(rb.files)
        for key in ra.files:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=key)


# --------------------------------------------------------------------------- bad models


def _broken_model(path: Path, value: float) -> Path:
    """The toy CNN with its final Dense kernel filled with ``value`` (NaN or inf)."""
    model = build_toy_model()
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.full_like(kernel, value), bias])
    model.save(path)
    path.with_name(path.name.replace(".keras", ".meta.json")).write_text(
        json.dumps({"class_names": list(CLASSES)}))
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_outputs_on_clean_data_stop_the_audit(
    value: float, capsys, toy_data: Path, tmp_path: Path
) -> None:
    path = _broken_model(tmp_path / "broken_head.keras", value)
    with pytest.raises(ModelError, match=r"broken_head\.keras: expected finite outputs on the clean data"):
        audit(path, toy_data, studies=["clean"], out=tmp_path / "api", report=False)
    assert not (tmp_path / "api" / "results.json").exists()  # nothing half-true is written
    code, err = _audit_cli(capsys, path, toy_data, tmp_path / "cli")
    assert code == 2
    line = _error_line(err)
    assert "broken_head.keras" in line and "NaN or inf" in line


@pytest.mark.parametrize(
    "head",
    ["rank3", "one_output"],
)
def test_a_checkpoint_whose_output_is_not_a_class_vector_is_refused(
    head: str, capsys, toy_data: Path, tmp_path: Path
) -> None:
    from robustkit._tf import keras

    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 3)(inp))
    if head == "rank3":
        out = keras.layers.Reshape((3, 2))(x)  # (N, 3, 2)
    else:
        out = keras.layers.Dense(1, activation="sigmoid")(x)  # (N, 1): a binary score
    path = tmp_path / f"{head}.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(ModelError, match=rf"{head}\.keras: expected a classifier whose output is a vector"):
        load_model(path)
    code, err = _audit_cli(capsys, path, toy_data, tmp_path / "o")
    assert code == 2 and f"{head}.keras" in _error_line(err)


# --------------------------------------------------------------------------- bad datasets


def _no_class_folders(root: Path, toy: Path) -> tuple[Path, str]:
    for k in range(3):
        _png(root / f"x{k}.png")
    return root, "expected class folders"


def _empty_class(root: Path, toy: Path) -> tuple[Path, str]:
    _copy(toy, root)
    for f in (root / "NORMAL").iterdir():
        f.unlink()
    (root / "NORMAL" / "notes.txt").write_text("no images here")
    return root, "class 'NORMAL'"


def _class_not_in_model(root: Path, toy: Path) -> tuple[Path, str]:
    _copy(toy, root)
    _png(root / "Bacterial" / "b1.png")
    return root, "Bacterial"


def _model_class_not_in_data(root: Path, toy: Path) -> tuple[Path, str]:
    _copy(toy, root)
    shutil.rmtree(root / "Viral Pneumonia")
    shutil.rmtree(root / "masks" / "Viral Pneumonia")
    return root, "Viral Pneumonia"


def _mask_size_mismatch(root: Path, toy: Path) -> tuple[Path, str]:
    """A mask of another aspect ratio (one of the same ratio is resized to its image)."""
    _copy(toy, root)
    path = root / "masks" / "COVID-19" / "COVID-19_004.png"
    Image.fromarray(np.full((SIZE, SIZE // 2), 255, dtype=np.uint8)).save(path, format="PNG")
    return root, "COVID-19_004.png"


def _duplicate_ids(root: Path, toy: Path) -> tuple[Path, str]:
    _copy(toy, root)
    with Image.open(root / "NORMAL" / "NORMAL_001.png") as im:
        im.save(root / "NORMAL" / "NORMAL_001.jpg", format="JPEG")
    return root, "NORMAL/NORMAL_001"


@pytest.mark.parametrize(
    "make",
    [_no_class_folders, _empty_class, _class_not_in_model, _model_class_not_in_data,
     _mask_size_mismatch, _duplicate_ids],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_bad_datasets_exit_2_with_one_line(make, capsys, toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    data, needle = make(tmp_path / "data", toy_data)
    code, err = _audit_cli(capsys, toy_model, data, tmp_path / "out")
    assert code == 2
    line = _error_line(err)
    assert needle in line and "expected" in line, line
    assert not (tmp_path / "out" / "results.json").exists()


# --------------------------------------------------------------------------- bad configs


def _study_field(study: str, prefix: str) -> str:
    """The first config field of a registered study whose name starts with ``prefix``."""
    if study not in available():
        pytest.skip(f"study {study!r} is not registered yet")
    names = [f.name for f in dataclasses.fields(get_study(study).Config) if f.name.startswith(prefix)]
    if not names:
        pytest.skip(f"study {study!r} has no config field starting with {prefix!r}")
    return names[0]


def _config_case(case: str) -> tuple[str, tuple[str, ...]]:
    """TOML text and the substrings the one-line error must contain (key and expected form)."""
    if case == "unknown_top_key":
        return "seeed = 1\n", ("'seeed'", "expected one of")
    if case == "unknown_study_key":
        return "[clean]\nn_boot = 5\n", ("'n_boot'", "expected one of", "n_bootstrap")
    if case == "wrong_type":
        return 'seed = "zero"\n', ("'seed'", "must be an int in [0, inf)", "'zero'")
    if case == "wrong_type_in_study":
        return '[clean]\nn_bootstrap = "many"\n', ("'n_bootstrap'", "must be an int")
    if case == "zero_limit":
        return "limit = 0\n", ("'limit'", "must be an int in [1, inf)", "Got 0")
    if case == "zero_max_samples":
        return "[clean]\nmax_samples = 0\n", ("'max_samples'", "must be an int in [1, inf)", "Got 0")
    if case == "negative_epsilon":
        key = _study_field("adversarial", "epsilons")
        return f"[adversarial]\n{key} = [-0.01]\n", (f"'{key}'", "must be", "-0.01")
    if case == "severity_7":
        key = _study_field("perturbation", "severities")
        return f"[perturbation]\n{key} = [7]\n", (f"'{key}'", "must be", "7")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["unknown_top_key", "unknown_study_key", "wrong_type", "wrong_type_in_study", "zero_limit",
     "zero_max_samples", "negative_epsilon", "severity_7"],
)
def test_bad_configs_name_the_key_and_the_expected_form(
    case: str, capsys, toy_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    text, needles = _config_case(case)
    path = tmp_path / "audit.toml"
    path.write_text(text)
    code, err = _audit_cli(capsys, toy_model, toy_data, tmp_path / "out", "--config", str(path))
    assert code == 2
    line = _error_line(err)
    for needle in needles:
        assert needle in line, (needle, line)


def test_zero_samples_on_the_command_line(capsys, toy_model: Path, toy_data: Path, tmp_path: Path) -> None:
    code, err = _audit_cli(capsys, toy_model, toy_data, tmp_path / "out", "--limit", "0")
    assert code == 2
    assert "The 'limit' parameter must be an int in [1, inf). Got 0 instead." in _error_line(err)


# --------------------------------------------------------------------------- hostile strings


@pytest.mark.slow
def test_hostile_class_and_file_names_give_an_inert_report(capsys, tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for k, cls in enumerate(HOSTILE_CLASSES):
        for j, stem in enumerate(HOSTILE_FILES):
            img = np.clip(0.2 + 0.2 * k + 0.05 * rng.standard_normal((SIZE, SIZE)), 0, 1)
            (data / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255).astype(np.uint8)).save(data / cls / f"{stem}{j}.png")
    model_path = tmp_path / '"><script>model.keras'
    build_toy_model().save(model_path)  # no metadata: the class names come from the folders
    out = tmp_path / "out"
    code, err = _audit_cli(capsys, model_path, data, out, "--config", str(_write_quick_clean(tmp_path)))
    assert code == 0, err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["class_names"] == sorted(HOSTILE_CLASSES)  # the names survive, unchanged
    html = (out / "report.html").read_text(encoding="utf-8")
    tags = _tags(html)
    assert "script" not in [t for t, _ in tags]
    assert "<script" not in html.lower()
    handlers = [(t, k) for t, attrs in tags for k in attrs if k.lower().startswith("on")]
    assert handlers == []
    csp = [a.get("content") for t, a in tags
           if t == "meta" and (a.get("http-equiv") or "").lower() == "content-security-policy"]
    assert len(csp) == 1 and "script-src 'none'" in (csp[0] or "") and "default-src 'none'" in (csp[0] or "")
    assert all((a.get("src") or "data:").startswith("data:") for t, a in tags)
    assert "&lt;script&gt;alert(1)" in html  # shown, escaped
    assert "onerror=alert(1)&gt;" in html


def _write_quick_clean(folder: Path) -> Path:
    path = folder / "quick.toml"
    path.write_text('profile = "quick"\n[clean]\nn_bootstrap = 20\n')
    return path


# --------------------------------------------------------------------------- --on-bad-input skip


def test_skipped_files_are_listed_and_change_the_fingerprint(
    capsys, toy_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    data = _copy(toy_data, tmp_path / "data")
    bad = data / "NORMAL" / "NORMAL_zz_broken.png"
    bad.write_bytes(b"")
    out = tmp_path / "out"
    code, err = _audit_cli(capsys, toy_model, data, out, "--on-bad-input", "skip",
                           "--config", str(_write_quick_clean(tmp_path)))
    assert code == 0, err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    skipped = results["dataset"]["skipped"]
    assert skipped == [{"path": "NORMAL/NORMAL_zz_broken.png",
                        "reason": "expected a PNG, JPEG, BMP, TIFF or DICOM image, got a zero-byte file."}]
    assert results["n_samples"] == 36
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "NORMAL_zz_broken.png" in html
    bad.unlink()
    without = load_dataset(data)
    assert without.skipped == [] and len(without) == 36
    assert results["dataset"]["fingerprint"] != without.fingerprint  # the fingerprint says so
    assert load_dataset(toy_data).fingerprint == without.fingerprint
