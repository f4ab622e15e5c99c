"""A readable catalogue of the available studies: options per profile and metric glossary.

``robustkit studies`` prints it; the README's metric tables are its ``--markdown`` output.
"""

from __future__ import annotations

import dataclasses

from robustkit.studies import available, get_study
from robustkit.studies.base import PROFILES

__all__ = ["describe_studies"]

_ARROW = {"higher": "higher is better", "lower": "lower is better", "none": "neither (a count or a setting)"}


def _option_rows(name: str) -> list[tuple[str, list[str]]]:
    cls = get_study(name)
    rows = []
    for f in dataclasses.fields(cls.Config):
        values = [repr(getattr(cls.configure(p).config, f.name)) for p in PROFILES]
        rows.append((f.name, values))
    return rows


def describe_studies(*, markdown: bool = False) -> str:
    """Text (or Markdown) listing every study's options by profile and its metrics."""
    out: list[str] = []
    for name in available():
        cls = get_study(name)
        if markdown:
            out += [f"### `{name}`", "", cls.description, ""]
            out += ["| option | " + " | ".join(PROFILES) + " |", "|---|" + "---|" * len(PROFILES)]
            out += [f"| `{k}` | " + " | ".join(f"`{v}`" for v in vals) + " |" for k, vals in _option_rows(name)]
            out += ["", "| metric | meaning | direction |", "|---|---|---|"]
            out += [f"| `{name}.{root}` | {doc} | {_ARROW[d]} |" for root, (doc, d) in cls.metric_docs.items()]
            out.append("")
        else:
            out += [f"{name}: {cls.description}", "  options (" + " / ".join(PROFILES) + "):"]
            out += [f"    {k}: {' / '.join(vals)}" for k, vals in _option_rows(name)]
            out.append("  metrics:")
            out += [f"    {name}.{root}  [{_ARROW[d]}]  {doc}" for root, (doc, d) in cls.metric_docs.items()]
            out.append("")
    return "\n".join(out).rstrip() + "\n"
