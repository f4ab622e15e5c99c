"""Studies and their registry.

Built-in studies are found by name; third-party studies register through the
``robustkit.studies`` entry-point group (each entry point names a :class:`Study` subclass).
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points

from robustkit.errors import param_error
from robustkit.studies.base import PROFILES, AuditContext, Study, StudyConfig

__all__ = ["BUILTIN", "PROFILES", "AuditContext", "Study", "StudyConfig", "available", "get_study", "register"]

#: Built-in studies, in the order an audit runs them.
BUILTIN: dict[str, str] = {
    "clean": "robustkit.studies.clean",
    "perturbation": "robustkit.studies.perturbation",
    "noise": "robustkit.studies.noise",
    "adversarial": "robustkit.studies.adversarial",
    "calibration": "robustkit.studies.calibration",
    "saliency": "robustkit.studies.saliency",
}

_REGISTRY: dict[str, type[Study]] = {}


def register(cls: type[Study]) -> type[Study]:
    """Class decorator: make a study available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no study name")
    _REGISTRY[cls.name] = cls
    return cls


def _builtin_present(name: str) -> bool:
    return importlib.util.find_spec(BUILTIN[name]) is not None


def _load_entry_points() -> None:
    for ep in entry_points(group="robustkit.studies"):
        if ep.name not in _REGISTRY:
            register(ep.load())


def available() -> list[str]:
    """Names of every study that can run here, built-ins first in audit order."""
    names = [n for n in BUILTIN if _builtin_present(n)]
    _load_entry_points()
    return names + sorted(n for n in _REGISTRY if n not in BUILTIN)


def get_study(name: str) -> type[Study]:
    """The study class registered under ``name``; ConfigError naming the choices otherwise."""
    if name not in _REGISTRY and name in BUILTIN and _builtin_present(name):
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        raise param_error("studies", "a list of study names from " + ", ".join(map(repr, available())), name)
    return _REGISTRY[name]
