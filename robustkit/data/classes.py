"""Class names between the data and the model: class maps, excluded classes, suggestions.

The COVID-19 Radiography Database names its folders ``COVID`` and ``Normal`` while a model
trained on the earlier release says ``COVID-19`` and ``NORMAL``; its fourth class
``Lung_Opacity`` is one a three-class model never saw. A class map renames the data's
classes to the model's (``{"COVID": "COVID-19"}``) and excluded classes are set aside as an
out-of-scope set, never dropped silently.

Example:
    >>> plan = apply_class_map(["COVID", "Lung_Opacity", "Normal"], {"COVID": "COVID-19"},
    ...                        exclude=["Lung_Opacity"])
    >>> plan.rename, plan.excluded
    ({'COVID': 'COVID-19', 'Normal': 'Normal'}, ['Lung_Opacity'])
    >>> suggest_class_map(["COVID", "Normal", "Lung_Opacity"], ["COVID-19", "NORMAL"])
    '`--class-map COVID=COVID-19 --class-map Normal=NORMAL --exclude-class Lung_Opacity`'
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from robustkit.errors import ConfigError, param_error

__all__ = ["ClassPlan", "apply_class_map", "parse_class_map", "suggest_class_map"]


@dataclass(frozen=True)
class ClassPlan:
    """What happens to each class of the data.

    Attributes:
        rename: ``{data name: model name}`` for every kept data class (identity if unmapped).
        excluded: The data classes set aside (out of scope), sorted.
    """

    rename: dict[str, str]
    excluded: list[str]

    @property
    def kept(self) -> list[str]:
        """The class names after renaming, sorted and unique."""
        return sorted(set(self.rename.values()))


def parse_class_map(items: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["COVID=COVID-19", ...]`` (the ``--class-map`` values) or a mapping -> dict.

    Raises:
        ConfigError: naming ``--class-map`` for an item that is not ``DATA=MODEL``.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for text in items:
            src, sep, dst = str(text).partition("=")
            if not sep:
                raise param_error("--class-map", "of the form DATA_CLASS=MODEL_CLASS", text)
            pairs.append((src, dst))
    out: dict[str, str] = {}
    for src, dst in pairs:
        if not isinstance(src, str) or not isinstance(dst, str) or not src.strip() or not dst.strip():
            raise param_error("--class-map", "DATA_CLASS=MODEL_CLASS with two non-empty names", f"{src}={dst}")
        out[src.strip()] = dst.strip()
    return out


def apply_class_map(
    found: Sequence[str],
    class_map: Mapping[str, str] | None = None,
    *,
    exclude: Sequence[str] = (),
    merge: bool = False,
) -> ClassPlan:
    """Check a class map and the excluded classes against the data's classes.

    Args:
        found: The data's class names.
        class_map: ``{data name: model name}``.
        exclude: Data classes to set aside.
        merge: Allow two data classes to map to one model class (said on purpose).

    Raises:
        ConfigError: a map or exclusion naming a class the data does not have, a class both
            mapped and excluded, or (without ``merge``) two data classes sent to one.
    """
    mapping = dict(class_map or {})
    for name in mapping:
        if name not in found:
            raise param_error("--class-map", f"a data class (one of {list(found)})", name)
    for name in exclude:
        if name not in found:
            raise param_error("--exclude-class", f"a data class (one of {list(found)})", name)
        if name in mapping:
            raise param_error("--exclude-class", "a class that is not also in --class-map", name)
    rename = {c: mapping.get(c, c) for c in found if c not in exclude}
    if not merge:
        _check_one_to_one(rename)
    return ClassPlan(rename=rename, excluded=sorted(set(exclude)))


def _check_one_to_one(rename: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    for src, dst in rename.items():
        if dst in seen:
            raise ConfigError(
                f"The '--class-map' parameter must send one data class to each model class. Got "
                f"{seen[dst]!r} and {src!r} both as {dst!r} instead (pass --merge-classes to merge them)."
            )
        seen[dst] = src


def _similar(a: str, b: str) -> bool:
    x, y = a.casefold(), b.casefold()
    return x == y or x.startswith(y) or y.startswith(x)


def suggest_class_map(extra: Sequence[str], missing: Sequence[str]) -> str:
    """The options that would fix a class mismatch, or ``""`` when none is apparent.

    Args:
        extra: Data classes the model does not have.
        missing: Model classes the data does not have.

    Returns:
        e.g. ``"`--class-map COVID=COVID-19 --exclude-class Lung_Opacity`"``: a map for
        each extra class that matches one missing class case-insensitively or by prefix,
        an exclusion for each extra class that matches none.
    """
    parts: list[str] = []
    for name in extra:
        hits = [m for m in missing if _similar(name, m)]
        if len(hits) == 1:
            parts.append(f"--class-map {shlex.quote(f'{name}={hits[0]}')}")
        elif not hits:
            parts.append(f"--exclude-class {shlex.quote(name)}")
    if not any(p.startswith("--class-map") for p in parts):
        return ""
    return "`" + " ".join(sorted(parts, key=lambda p: (p.startswith("--exclude"), p))) + "`"
