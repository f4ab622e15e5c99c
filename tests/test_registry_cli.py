"""robustkit without the mlflow extra: the registry options say how to install it, in one line
(these tests run whether or not mlflow is installed; the rest are in test_registry.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from robustkit import cli
from robustkit.results import save_results
from tests.test_compare import make_audit


@pytest.mark.parametrize("args", [
    ["log", "{dir}"],
    ["gate", "{dir}", "--policy", "{policy}", "--baseline", "mlflow:models:/m@champion"],
    ["card", "{dir}", "--baseline", "mlflow:runs:/0123abcd"],
    ["history", "mlflow:models:/m", "--out", "{dir}/h"],
])
def test_without_mlflow_the_option_names_the_extra(tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = save_results(make_audit(np.random.default_rng(0).random(60) < 0.8), tmp_path / "a1")
    (tmp_path / "policy.toml").write_text('[[rule]]\nmetric = "clean.accuracy"\nmax_drop = 0.01\n')
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError, installed or not
    code = cli.main([a.format(dir=folder, policy=tmp_path / "policy.toml") for a in args])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert 'pip install "robustkit[mlflow]"' in err


def test_a_folder_baseline_never_needs_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    from robustkit.registry.baseline import resolve_baseline

    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert resolve_baseline("reports/released") == Path("reports/released")
    assert resolve_baseline(None) is None
