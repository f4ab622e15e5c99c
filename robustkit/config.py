"""The audit config: a TOML file (or dict) of run options and per-study overrides.

```toml
seed = 0
profile = "quick"             # quick | standard | full
limit = 300                   # audit a seeded, stratified subsample of this size
batch_size = 32
studies = ["clean", "noise"]  # default: every available study
masks = "lung"                # what the data's masks/ files are: lesion | lung | none
exclude_classes = ["Lung_Opacity"]  # data classes set aside (out of scope)
strict_metadata = false       # true: an image without a row in its class's metadata sheet
                              # stops the audit (default: its value there is "missing")
threshold = 0.5               # multi-label: one decision threshold for every finding
                              # (default: chosen per finding on a calibration half)
critical_class = "COVID-19"   # the output whose misses cost most (default: none; the
                              # numbers that need one say they were not measured)

[classes]                     # data class name -> model class name
COVID = "COVID-19"
Normal = "NORMAL"

[model]                       # how the checkpoint is read (default: its .meta.json)
preprocess = "torch"          # unit | 255 | tf | torch | caffe (keras.applications' modes)
model_classes = ["NORMAL", "COVID-19", "Viral Pneumonia"]  # the outputs, in order
# also: input_mean, input_std (lists), channel_order (rgb | bgr | gray), input_size ([H, W]),
# input_probe (true | false), output

[noise]                       # overrides of one study's config
max_samples = 100

[engine]                      # where the studies' maps run (default: in this process)
name = "ray"                  # inprocess | ray
workers = 4                   # also: address, cpus_per_worker, gpus_per_worker
```
Unknown keys, wrong types and out-of-range values raise ConfigError naming the key.
No TensorFlow here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustkit.errors import ConfigError, check_range, param_error
from robustkit.studies.base import PROFILES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["AuditConfig", "DataIntake", "EngineSpec", "ModelSpec", "group_options", "load_config", "parse_setting", "read_toml"]

_TOP_KEYS = {"seed", "profile", "limit", "batch_size", "studies", "masks", "exclude_classes",
             "merge_classes", "threshold", "critical_class", "strict_metadata"}
_CLASSES = "classes"
#: the ``[model]`` table: how the checkpoint is read (the same keys as its ``.meta.json``)
_MODEL_KEYS = ("preprocess", "input_mean", "input_std", "channel_order", "model_classes", "input_size",
               "input_probe", "output")
_MASK_KINDS = ("lesion", "lung", "none")


@dataclass(frozen=True)
class AuditConfig:
    """Run options of one audit (study options live in ``overrides``)."""

    seed: int = 0
    profile: str = "standard"
    limit: int | None = None
    batch_size: int | None = None
    studies: tuple[str, ...] | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    class_map: dict[str, str] = field(default_factory=dict)
    exclude_classes: tuple[str, ...] = ()
    merge_classes: bool = False
    masks: str | None = None
    threshold: float | None = None
    critical_class: str | None = None
    strict_metadata: bool = False
    model: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_range("seed", self.seed, low=0, integer=True)
        if self.profile not in PROFILES:
            raise param_error("profile", "one of " + ", ".join(map(repr, PROFILES)), self.profile)
        if self.limit is not None:
            check_range("limit", self.limit, low=1, integer=True)
        if self.batch_size is not None:
            check_range("batch_size", self.batch_size, low=1, integer=True)
        _check_engine(self.engine)
        _check_model(self.model)
        if self.masks is not None and self.masks not in _MASK_KINDS:
            raise param_error("masks", "one of " + ", ".join(map(repr, _MASK_KINDS)), self.masks)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.class_map.items()):
            raise param_error("classes", "a table of data class = \"model class\" strings", self.class_map)
        if not all(isinstance(c, str) and c for c in self.exclude_classes):
            raise param_error("exclude_classes", "a list of class names", list(self.exclude_classes))
        if not isinstance(self.merge_classes, bool):
            raise param_error("merge_classes", "true or false", self.merge_classes)
        if not isinstance(self.strict_metadata, bool):
            raise param_error("strict_metadata", "true or false", self.strict_metadata)
        if self.critical_class is not None and (not isinstance(self.critical_class, str) or not self.critical_class):
            raise param_error("critical_class", "the name of one of the model's outputs", self.critical_class)
        if self.threshold is not None:
            check_range("threshold", self.threshold, low=0.0, high=1.0, low_open=True, high_open=True)

    def merged(self, **cli: Any) -> AuditConfig:
        """A copy with the non-None command-line values taking precedence (``engine``: per key)."""
        values = {k: v for k, v in cli.items() if v is not None and k != "engine"}
        engine = {k: v for k, v in (cli.get("engine") or {}).items() if v is not None}
        if engine:
            values["engine"] = {**self.engine, **engine}
        if "studies" in values:
            values["studies"] = tuple(values["studies"])
        if "exclude_classes" in values:
            values["exclude_classes"] = tuple(values["exclude_classes"])
        if "class_map" in values:
            values["class_map"] = {**self.class_map, **values["class_map"]}
        cfg = AuditConfig(**{**self.__dict__, **values})
        cfg.validate()
        return cfg


# ---------------------------------------------------------------- audit()'s option groups
# ``audit()`` groups its options as the config file does: how the checkpoint is read, how the
# data is taken in, and where the maps run. Each group is a frozen dataclass; its fields are
# also accepted by ``audit()`` one by one (``audit(..., masks="lung")``), the shortcut form.


@dataclass(frozen=True)
class ModelSpec:
    """How the checkpoint is read.

    Attributes:
        trust_model: allow checkpoints with serialized code (Keras safe mode off).
        input_scale: the range the checkpoint expects (``unit``, ``255``, ``symmetric``);
            default: its ``.meta.json``, else ``unit``.
        output: the output kind (``softmax``, ``sigmoid``, ``multilabel``, ``logits``);
            default: its ``.meta.json``, else detected from the final layer.
        threshold: multi-label: one decision threshold in (0, 1) for every finding; default:
            chosen per finding on a calibration half.
        preprocess: what the model's input expects (``unit``, ``255``, ``tf``, ``torch``,
            ``caffe``: keras.applications' ``preprocess_input`` modes); default: its
            ``.meta.json``, else ``unit``, stated as assumed.
        input_mean, input_std: a normalisation no preset matches, per channel (``"R,G,B"``)
            in the units of ``unit`` or ``255``.
        channel_order: ``rgb``, ``bgr`` or ``gray`` (default: the preset's, else the model's).
        model_classes: the names of the model's outputs in order; default: its
            ``.meta.json``, else the data's class names, stated as assumed.
        input_size: ``(H, W)`` for a model built without a fixed input size.
        input_probe: check the declared setup on a stratified probe of the data before any
            study and stop when another is clearly better (default: on).
    """

    trust_model: bool = False
    input_scale: str | None = None
    output: str | None = None
    threshold: float | None = None
    preprocess: str | None = None
    input_mean: str | tuple[float, ...] | None = None
    input_std: str | tuple[float, ...] | None = None
    channel_order: str | None = None
    model_classes: tuple[str, ...] | list[str] | None = None
    input_size: tuple[int, int] | None = None
    input_probe: bool | None = None

    def filled(self, table: Mapping[str, Any]) -> ModelSpec:
        """A copy whose unset fields take the audit config's ``[model]`` values."""
        from dataclasses import replace

        unset = {k: v for k, v in table.items() if getattr(self, k) is None}
        return replace(self, **unset)


@dataclass(frozen=True)
class DataIntake:
    """How the data is taken in (the config's ``[classes]``, ``exclude_classes``, ``masks``).

    Attributes:
        class_map: ``{data class: model class}`` renames, added to the config's ``[classes]``.
        exclude_classes: data classes set aside as the out-of-scope set.
        merge_classes: allow ``class_map`` to send two data classes to one model class.
        masks: what the data's ``masks`` files are: ``lesion``, ``lung`` or ``none``.
        on_bad_input: ``fail`` or ``skip`` unreadable images.
        strict_metadata: stop on an image without a row (or with an empty cell) in its class's
            metadata sheet; default: its value there is ``missing``, counted.
    """

    class_map: Mapping[str, str] | None = None
    exclude_classes: tuple[str, ...] | list[str] | None = None
    merge_classes: bool | None = None
    masks: str | None = None
    on_bad_input: str = "fail"
    strict_metadata: bool | None = None


@dataclass(frozen=True)
class EngineSpec:
    """Where the studies' maps run (the config's ``[engine]``); the numbers are the same.

    Attributes:
        name: ``inprocess`` (default) or ``ray`` (``pip install "robustkit[ray]"``).
        ray_address: the Ray cluster to join (default: ``RAY_ADDRESS``, else a local one).
        workers: Ray actors, each with a copy of the model.
        cpus_per_worker: CPUs per Ray actor.
        gpus_per_worker: GPUs per Ray actor (a fraction shares a GPU).
        ray_connect_timeout: seconds to reach ``ray_address`` before a one-line error (default 30).
    """

    name: str | None = None
    ray_address: str | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    ray_connect_timeout: float | None = None

    def table(self) -> dict[str, Any]:
        """The ``[engine]`` table form (``address`` for ``ray_address``, ``connect_timeout`` for
        ``ray_connect_timeout``)."""
        return {"name": self.name, "address": self.ray_address, "workers": self.workers,
                "cpus_per_worker": self.cpus_per_worker, "gpus_per_worker": self.gpus_per_worker,
                "connect_timeout": self.ray_connect_timeout}


#: each shortcut keyword of ``audit()`` and the group it belongs to
OPTION_GROUPS: dict[str, type] = {
    **{f: ModelSpec for f in ModelSpec.__dataclass_fields__},
    **{f: DataIntake for f in DataIntake.__dataclass_fields__},
    **{f: EngineSpec for f in EngineSpec.__dataclass_fields__ if f != "name"},
}


def group_options(shortcuts: Mapping[str, Any], *, model: ModelSpec | None, intake: DataIntake | None,
                  engine: EngineSpec | str | None) -> tuple[ModelSpec, DataIntake, EngineSpec]:
    """The three groups, with the one-by-one keywords ``shortcuts`` filled in.

    Raises:
        TypeError: on a keyword that is no group's field (as Python does for a bad keyword),
            or a shortcut given beside its group with another value.
    """
    from dataclasses import replace

    groups: dict[type, Any] = {
        ModelSpec: model or ModelSpec(), DataIntake: intake or DataIntake(),
        EngineSpec: EngineSpec(name=engine) if engine is None or isinstance(engine, str) else engine,
    }
    for key, value in shortcuts.items():
        if key not in OPTION_GROUPS:
            raise TypeError(f"audit() got an unexpected keyword argument {key!r}")
        kind = OPTION_GROUPS[key]
        current = getattr(groups[kind], key)
        if current != getattr(kind(), key) and current != value:
            raise TypeError(f"audit() got {key}={value!r} and {kind.__name__}({key}={current!r}); give one.")
        groups[kind] = replace(groups[kind], **{key: value})
    return groups[ModelSpec], groups[DataIntake], groups[EngineSpec]


_ENGINE_KEYS = ("name", "address", "workers", "cpus_per_worker", "gpus_per_worker", "connect_timeout")


def _check_engine(engine: dict[str, Any]) -> None:
    """The ``[engine]`` table: known keys, a known engine name (values: by the engine)."""
    from robustkit.engines import ENGINES

    for key in engine:
        if key not in _ENGINE_KEYS:
            raise ConfigError(f"Unknown key {key!r} in [engine]; expected one of {', '.join(_ENGINE_KEYS)}.")
    if "name" in engine and engine["name"] not in ENGINES:
        raise param_error("engine", "one of " + ", ".join(map(repr, ENGINES)), engine["name"])


def _check_model(model: dict[str, Any]) -> None:
    """The ``[model]`` table: known keys and value types (values: checked where they are used)."""
    for key, value in model.items():
        if key not in _MODEL_KEYS:
            raise ConfigError(f"Unknown key {key!r} in [model]; expected one of {', '.join(_MODEL_KEYS)}.")
        if key == "input_probe" and not isinstance(value, bool):
            raise param_error("model.input_probe", "true or false", value)
        if key in ("model_classes", "input_size") and not isinstance(value, (list, tuple)):
            raise param_error(f"model.{key}", "a list", value)
        if key in ("preprocess", "channel_order", "output") and not isinstance(value, str):
            raise param_error(f"model.{key}", "a string", value)


def read_toml(path: str | Path, *, what: str) -> dict[str, Any]:
    """Parse a TOML file; ConfigError naming the file when it is missing or not TOML."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"{p}: expected {what} (TOML), got no such file.") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: expected {what} in valid TOML, got a parse error: {exc}.") from exc


def load_config(source: str | Path | dict[str, Any] | None) -> AuditConfig:
    """Read an audit config from a TOML file or a dict; ``None`` gives the defaults."""
    if source is None:
        return AuditConfig()
    where = ""
    if isinstance(source, (str, Path)):
        where = f"{Path(source)}: "
        raw = read_toml(source, what="an audit config")
    else:
        raw = dict(source)
    from robustkit.studies import available

    known = set(available())
    class_map = raw.pop(_CLASSES, {}) if isinstance(raw.get(_CLASSES), dict) else {}
    top = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in raw.items() if isinstance(v, dict) and k not in ("engine", "model")}
    model = raw.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"{where}expected [model] to be a table, got {model!r}.")
    engine = raw.get("engine", {})
    if not isinstance(engine, dict):
        raise ConfigError(f"{where}expected [engine] to be a table, got {engine!r}.")
    for key in top:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where}Unknown key {key!r}; expected one of {', '.join(sorted(_TOP_KEYS))} "
                              f"or a [study] table ({', '.join(sorted(known))}).")
    for key in tables:
        if key not in known:
            raise ConfigError(f"{where}Unknown study table [{key}]; expected [classes] or one of {', '.join(sorted(known))}.")
    studies = top.get("studies")
    if studies is not None and (not isinstance(studies, list) or not all(isinstance(s, str) for s in studies)):
        raise param_error("studies", "a list of study names", studies)
    try:
        cfg = AuditConfig(
            seed=top.get("seed", 0),
            profile=top.get("profile", "standard"),
            limit=top.get("limit"),
            batch_size=top.get("batch_size"),
            studies=tuple(studies) if studies is not None else None,
            overrides={k: dict(v) for k, v in tables.items()},
            engine=dict(engine),
            model=dict(model),
            class_map=dict(class_map),
            exclude_classes=_names(top.get("exclude_classes", [])),
            merge_classes=top.get("merge_classes", False),
            masks=top.get("masks"),
            threshold=top.get("threshold"),
            critical_class=top.get("critical_class"),
            strict_metadata=top.get("strict_metadata", False),
        )
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from exc
    return cfg


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise param_error("exclude_classes", "a list of class names", value)
    return tuple(value)


def parse_setting(text: str) -> tuple[str, str, Any]:
    """Split ``study.key=value`` (value in TOML syntax, bare words as strings).

    >>> parse_setting("noise.severities=[1, 3]")
    ('noise', 'severities', [1, 3])
    """
    target, sep, raw = text.partition("=")
    study, dot, key = target.strip().partition(".")
    if not sep or not dot or not study or not key:
        raise param_error("--set", "of the form STUDY.KEY=VALUE", text)
    from robustkit.studies import get_study

    get_study(study)  # an unknown study is refused here, naming the choices
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return study, key, value
