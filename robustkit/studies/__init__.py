"""Studies and their registry.

Every study has one record in :mod:`robustkit.plugins` (study class, report view and
template, paired-statistics metadata, exports); this registry loads the study classes
those records name, lazily. Third-party studies come through the ``robustkit.studies``
entry-point group (a :class:`robustkit.plugins.StudyPlugin`, or a bare :class:`Study`
subclass); :func:`register` still adds a class directly.
"""

from __future__ import annotations

import importlib.util

from robustkit import plugins as _plugins
from robustkit.errors import param_error
from robustkit.studies.base import PROFILES, AuditContext, Study, StudyConfig

__all__ = ["BUILTIN", "PROFILES", "AuditContext", "Study", "StudyConfig", "available", "get_study", "register"]

#: Built-in studies (name -> module), in the order an audit runs them; from the plug-in table.
BUILTIN: dict[str, str] = {p.name: p.study.partition(":")[0] for p in _plugins.BUILTIN_PLUGINS}

_REGISTRY: dict[str, type[Study]] = {}


def register(cls: type[Study]) -> type[Study]:
    """Class decorator: make a study available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no study name")
    _REGISTRY[cls.name] = cls
    return cls


def _builtin_present(name: str) -> bool:
    return importlib.util.find_spec(BUILTIN[name]) is not None


def available() -> list[str]:
    """Names of every study that can run here, built-ins first in audit order."""
    names = [n for n in BUILTIN if _builtin_present(n)]
    extra = set(_plugins.plugins()) | set(_REGISTRY)
    return names + sorted(n for n in extra if n not in BUILTIN)


def get_study(name: str) -> type[Study]:
    """The study class registered under ``name``; ConfigError naming the choices otherwise."""
    if name not in _REGISTRY:
        record = _plugins.plugin(name)
        if record is not None and (name not in BUILTIN or _builtin_present(name)):
            cls = record.load_study()
            if not (isinstance(cls, type) and issubclass(cls, Study)):
                raise param_error(f"plug-in {name!r}", "a Study subclass", record.study)
            _REGISTRY.setdefault(name, cls)
    if name not in _REGISTRY:
        raise param_error("studies", "a list of study names from " + ", ".join(map(repr, available())), name)
    return _REGISTRY[name]
