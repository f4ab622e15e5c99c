"""The demo's plumbing (phantom -> train -> audit -> report), on a tiny recipe.

The real demo trains InceptionV3 for minutes; here the same code path runs with the small
CNN on a few 64-px phantom images, and a second run reuses the cached data and checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import robustkit.model.training
from robustkit.demo import demo_paths, run_demo

TINY = {
    "arch": "small_cnn", "train_per_class": 8, "test_per_class": 4, "phantom_size": 64, "input_size": 64,
    "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "augment": False,
}


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(robustkit.model.training, "DEMO_RECIPE", TINY)
    out, cache = tmp_path / "report", tmp_path / "cache"
    result = run_demo(out=out, cache=cache, profile="quick", quiet=True)
    paths = demo_paths(cache, 0)
    assert paths["checkpoint"].is_file() and (paths["test"] / "phantom.json").is_file()
    assert len(result.ids) == 3 * TINY["test_per_class"]
    assert (out / "report.html").is_file()
    card = (out / "card.html").read_text(encoding="utf-8")  # the audit card, beside the report
    print(f"card.html of the quick toy demo: {len(card.encode())} bytes")
    assert len(card.encode()) < 200_000 and "robustkit phantom" in card and "synthetic phantom" in card
    saved = json.loads((out / "results.json").read_text())
    assert saved["model"]["fingerprint"] == result.model["fingerprint"]

    trained, executed = [], []
    monkeypatch.setattr(robustkit.model.training, "train", lambda *a, **k: trained.append(1))
    from robustkit.studies.base import Study

    monkeypatch.setattr(Study, "execute", lambda self, *a, **k: executed.append(self.name))
    again = run_demo(out=out, cache=cache, profile="quick", quiet=True)
    assert trained == []  # the cached checkpoint was reused
    assert executed == []  # and no finished study ran again (equal numbers alone would not show it)
    np.testing.assert_equal(again.metrics(), result.metrics())  # NaN == NaN here
