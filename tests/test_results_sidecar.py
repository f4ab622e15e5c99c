"""Lean results: the figures sidecar (figures.npz) beside results.json, and the JSON layout."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

import robustkit
from robustkit.compare import compare
from robustkit.gate import gate
from robustkit.report import render
from robustkit.results import AuditResult, StudyResult, load_results, save_results
from robustkit.sidecar import MIN_ARRAY, SIDECAR_FILE
from tests.test_compare import make_audit

SCHEMA = json.loads((Path(robustkit.__file__).parent / "schema" / "results.schema.json").read_text())
REPO = Path(__file__).resolve().parents[1]


def _png(seed: int, side: int = 24) -> bytes:
    """A PNG encoded by PIL, independently of robustkit's figure code."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _data() -> dict:
    rng = np.random.default_rng(0)
    return {
        "examples": [{"id": "a", "image_png": _b64(_png(1)), "confidence": 0.25},
                     {"id": "b", "image_png": _b64(_png(2))},
                     {"id": "a-again", "image_png": _b64(_png(1))}],  # the same image: stored once
        "uri": "data:image/png;base64," + _b64(_png(3)),
        "grid": rng.random((20, 20)).astype(np.float32),  # float32 in memory, as a view's map
        "mask": (rng.random((20, 20)) > 0.5).astype(np.int64).tolist(),
        "flags": (rng.random((20, 20)) > 0.5).tolist(),  # booleans stay inline
        "mixed": [1, 2.5] * MIN_ARRAY,  # ints and floats: JSON would keep them apart, so inline
        "with_nan": [float("nan")] + [0.5] * MIN_ARRAY,  # 'nan' strings: inline
        "curve": [0.0, 0.5, 1.0],  # small: inline
        "ragged": [[1.0] * 300, [2.0]],  # not a grid: its long row moves alone
        "wrapped": _b64(_png(4))[:40] + "\n" + _b64(_png(4))[40:],  # not canonical base64: inline
        "text": "iVBORw0KGgo but not base64 !",
    }


def _audit(data: dict | None = None) -> AuditResult:
    study = StudyResult(name="viewless", metrics={"m": 0.5, "n": float("nan")}, directions={"m": "higher"},
                        data=_data() if data is None else data, records={"index": np.arange(3)})
    return AuditResult(model={"name": "m", "fingerprint": "sha256:m", "class_names": ["x", "y"], "input_shape": [8, 8, 1]},
                       dataset={"fingerprint": "sha256:d", "n_samples": 3, "class_names": ["x", "y"]},
                       config={"seed": 0, "profile": "quick", "studies": {"viewless": {}}}, environment={},
                       ids=np.asarray(["a", "b", "c"]), labels=np.zeros(3, np.int64), class_names=["x", "y"],
                       studies={"viewless": study}, created="2024-01-01T00:00:00+00:00")


def _as_json_gives(data: dict) -> dict:
    """What results.json held for ``data`` before the sidecar: the inline JSON round trip."""
    return json.loads(json.dumps(StudyResult(name="s", data=data).to_json()["data"]))


def test_round_trip_gives_the_inline_json_values_and_byte_identical_images(tmp_path: Path) -> None:
    save_results(_audit(), tmp_path)
    again = load_results(tmp_path).studies["viewless"]
    expected = _as_json_gives(_data())
    assert again.data == expected
    assert json.dumps(again.data) == json.dumps(expected)  # same Python types too (1 vs 1.0)
    assert again.missing_figures == 0
    assert base64.b64decode(again.data["examples"][1]["image_png"]) == _png(2)
    assert again.data["uri"] == "data:image/png;base64," + _b64(_png(3))
    with np.load(tmp_path / SIDECAR_FILE) as z:  # the PNG bytes as they are, one key per distinct image
        pngs = {z[k].tobytes() for k in z.files if k.startswith("png-")}
        assert pngs == {_png(1), _png(2)} and len(z.files) == 6  # + uri, grid, mask, ragged[0]


def test_results_json_holds_references_not_figures(tmp_path: Path) -> None:
    save_results(_audit(), tmp_path)
    text = (tmp_path / "results.json").read_text()
    obj = json.loads(text)
    data = obj["studies"]["viewless"]["data"]
    assert data["examples"][0]["image_png"] == data["examples"][2]["image_png"]
    assert data["examples"][0]["image_png"]["kind"] == "png" and data["uri"]["kind"] == "png_uri"
    assert data["grid"]["kind"] == data["mask"]["kind"] == "array"
    for key in ("flags", "mixed", "with_nan", "curve", "wrapped", "text"):
        assert not isinstance(data[key], dict), key
    assert data["ragged"][0]["kind"] == "array" and data["ragged"][1] == [2.0]
    assert _b64(_png(2)) not in text and "iVBORw0KGgo" in text  # only the non-canonical one stays
    assert '\n        "m": 0.5,\n' in text  # one metric per line
    assert obj["schema_version"] == "2.1"


def test_a_resaved_2_0_audit_says_2_1_and_an_older_major_is_kept(tmp_path: Path) -> None:
    old = _audit()
    old.schema_version = "2.0"
    save_results(old, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "results.json").read_text())["schema_version"] == "2.1"
    old.schema_version = "1.3"
    save_results(old, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "results.json").read_text())["schema_version"] == "1.3"


def test_saved_results_are_schema_valid_and_a_malformed_reference_is_not(tmp_path: Path) -> None:
    save_results(_audit(), tmp_path)
    obj = json.loads((tmp_path / "results.json").read_text())
    jsonschema.validate(obj, SCHEMA)
    for field, value in (("kind", "jpeg"), ("key", "../etc"), ("extra", 1)):
        bad = copy.deepcopy(obj)
        bad["studies"]["viewless"]["data"]["uri"][field] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_missing_sidecar_loads_keeps_numbers_and_counts_the_figures(tmp_path: Path, damage: str) -> None:
    result = _audit()
    save_results(result, tmp_path)
    if damage == "delete":
        (tmp_path / SIDECAR_FILE).unlink()
    else:
        (tmp_path / SIDECAR_FILE).write_bytes(b"not a zip")
    again = load_results(tmp_path)
    study = again.studies["viewless"]
    assert study.missing_figures == 7  # every reference: 3 examples (2 distinct images), uri, grid, mask, ragged[0]
    assert json.dumps(again.metrics()) == json.dumps(result.metrics())
    assert study.data["curve"] == [0.0, 0.5, 1.0]
    assert study.data["examples"][1]["image_png"]["$sidecar"] == SIDECAR_FILE
    save_results(again, tmp_path / "resaved")  # the references survive a re-save
    assert json.loads((tmp_path / "resaved" / "results.json").read_text()) == json.loads(
        (tmp_path / "results.json").read_text())


def test_an_audit_without_figures_leaves_no_sidecar(tmp_path: Path) -> None:
    save_results(_audit(), tmp_path)
    save_results(_audit({"curve": [0.0, 1.0]}), tmp_path)
    assert not (tmp_path / SIDECAR_FILE).exists()
    assert load_results(tmp_path).studies["viewless"].data == {"curve": [0.0, 1.0]}


@pytest.fixture()
def checkout_templates(monkeypatch: pytest.MonkeyPatch):
    """Render with this checkout's templates (an editable install may point elsewhere)."""
    monkeypatch.setattr(render, "_templates_root", lambda: REPO / "templates")
    render._environment.cache_clear()
    yield
    render._environment.cache_clear()


def _clean_audit_with_examples() -> AuditResult:
    audit = make_audit(np.random.default_rng(0).random(60) < 0.8)
    audit.studies["clean"].data["examples"] = [
        {"id": f"img_{i:03d}", "label": "NORMAL", "pred": "NORMAL", "confidence": 0.9, "image_png": _b64(_png(i))}
        for i in range(3)]
    return audit


def test_report_is_the_same_from_the_sidecar_and_says_when_it_is_missing(tmp_path: Path, checkout_templates) -> None:
    audit = _clean_audit_with_examples()
    save_results(audit, tmp_path)
    inline = render.report_html(audit)
    assert render.report_html(load_results(tmp_path)) == inline
    assert inline.count('<img src="data:image/png;base64,') >= 3
    (tmp_path / SIDECAR_FILE).unlink()
    page = render.report_html(load_results(tmp_path))
    assert "could not be built" not in page and 'src="None"' not in page and "$sidecar" not in page
    notes = re.findall(r"(\d+) figures? of this study not shown", page)
    assert notes == ["3"]
    assert page.count('<img src="data:image/png;base64,') == inline.count('<img src="data:image/png;base64,') - 3


def test_compare_and_gate_do_not_need_the_sidecar(tmp_path: Path) -> None:
    base, cand = _clean_audit_with_examples(), make_audit(np.random.default_rng(1).random(60) < 0.7, name="c")
    save_results(base, tmp_path / "base")
    save_results(cand, tmp_path / "cand")
    with_figures = compare([tmp_path / "base", tmp_path / "cand"], n_boot=50).to_json()
    (tmp_path / "base" / SIDECAR_FILE).unlink()
    assert compare([tmp_path / "base", tmp_path / "cand"], n_boot=50).to_json() == with_figures
    report = gate(tmp_path / "base", {"judge": "point", "rule": [{"metric": "clean.accuracy", "min": 0.5}]})
    assert report.passed
