"""Audit results: what every study returns and what every downstream tool reads.

An :class:`AuditResult` is written as two files in the audit folder:

* ``results.json``: schema version, versions, fingerprints, config, environment, and one
  :class:`StudyResult` summary per study (status, seconds, flat ``metrics``, bootstrap
  ``intervals``, metric ``directions``, report ``tables`` and ``data``, ``checks``);
* ``figures.npz``: the images and large number grids of the studies' ``data`` (the report's
  example images and maps), each replaced in ``results.json`` by a small reference
  (:mod:`robustkit.sidecar`); :func:`load_results` puts them back, and an audit whose
  sidecar is missing still loads (its views skip those figures and say so);
* ``records.npz``: per-sample arrays. Top-level keys ``ids`` and ``labels`` cover the
  audited samples (multi-label audits add ``targets``, bool (N, K)); a study's arrays are stored as ``<study>/<name>``, and each study that
  records anything stores ``<study>/index``, the positions of its samples in ``ids``.

Every file is written atomically (temporary file, then rename), records and figures before
``results.json``, so a killed audit leaves the previous complete files. ``results.json`` is
indented down to one metric per line; deeper values (a table, a curve) sit on one line. This module never imports TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robustkit.errors import RobustkitError
from robustkit.sidecar import SIDECAR_FILE, dump_sidecar, join, split

__all__ = [
    "SCHEMA_VERSION",
    "AuditResult",
    "Check",
    "StudyResult",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_results",
    "require_current",
    "save_results",
]

SCHEMA_VERSION = "2.1"  # 2.1: figures in the figures.npz sidecar, referenced from data
#: what changed at the last major version, said when an older audit is refused
SCHEMA_CHANGES = ("2.0: one name per quantity (clean's auc -> auroc, recall -> sensitivity, also per "
                  "condition), the task block and the critical class (covid_to_normal_rate -> "
                  "critical_miss_rate, confident_covid_rate -> confident_critical_rate)")
RESULTS_FILE = "results.json"
RECORDS_FILE = "records.npz"
METADATA_PREFIX = "metadata/"

CheckStatus = Literal["pass", "warn", "fail"]
Direction = Literal["higher", "lower", "none"]


@dataclass(frozen=True)
class Check:
    """One pass/warn/fail verdict a study reports about itself or the model."""

    name: str
    status: CheckStatus
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class StudyResult:
    """What one study returns.

    Attributes:
        name: the study's registry name (``clean``, ``perturbation`` ...).
        status: ``ok`` or ``failed`` (a failed study keeps its error in ``error``).
        seconds: wall time of the study.
        config: the study's resolved config, as plain JSON values.
        metrics: flat map of dotted metric names to numbers (``sensitivity.<class>``).
        intervals: bootstrap 95% intervals ``[low, high]`` for some metrics.
        directions: whether a higher value is better, keyed by the metric's first dotted
            part (``accuracy`` covers ``accuracy.jpeg.3``): ``higher``, ``lower``, ``none``.
        tables: named tables for the report, each a list of row dicts.
        data: JSON values the report draws (curves, matrices, example images as lists).
        checks: the study's pass/warn/fail verdicts.
        records: per-sample arrays, first axis over ``records['index']`` (not in JSON).
        error: the error message of a failed study.
        missing_figures: on load, how many figures of ``data`` the sidecar did not hold
            (their references stay in ``data``; not in JSON).
    """

    name: str
    status: str = "ok"
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    directions: dict[str, Direction] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    records: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    error: str | None = None
    missing_figures: int = field(default=0, repr=False)

    def direction(self, metric: str) -> Direction:
        """Whether a higher value of ``metric`` is better (``higher``/``lower``/``none``)."""
        parts = metric.split(".")
        for k in range(len(parts), 0, -1):
            key = ".".join(parts[:k])
            if key in self.directions:
                return self.directions[key]
        return "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(float(self.seconds), 3),
            "config": _jsonable(self.config),
            "metrics": {k: _num(v) for k, v in self.metrics.items()},
            "intervals": {k: [_num(a), _num(b)] for k, (a, b) in self.intervals.items()},
            "directions": dict(self.directions),
            "tables": _jsonable(self.tables),
            "data": _jsonable(self.data),
            "checks": [c.to_json() for c in self.checks],
            "record_keys": sorted(self.records),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], records: Mapping[str, np.ndarray] | None = None) -> StudyResult:
        return cls(
            name=obj["name"],
            status=obj.get("status", "ok"),
            seconds=float(obj.get("seconds", 0.0)),
            config=dict(obj.get("config", {})),
            metrics={k: _denum(v) for k, v in obj.get("metrics", {}).items()},
            intervals={k: [_denum(a), _denum(b)] for k, (a, b) in obj.get("intervals", {}).items()},
            directions=dict(obj.get("directions", {})),
            tables=dict(obj.get("tables", {})),
            data=dict(obj.get("data", {})),
            checks=[Check(**c) for c in obj.get("checks", [])],
            records=dict(records or {}),
            error=obj.get("error"),
        )


@dataclass
class AuditResult:
    """A whole audit: provenance plus one :class:`StudyResult` per study, in run order."""

    model: dict[str, Any]
    dataset: dict[str, Any]
    config: dict[str, Any]
    environment: dict[str, Any]
    ids: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    studies: dict[str, StudyResult] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
    robustkit_version: str = ""
    created: str = ""
    seconds: float = 0.0
    #: per-sample metadata columns of the dataset (``records.npz`` keys ``metadata/<column>``)
    metadata: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: multi-label audits: bool (N, K), the findings of each sample (``records.npz`` key ``targets``)
    targets: np.ndarray | None = field(default=None, repr=False)
    #: the task model (:meth:`robustkit.task.Task.describe`): outputs, exclusivity, critical class
    task: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        """Return one metric by its full dotted name, e.g. ``clean.accuracy``."""
        study, _, rest = name.partition(".")
        if study not in self.studies or rest not in self.studies[study].metrics:
            raise KeyError(f"no metric {name!r} in this audit (studies: {', '.join(self.studies)})")
        return self.studies[study].metrics[rest]

    def metrics(self) -> dict[str, float]:
        """All metrics of all studies, keyed ``<study>.<metric>``."""
        return {f"{s}.{k}": v for s, r in self.studies.items() for k, v in r.metrics.items()}

    def direction(self, name: str) -> Direction:
        study, _, rest = name.partition(".")
        return self.studies[study].direction(rest) if study in self.studies else "none"

    def interval(self, name: str) -> list[float] | None:
        study, _, rest = name.partition(".")
        return self.studies[study].intervals.get(rest) if study in self.studies else None

    def checks(self) -> Iterator[tuple[str, Check]]:
        for s, r in self.studies.items():
            for c in r.checks:
                yield s, c

    def records(self, study: str) -> dict[str, np.ndarray]:
        return self.studies[study].records

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "robustkit_version": self.robustkit_version,
            "created": self.created,
            "seconds": round(float(self.seconds), 3),
            "model": _jsonable(self.model),
            "dataset": _jsonable(self.dataset),
            "config": _jsonable(self.config),
            "environment": _jsonable(self.environment),
            "class_names": list(self.class_names),
            "task": _jsonable(self.task),
            "n_samples": int(len(self.ids)),
            "studies": {k: v.to_json() for k, v in self.studies.items()},
        }

    def record_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"ids": np.asarray(self.ids), "labels": np.asarray(self.labels)}
        if self.targets is not None:
            out["targets"] = np.asarray(self.targets, dtype=bool)
        out.update({f"{METADATA_PREFIX}{k}": np.asarray(v) for k, v in self.metadata.items()})
        for s, r in self.studies.items():
            for k, v in r.records.items():
                out[f"{s}/{k}"] = np.asarray(v)
        return out


def _num(v: Any) -> float | None | str:
    """JSON has no NaN/inf; store them as strings so that a result always round-trips."""
    f = float(v)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return f


def _denum(v: Any) -> float:
    return float(v) if v is not None else float("nan")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return _num(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results and reports are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_results(result: AuditResult, out_dir: str | Path) -> Path:
    """Write ``results.json``, ``figures.npz`` and ``records.npz`` atomically; return the folder.

    The records and figures are written first: a reader that finds a ``results.json``
    always finds records and figures at least as new as it. An audit without figures
    leaves no ``figures.npz``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **result.record_arrays())  # type: ignore[arg-type]
    atomic_write_bytes(out / RECORDS_FILE, buf.getvalue())
    obj = result.to_json()
    if str(obj["schema_version"]).split(".")[0] == SCHEMA_VERSION.split(".")[0]:
        obj["schema_version"] = SCHEMA_VERSION  # this writer's form (a re-saved 2.0 audit gains references)
    figures: dict[str, np.ndarray] = {}
    for study in obj["studies"].values():
        study["data"] = split(study["data"], figures)
    if figures:
        atomic_write_bytes(out / SIDECAR_FILE, dump_sidecar(figures))
    else:
        (out / SIDECAR_FILE).unlink(missing_ok=True)
    atomic_write_text(out / RESULTS_FILE, _dumps(obj) + "\n")
    return out


def _dumps(value: Any, depth: int = 4, pad: str = "") -> str:
    """JSON indented for the first ``depth`` levels (one metric per line), compact below.

    >>> print(_dumps({"a": {"b": [1, 2]}, "c": [{"d": 1}]}, depth=1))
    {
      "a": {"b": [1, 2]},
      "c": [{"d": 1}]
    }
    """
    nested = isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value))
    if depth <= 0 or not value or not nested:
        return json.dumps(value, allow_nan=False)
    inner = pad + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, depth - 1, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    return "[\n" + ",\n".join(inner + _dumps(v, depth - 1, inner) for v in value) + f"\n{pad}]"


def require_current(version: str, where: str) -> None:
    """Refuse an audit written with another major schema version, in one line that says to re-audit.

    >>> require_current("1.1", "old/results.json")
    Traceback (most recent call last):
    ...
    robustkit.errors.RobustkitError: old/results.json: expected an audit of schema version 2.x, got '1.1'; ...
    """
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise RobustkitError(f"{where}: expected an audit of schema version {SCHEMA_VERSION.split('.')[0]}.x, got "
                             f"{version!r}; re-audit the checkpoint with this robustkit ({SCHEMA_CHANGES}).")


def _read_figures(path: Path) -> dict[str, np.ndarray]:
    """The sidecar's figures; none when it is absent or unreadable (views then skip them)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        return {}


def load_results(path: str | Path) -> AuditResult:
    """Read an audit folder (or its ``results.json``) written by :func:`save_results`."""
    p = Path(path)
    folder = p.parent if p.suffix == ".json" else p
    rfile = folder / RESULTS_FILE
    if not rfile.is_file():
        raise RobustkitError(f"{rfile}: expected an audit results file, got no such file.")
    try:
        obj = json.loads(rfile.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RobustkitError(f"{rfile}: expected JSON, got unreadable content ({exc}).") from exc
    require_current(str(obj.get("schema_version", "")), str(rfile))
    arrays: dict[str, np.ndarray] = {}
    nfile = folder / RECORDS_FILE
    if nfile.is_file():
        with np.load(nfile, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    ids = arrays.get("ids", np.asarray([], dtype=str))
    labels = arrays.get("labels", np.asarray([], dtype=np.int64))
    figures = _read_figures(folder / SIDECAR_FILE)
    studies = {}
    for name, sj in obj.get("studies", {}).items():
        prefix = f"{name}/"
        recs = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        missing: list[str] = []
        studies[name] = StudyResult.from_json({**sj, "data": join(sj.get("data", {}), figures, missing)}, recs)
        studies[name].missing_figures = len(missing)
    return AuditResult(
        model=obj.get("model", {}),
        dataset=obj.get("dataset", {}),
        config=obj.get("config", {}),
        environment=obj.get("environment", {}),
        ids=ids,
        labels=labels,
        class_names=list(obj.get("class_names", [])),
        studies=studies,
        schema_version=obj.get("schema_version", SCHEMA_VERSION),
        robustkit_version=obj.get("robustkit_version", ""),
        created=obj.get("created", ""),
        seconds=float(obj.get("seconds", 0.0)),
        metadata={k[len(METADATA_PREFIX):]: v for k, v in arrays.items() if k.startswith(METADATA_PREFIX)},
        targets=arrays.get("targets"),
        task=dict(obj.get("task", {})),
    )
