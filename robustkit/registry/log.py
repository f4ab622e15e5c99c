"""Log an audit folder to MLflow: one run per audit, linked to a registered model version.

The run holds:

* params: ``profile``, ``seed``, ``studies``, ``model.fingerprint``, ``dataset.fingerprint``,
  ``robustkit_version``, ``schema_version``, ``engine``, ``n_samples``, ``critical_class``;
* metrics: every flat metric of ``results.json`` under its :func:`~robustkit.registry.names.mlflow_key`,
  each interval as ``<key>.ci_low`` / ``<key>.ci_high`` (NaN stays NaN; MLflow stores an infinity
  as +-1.8e308, which the tag ``robustkit.note`` and the key table say);
* tags: ``robustkit.model``, ``robustkit.output_kind``, ``robustkit.checks`` (``pass``, ``warn``
  or ``fail``: the worst check of the audit), ``robustkit.registered_model`` and
  ``robustkit.model_version`` when linked;
* artifacts under ``audit/``: results.json, figures.npz, records.npz, report.html, the card
  and its exports, the studies' exports, when present, byte for byte; and
  ``audit/metric_names.json`` (every key -> robustkit name and direction).

Linked to ``--registered-model NAME --version V``, the model version gets the tag
``robustkit.audit_run`` = the run id. The audit folder gets ``mlflow.json`` naming the run.
Whatever fails half-way, the audit on disk is untouched and the error lists what was not logged.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustkit.plugins import plugins
from robustkit.registry.client import RegistryError, mlflow_client, server_errors, write_marker
from robustkit.registry.names import mlflow_keys
from robustkit.results import RECORDS_FILE, RESULTS_FILE, AuditResult, load_results
from robustkit.sidecar import SIDECAR_FILE

__all__ = ["AUDIT_ARTIFACTS", "AUDIT_RUN_TAG", "LoggedRun", "audit_files", "log_audit"]

AUDIT_ARTIFACTS = "audit"
AUDIT_RUN_TAG = "robustkit.audit_run"
NAMES_FILE = "metric_names.json"
_CARD_FILES = ("card.html", "card.json", "card.model_card.json", "card.model-index.yaml")
_BATCH = 1000  # MLflow's most metrics per log_batch


@dataclass
class LoggedRun:
    """Where an audit went: the run, its experiment and the model version it is linked to."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    metrics: int = 0
    artifacts: list[str] = field(default_factory=list)
    model_version: tuple[str, str] | None = None


def audit_files(folder: Path) -> list[Path]:
    """The files of an audit folder that go to the run, in a fixed order, those present only."""
    names = [RESULTS_FILE, SIDECAR_FILE, RECORDS_FILE, "report.html", *_CARD_FILES]
    names += [e.filename for r in plugins().values() for e in r.exports]
    return [folder / n for n in dict.fromkeys(names) if (folder / n).is_file()]


def _params(r: AuditResult) -> dict[str, str]:
    engine = r.config.get("engine", {})
    return {
        "profile": str(r.config.get("profile", "")), "seed": str(r.config.get("seed", "")),
        "studies": ",".join(r.studies), "model.name": str(r.model.get("name", "")),
        "model.fingerprint": str(r.model.get("fingerprint", "")),
        "dataset.fingerprint": str(r.dataset.get("fingerprint", "")),
        "robustkit_version": r.robustkit_version, "schema_version": r.schema_version,
        "engine": str(engine.get("name", "") if isinstance(engine, dict) else engine),
        "n_samples": str(len(r.ids)), "critical_class": str(r.task.get("critical_class") or ""),
    }


def _checks_verdict(r: AuditResult) -> str:
    statuses = {c.status for _, c in r.checks()} | {"fail" for s in r.studies.values() if s.status != "ok"}
    return next((s for s in ("fail", "warn") if s in statuses), "pass")


def _tags(r: AuditResult, model: str | None, version: str | None) -> dict[str, str]:
    infinite = [m for m, v in r.metrics().items() if math.isinf(v)]
    note = {"robustkit.note": f"{len(infinite)} metrics are infinite ({', '.join(infinite[:5])}); MLflow stores "
            "them as +-1.8e308, results.json and audit/metric_names.json keep inf"} if infinite else {}
    tags = note | {"robustkit.audit": "1", "robustkit.model": str(r.model.get("name", "")),
            "robustkit.output_kind": str(r.model.get("output_kind", "")), "robustkit.checks": _checks_verdict(r),
            "mlflow.runName": f"audit {r.model.get('name', '')}"}
    if model is not None:
        tags |= {"robustkit.registered_model": model, "robustkit.model_version": str(version)}
    return tags


def _metric_rows(r: AuditResult) -> tuple[list[tuple[str, float]], dict[str, dict[str, str]]]:
    """(key, value) of every metric and interval end, and the key table logged beside them."""
    with_intervals = [m for m in r.metrics() if r.interval(m) is not None]
    keys = mlflow_keys(r.metrics(), with_intervals)
    values = r.metrics()
    rows = []
    for key, (name, end) in keys.items():
        interval = r.interval(name) or [values[name]] * 2
        rows.append((key, float(values[name] if end == "value" else interval[0 if end == "ci_low" else 1])))
    table = {key: {"metric": name, "end": end, "direction": r.direction(name)} for key, (name, end) in keys.items()}
    for key, value in rows:
        if math.isinf(value):  # MLflow stores +-inf as +-1.8e308: say so where the value is read
            table[key]["stored"] = f"{value} (MLflow keeps {math.copysign(sys.float_info.max, value):g})"
    return rows, table


def log_audit(audit_dir: str | Path, *, tracking_uri: str | None = None, experiment: str = "robustkit",
              registered_model: str | None = None, version: str | int | None = None) -> LoggedRun:
    """Log the audit in ``audit_dir`` as one new MLflow run; return where it went.

    Args:
        audit_dir: an audit folder (results.json, records.npz ...).
        tracking_uri: the tracking server (None: ``MLFLOW_TRACKING_URI``, else MLflow's default).
        experiment: the MLflow experiment (created when missing).
        registered_model, version: the model version this audit belongs to (both or neither).

    Raises:
        RegistryError: mlflow missing, a server that does not answer, an unknown model version,
            or a failure half-way (the message lists what was not logged).
    """
    folder = Path(audit_dir)
    if (registered_model is None) != (version is None):
        raise RegistryError("--registered-model/--version: expected both or neither, got "
                            f"{'--registered-model' if version is None else '--version'} alone.")
    result = load_results(folder)
    rows, table = _metric_rows(result)
    files = audit_files(folder)
    client = mlflow_client(tracking_uri)
    uri = str(client.tracking_uri)
    ver = None if version is None else str(version)
    with server_errors(f"robustkit log {folder}: nothing logged", uri):
        if registered_model is not None:
            client.get_model_version(registered_model, ver)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        run = client.create_run(exp_id, tags=_tags(result, registered_model, ver))
    logged = LoggedRun(run.info.run_id, exp_id, uri)
    _log_contents(client, logged, result, rows, table, files)
    if registered_model is not None:
        with server_errors(f"robustkit log {folder}: run {logged.run_id} logged, but the link to model "
                           f"{registered_model!r} version {ver} was not set", uri):
            client.set_model_version_tag(registered_model, ver, AUDIT_RUN_TAG, logged.run_id)
        logged.model_version = (registered_model, str(ver))
    with server_errors(f"robustkit log {folder}: run {logged.run_id} logged but not marked finished", uri):
        client.set_terminated(logged.run_id, "FINISHED")
    write_marker(folder, tracking_uri=uri, run_id=logged.run_id, experiment_id=exp_id,
                 model=registered_model, version=ver)
    return logged


def _log_contents(client: Any, logged: LoggedRun, result: AuditResult, rows: list[tuple[str, float]],
                  table: dict[str, dict[str, str]], files: list[Path]) -> None:
    """Params, metrics and artifacts; on a failure, one error naming everything not logged."""
    from mlflow.entities import Metric, Param

    run_id, step = logged.run_id, "params"
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in _params(result).items()])
        step = "metrics"
        for i in range(0, len(rows), _BATCH):
            client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in rows[i:i + _BATCH]])
            logged.metrics += len(rows[i:i + _BATCH])
        step = "artifacts"
        client.log_text(run_id, json.dumps(table, indent=1, sort_keys=True), f"{AUDIT_ARTIFACTS}/{NAMES_FILE}")
        for path in files:
            client.log_artifact(run_id, str(path), AUDIT_ARTIFACTS)
            logged.artifacts.append(path.name)
    except Exception as exc:
        missing = _not_logged(step, logged, rows, files)
        if not _unreachable(exc):
            _fail_run(client, run_id)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RegistryError(f"robustkit log: run {run_id} on {logged.tracking_uri} is incomplete: not logged: "
                            f"{missing}; the audit on disk is complete, re-run `robustkit log` ({first})") from exc


def _not_logged(step: str, logged: LoggedRun, rows: list[tuple[str, float]], files: list[Path]) -> str:
    left = [p.name for p in files if p.name not in logged.artifacts]
    parts = ["params"] if step == "params" else []
    if step in ("params", "metrics"):
        parts.append(f"{len(rows) - logged.metrics} of {len(rows)} metrics")
    if left:
        parts.append("artifacts " + ", ".join(left))
    return "; ".join(parts) or "the run's end"


def _unreachable(exc: BaseException) -> bool:
    """Whether the server stopped answering (then marking the run would only wait on retries)."""
    text = f"{type(exc).__name__} {exc}"
    return any(w in text for w in ("ConnectionError", "Max retries", "Connection refused", "Failed to establish"))


def _fail_run(client: Any, run_id: str) -> None:
    """Mark the run FAILED if the server still answers (it may not: that is often why we are here)."""
    try:
        client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the first error is the one reported
        pass
