"""The README documents every command and every metric (name, meaning, direction)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustkit.cli import build_parser
from robustkit.studies import available, get_study

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("study", available())
def test_every_metric_root_is_documented_with_its_direction(study: str) -> None:
    cls = get_study(study)
    assert cls.description and cls.metric_docs
    for root, (meaning, direction) in cls.metric_docs.items():
        assert meaning and direction in ("higher", "lower", "none")
        assert f"`{study}.{root}`" in README, f"README lacks the metric {study}.{root}"


def test_every_command_is_in_the_readme() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"robustkit {name}" in README, f"README lacks the command {name!r}"


def test_readme_opens_with_the_two_setup_commands() -> None:
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "robustkit demo" in block and "pytest" in block
