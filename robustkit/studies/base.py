"""The study protocol: a per-sample ``map`` and a pure ``reduce``, a typed config with profiles.

A study declares its ``name``, a frozen dataclass ``Config`` with defaults, ``profiles``
(``quick``, ``standard``, ``full``) that override those defaults, what its metrics mean
(``metric_docs``: root name -> (meaning, direction)), and implements two methods:

* :meth:`Study.map` takes a batch of samples (a :class:`~robustkit.data.Dataset` of a few
  samples) and returns per-sample records: a dict of arrays whose first axis is the batch.
  It is the only code that calls the model. Every random draw in it is keyed by
  ``(seed, study, condition, sample id)`` (:meth:`AuditContext.rng`), never by a batch
  position, so any split of the samples into shards and batches gives the same records.
* :meth:`Study.prepare` (optional) runs once on the driver before the maps, for what
  depends on all the study's samples (a calibration split); it keys everything by sample id.
* :meth:`Study.extra_data` (optional) returns samples besides the audit's that the study
  needs mapped too (the OOD study's reference and OOD sets, built in ``prepare``); the
  engine maps them with the same :meth:`Study.map` and hands their records to ``reduce``
  under ``EXTRA + name`` keys (:func:`split_extra` separates them), in that dataset's order.
* :meth:`Study.reduce` takes the records of all the study's samples (in sample order) and the
  samples' dataset and returns the :class:`StudyResult`: metrics, intervals, tables, checks.
  Pure numpy/scipy over the records (it may read the data side, never the model).

The fixed parts live here once: :meth:`Study.execute` (the in-process engine: select the
study's samples, map them in batches, merge, reduce, stamp), :func:`merge_records` (what a
distributed engine uses to put shards back in sample order) and :meth:`Study.finalize`
(timing, config, directions and documentation stamped on the result). Configuration is
validated once, in :meth:`Study.configure`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import types
import typing
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from robustkit.errors import ConfigError, check_range, param_error
from robustkit.results import AuditResult, StudyResult
from robustkit.task import Task

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["EXTRA", "PROFILES", "AuditContext", "Records", "Study", "StudyConfig", "log_phases", "merge_records",
           "split_extra"]

#: One DEBUG line per study run: its map and reduce seconds (``phases`` on the record).
log = logging.getLogger(__name__)


def log_phases(study: str, n: int, map_s: float, reduce_s: float) -> None:
    """Tell a study's map time (prepare and every batch; on Ray, summed over the workers) and its
    reduce time apart: a DEBUG line with ``phases`` = ``{"study", "n", "map_s", "reduce_s"}``."""
    log.debug("study %s on %d samples: map %.2f s, reduce %.2f s", study, n, map_s, reduce_s,
              extra={"phases": {"study": study, "n": n, "map_s": map_s, "reduce_s": reduce_s}})


#: Per-sample records: name -> array whose first axis is the sample.
Records = dict[str, np.ndarray]

PROFILES = ("quick", "standard", "full")

#: prefix of the record keys that hold :meth:`Study.extra_data`'s records in ``reduce``
EXTRA = "extra/"


def split_extra(records: Records) -> tuple[Records, Records]:
    """``(audit records, extra records)``: the second without the :data:`EXTRA` prefix."""
    extra = {k[len(EXTRA):]: v for k, v in records.items() if k.startswith(EXTRA)}
    return {k: v for k, v in records.items() if not k.startswith(EXTRA)}, extra


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
    #: the audited model's description (``ModelAdapter.describe()``), for ``reduce``s that
    #: need its name, input shape or output kind without touching the model
    model_info: dict[str, Any] = field(default_factory=dict)
    #: the audit's task model (outputs, decision rule, critical class), set by the runner;
    #: None only for a study run outside an audit (its critical numbers are then not measured)
    task: Task | None = None

    @property
    def exclusive(self) -> bool:
        """One label per image (:attr:`Task.exclusive`); a context built without a task (a test,
        a study run by hand) reads the model's output kind instead. The one home of this reading."""
        if self.task is not None:
            return self.task.exclusive
        return self.model_info.get("output_kind") != "multilabel"

    @property
    def critical_index(self) -> int | None:
        """The critical output's index (:attr:`Task.critical_index`), or None when not set."""
        return None if self.task is None else self.task.critical_index

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """The model's input ``(H, W, C)``, from :attr:`model_info`."""
        shape = self.model_info.get("input_shape")
        return (int(shape[0]), int(shape[1]), int(shape[2])) if shape else None

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
    #: whether the study scores multi-label models (per finding, from ``data.targets``); a
    #: multi-label audit leaves the others out and says so
    multilabel: ClassVar[bool] = False
    #: the profiles whose default study set (no ``studies`` given) includes this study; a
    #: study left out of a profile still runs there when named
    default_profiles: ClassVar[tuple[str, ...]] = PROFILES

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config if config is not None else self.Config()
        try:
            self.config.validate()
        except ConfigError as exc:
            raise _placed(exc, self.name) from None

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

    def execute(
        self, model: ModelAdapter, data: Dataset, ctx: AuditContext, *, batch_size: int | None = None
    ) -> StudyResult:
        """Run the study on its samples of ``data`` in this process and return its stamped result.

        ``batch_size`` (default: the model's) is the number of samples per :meth:`map` call;
        it changes nothing in the result.
        """
        start = time.perf_counter()
        ctx.model_info = model.describe()
        index = self.select(data, ctx)
        sub = data.subset(index)
        if type(self).run is not Study.run:  # a study written against the older one-call protocol
            result = self.run(model, sub, ctx)
        else:
            self.prepare(sub, ctx)
            records = self.map_all(model, sub, ctx, batch_size=batch_size)
            records.update(self.map_extra(model, ctx, batch_size=batch_size))
            mapped = time.perf_counter()
            result = self.reduce(records, sub, ctx)
            log_phases(self.name, len(sub), mapped - start, time.perf_counter() - mapped)
        return self.finalize(result, index, time.perf_counter() - start)

    def map_all(
        self, model: ModelAdapter, data: Dataset, ctx: AuditContext, *, batch_size: int | None = None
    ) -> Records:
        """:meth:`map` over ``data`` in batches of ``batch_size``, merged in sample order."""
        bs = int(batch_size or model.batch_size)
        parts = []
        with ctx.bar(len(data), self.name) as bar:
            for start in range(0, len(data), bs):
                pos = np.arange(start, min(len(data), start + bs))
                parts.append((pos, self.map(model, data.subset(pos), ctx)))
                bar.update(len(pos))
        return merge_records(parts, len(data), study=self.name)

    def map_extra(self, model: ModelAdapter, ctx: AuditContext, *, batch_size: int | None = None) -> Records:
        """:meth:`map` over :meth:`extra_data` (after ``prepare``), keys prefixed with :data:`EXTRA`."""
        extra = self.extra_data(ctx)
        if extra is None:
            return {}
        return {EXTRA + k: v for k, v in self.map_all(model, extra, ctx, batch_size=batch_size).items()}

    def finalize(self, result: StudyResult, index: np.ndarray, seconds: float) -> StudyResult:
        """Stamp name, config, timing, directions and documentation on a reduced result."""
        result.name = self.name
        result.config = self.config_dict()
        result.seconds = seconds
        declared: dict[str, Any] = {k: v[1] for k, v in self.metric_docs.items()}
        result.directions = declared | result.directions
        result.data.setdefault("description", self.description)
        result.data.setdefault("metric_docs", {k: v[0] for k, v in self.metric_docs.items()})
        result.data.setdefault("headline", [h for h in self.headline if h in result.metrics])
        if result.records:
            result.records["index"] = np.asarray(index, dtype=np.int64)
        return result

    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """Optional: decide, on the driver and before any ``map``, what depends on all of the
        study's samples (a split); the study object, with that state, then goes to every
        worker. It must depend on the samples' ids, labels and the seed only."""

    def extra_data(self, ctx: AuditContext) -> Dataset | None:
        """Optional: samples besides the audit's that :meth:`map` must see (built by
        ``prepare``; ids distinct from the audit's). Their records reach ``reduce`` under
        ``EXTRA + name`` keys, in this dataset's order; None (the default) for none."""
        return None

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> Records:
        """Per-sample records of ``batch`` (arrays with ``len(batch)`` rows): the model work."""
        raise NotImplementedError(f"study {self.name!r} implements neither map/reduce nor run")

    def reduce(self, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
        """The result from the records of every sample of ``data`` (in its order); no model."""
        raise NotImplementedError(f"study {self.name!r} implements neither map/reduce nor run")

    def select(self, data: Dataset, ctx: AuditContext) -> np.ndarray:
        """Positions of this study's samples in ``data`` (seeded and stratified)."""
        n = self.config.max_samples
        if n is None or n >= len(data):
            return np.arange(len(data), dtype=np.int64)
        n = max(n, len(np.unique(data.labels)))  # at least one image of every class
        return data.subsample_positions(n, seed=ctx.seed_for("select", self.name))

    def run(self, model: ModelAdapter, data: Dataset, ctx: AuditContext) -> StudyResult:
        """The older one-call protocol (not shardable): a study that overrides it runs whole."""
        return self.reduce(self.map_all(model, data, ctx), data, ctx)


def merge_records(parts: list[tuple[np.ndarray, Records]], n: int, *, study: str = "") -> Records:
    """Put per-batch records back in sample order.

    Args:
        parts: ``(positions, records)`` per batch, in any order; ``positions`` are the
            batch's sample positions ``(B,)`` and every record array has ``B`` rows.
        n: the number of samples; every position in ``0..n-1`` must appear exactly once.
        study: the study's name, for error messages.

    Returns:
        One array per record name with ``n`` rows, row ``i`` from the sample at position ``i``.
    """
    positions = np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in parts]) if parts else np.zeros(0, np.int64)
    if len(positions) != n or not np.array_equal(np.sort(positions), np.arange(n)):
        raise AssertionError(f"study {study!r}: batches cover {len(positions)} positions, expected each of 0..{n - 1} once")
    order = np.argsort(positions, kind="stable")
    names = list(parts[0][1]) if parts else []
    merged: Records = {}
    for name in names:
        chunks = []
        for pos, rec in parts:
            arr = np.asarray(rec[name])
            if arr.shape[:1] != (len(pos),):
                raise AssertionError(f"study {study!r}: record {name!r} has {arr.shape[:1]} rows for a batch of {len(pos)}")
            chunks.append(arr)
        merged[name] = np.concatenate(chunks)[order]
    return merged


def _placed(exc: ConfigError, study: str) -> ConfigError:
    """The error in the one form, naming the study ("The 'x' parameter of study 'y' must be ...")."""
    text = str(exc)
    head, sep, tail = text.partition(" parameter must be ")
    if sep and head.startswith("The '"):
        return ConfigError(f"{head} parameter of study {study!r} must be {tail}")
    return exc


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
