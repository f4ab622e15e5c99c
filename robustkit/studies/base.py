"""The study protocol: one small base class, a typed config with profiles, one ``run``.

A study declares its ``name``, a frozen dataclass ``Config`` with defaults, ``profiles``
(``quick``, ``standard``, ``full``) that override those defaults, what its metrics mean
(``metric_docs``: root name -> (meaning, direction)), and implements :meth:`Study.run`.
The public :meth:`Study.execute` is fixed: it picks the study's samples, times the run,
stamps config, directions and documentation on the result, and records which samples
the per-sample arrays cover. Configuration is validated once, in :meth:`Study.configure`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from robustkit.errors import ConfigError, check_range, param_error
from robustkit.results import AuditResult, StudyResult

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["PROFILES", "AuditContext", "Study", "StudyConfig"]

PROFILES = ("quick", "standard", "full")


@dataclass(frozen=True)
class StudyConfig:
    """Options every study has.

    Attributes:
        max_samples: audit at most this many samples (a seeded, stratified subsample);
            ``None`` uses every sample of the audit.
    """

    max_samples: int | None = None

    def validate(self) -> None:
        """Check values (types are checked by :meth:`Study.configure`); raise ConfigError."""
        if self.max_samples is not None:
            check_range("max_samples", self.max_samples, low=1, integer=True)


ProgressFactory = Callable[..., Any]


@dataclass
class AuditContext:
    """What the audit runner gives every study: seeds, progress bars, shared caches."""

    seed: int = 0
    quiet: bool = True
    progress: ProgressFactory | None = None
    reference: AuditResult | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def rng(self, *keys: object) -> np.random.Generator:
        """A generator seeded by the audit seed and ``keys`` (stable across runs and machines)."""
        digest = hashlib.sha256(repr(keys).encode()).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])

    def seed_for(self, *keys: object) -> int:
        return int(self.rng(*keys).integers(0, 2**31 - 1))

    def bar(self, total: int, desc: str) -> Any:
        """A progress bar (tqdm-like: ``update(n)``, context manager); silent when quiet."""
        if self.progress is None or self.quiet:
            return _NullBar()
        return self.progress(total=total, desc=desc)

    def clean_logits(self, model: ModelAdapter, data: Dataset) -> np.ndarray:
        """Clean logits ``(N, K)`` of ``data``'s samples, computed once per audit and reused."""
        store: dict[str, np.ndarray] = self.cache.setdefault("clean_logits", {})
        missing = [i for i, sid in enumerate(data.ids) if sid not in store]
        if missing:
            h, w, c = model.input_shape
            with self.bar(len(missing), "clean pass") as bar:
                for idx, x in data.batches(model.batch_size, size=(h, w), channels=c, indices=np.asarray(missing)):
                    z = model.logits(x)
                    for j, row in zip(idx, z):
                        store[str(data.ids[j])] = row
                    bar.update(len(idx))
        return np.stack([store[str(sid)] for sid in data.ids]).astype(np.float32)


class _NullBar:
    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str) -> None:
        return None


C = TypeVar("C", bound=StudyConfig)


class Study(ABC, Generic[C]):
    """Base class of every study. Subclasses set the class attributes and implement ``run``.

    ``Study[MyConfig]`` types ``self.config`` as ``MyConfig``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[Any]] = StudyConfig
    profiles: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    metric_docs: ClassVar[Mapping[str, tuple[str, str]]] = {}
    headline: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config if config is not None else self.Config()
        self.config.validate()

    def __repr__(self) -> str:
        defaults = self.Config()
        changed = [
            f"{f.name}={getattr(self.config, f.name)!r}"
            for f in dataclasses.fields(self.config)
            if getattr(self.config, f.name) != getattr(defaults, f.name)
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    @classmethod
    def configure(cls, profile: str = "standard", overrides: Mapping[str, Any] | None = None) -> Study[Any]:
        """Build the study from its defaults, a profile, then user overrides (validated)."""
        if profile not in PROFILES:
            raise param_error("profile", "one of " + ", ".join(map(repr, PROFILES)), profile)
        values = dict(cls.profiles.get(profile, {}))
        values.update(overrides or {})
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        hints = typing.get_type_hints(cls.Config)
        for key, value in list(values.items()):
            if key not in fields:
                raise ConfigError(
                    f"Unknown key {key!r} in the config of study {cls.name!r}; expected one of "
                    f"{', '.join(sorted(fields))}."
                )
            values[key] = _coerce(key, value, hints[key], cls.name)
        return cls(cls.Config(**values))

    def config_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in dataclasses.asdict(self.config).items()}

    def execute(self, model: ModelAdapter, data: Dataset, ctx: AuditContext) -> StudyResult:
        """Run the study on its samples of ``data`` and return its stamped result."""
        start = time.perf_counter()
        index = self.select(data, ctx)
        result = self.run(model, data.subset(index), ctx)
        result.name = self.name
        result.config = self.config_dict()
        result.seconds = time.perf_counter() - start
        declared: dict[str, Any] = {k: v[1] for k, v in self.metric_docs.items()}
        result.directions = declared | result.directions
        result.data.setdefault("description", self.description)
        result.data.setdefault("metric_docs", {k: v[0] for k, v in self.metric_docs.items()})
        result.data.setdefault("headline", [h for h in self.headline if h in result.metrics])
        if result.records:
            result.records["index"] = index.astype(np.int64)
        return result

    def select(self, data: Dataset, ctx: AuditContext) -> np.ndarray:
        """Positions of this study's samples in ``data`` (seeded and stratified)."""
        n = self.config.max_samples
        if n is None or n >= len(data):
            return np.arange(len(data), dtype=np.int64)
        n = max(n, len(np.unique(data.labels)))  # at least one image of every class
        return data.subsample_positions(n, seed=ctx.seed_for("select", self.name))

    @abstractmethod
    def run(self, model: ModelAdapter, data: Dataset, ctx: AuditContext) -> StudyResult:
        """Compute the study on ``data`` (already this study's samples)."""


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _coerce(key: str, value: Any, hint: Any, study: str) -> Any:
    """Check ``value`` against the field's type hint; lists become tuples, ints become floats."""
    where = f"study {study!r}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(key, value, a, study)
            except ConfigError as exc:
                errors.append(exc)
        raise param_error(key, " or ".join(_type_name(a) for a in inner), value, where=where)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]  # a scalar becomes a list
        elem = args[0] if args else Any
        return tuple(_coerce(key, v, elem, study) for v in items)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise param_error(key, "a number", value, where=where)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise param_error(key, "an int", value, where=where)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise param_error(key, "true or false", value, where=where)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise param_error(key, "a string", value, where=where)
        return value
    return value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}s"
    return {float: "a number", int: "an int", bool: "true or false", str: "a string"}.get(hint, str(hint))
