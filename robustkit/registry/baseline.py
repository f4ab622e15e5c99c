"""One resolver for every ``--baseline``: a folder stays a folder, an MLflow URI becomes one.

``mlflow:models:/NAME@ALIAS`` (or ``mlflow:models:/NAME/VERSION``) is the audit run linked to
that model version (its ``robustkit.audit_run`` tag, set by ``robustkit log --registered-model``);
``mlflow:runs:/RUN_ID`` is that run. The run's ``audit/`` artifacts are fetched into a cache
folder (``ROBUSTKIT_CACHE``, else ``~/.cache/robustkit``, then ``mlflow/<run_id>``) that gets an
``mlflow.json`` naming the run, and that folder is what compare, gate and card read.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from robustkit.registry.client import RegistryError, mlflow_client, server_errors, write_marker
from robustkit.registry.log import AUDIT_ARTIFACTS, AUDIT_RUN_TAG
from robustkit.results import RECORDS_FILE, RESULTS_FILE
from robustkit.sidecar import SIDECAR_FILE

__all__ = ["PREFIX", "cache_root", "is_registry_uri", "parse_model_uri", "resolve_baseline"]

PREFIX = "mlflow:"
_MODEL = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?$")
_RUN = re.compile(r"^runs:/(?P<run>[0-9A-Za-z_-]+)/?$")


def is_registry_uri(text: object) -> bool:
    return str(text).startswith(PREFIX)


def cache_root() -> Path:
    return Path(os.environ.get("ROBUSTKIT_CACHE") or Path.home() / ".cache" / "robustkit") / "mlflow"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME[@ALIAS|/VERSION]`` (with or without ``mlflow:``) -> (name, alias, version).

    >>> parse_model_uri("mlflow:models:/robustkit-demo@champion")
    ('robustkit-demo', 'champion', None)
    """
    m = _MODEL.match(uri.removeprefix(PREFIX))
    if m is None:
        raise RegistryError(f"{uri}: expected mlflow:models:/NAME, mlflow:models:/NAME@ALIAS or "
                            "mlflow:models:/NAME/VERSION.")
    return m["name"], m["alias"], m["version"]


def resolve_baseline(baseline: str | Path | None, *, tracking_uri: str | None = None) -> Path | None:
    """The audit folder a ``--baseline`` names: itself, or an MLflow run's audit fetched to the cache.

    >>> resolve_baseline("reports/released")
    PosixPath('reports/released')

    Raises:
        RegistryError: a malformed URI, an alias or version with no linked audit, a run without
            the audit artifacts, a server that does not answer (each names the URI).
    """
    if baseline is None or not is_registry_uri(baseline):
        return None if baseline is None else Path(baseline)
    uri = str(baseline)
    client = mlflow_client(tracking_uri)
    with server_errors(f"--baseline {uri}", str(client.tracking_uri)):
        run_id, model, version = _run_of(client, uri)
        return _fetch(client, uri, run_id, model, version)


def _run_of(client: Any, uri: str) -> tuple[str, str | None, str | None]:
    run = _RUN.match(uri.removeprefix(PREFIX))
    if run is not None:
        return run["run"], None, None
    name, alias, version = parse_model_uri(uri)
    if alias is None and version is None:
        raise RegistryError(f"--baseline {uri}: expected a model version (NAME@ALIAS or NAME/VERSION), got a model name.")
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    run_id = (mv.tags or {}).get(AUDIT_RUN_TAG)
    if not run_id:
        raise RegistryError(f"--baseline {uri}: expected a model version with an audit, got version {mv.version} "
                            f"with no {AUDIT_RUN_TAG} tag; log one with robustkit log DIR --registered-model "
                            f"{name} --version {mv.version}.")
    return str(run_id), name, str(mv.version)


def _fetch(client: Any, uri: str, run_id: str, model: str | None, version: str | None) -> Path:
    """The run's audit artifacts in the cache (fetched once: a run's artifacts do not change)."""
    target = cache_root() / run_id
    if (target / RESULTS_FILE).is_file():
        return target
    listed = {Path(f.path).name for f in client.list_artifacts(run_id, AUDIT_ARTIFACTS)}
    missing = [n for n in (RESULTS_FILE, RECORDS_FILE) if n not in listed]
    if missing:
        raise RegistryError(f"--baseline {uri}: expected run {run_id} to hold the audit artifacts, got no "
                            f"{AUDIT_ARTIFACTS}/{', '.join(missing)}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=target.parent))
    try:
        for name in (RECORDS_FILE, SIDECAR_FILE, RESULTS_FILE):
            if name in listed:
                local = client.download_artifacts(run_id, f"{AUDIT_ARTIFACTS}/{name}", str(tmp / "dl"))
                Path(local).replace(tmp / name)
        shutil.rmtree(tmp / "dl", ignore_errors=True)
        write_marker(tmp, tracking_uri=str(client.tracking_uri), run_id=run_id,
                     experiment_id=str(client.get_run(run_id).info.experiment_id), model=model, version=version)
        if not target.exists():  # another process may have fetched it meanwhile
            tmp.replace(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
