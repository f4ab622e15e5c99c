"""The one door to MLflow: import it (or say how to install it), open a client, name what failed.

Nothing else in robustkit imports ``mlflow``. The tracking server is the ``--mlflow URI``
given on the command line, else MLflow's own ``MLFLOW_TRACKING_URI``, else MLflow's default.
A server that does not answer, refuses a request or lacks an entity becomes one
:class:`RegistryError` line naming the URI and the step that failed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robustkit.errors import RobustkitError
from robustkit.results import atomic_write_text

__all__ = ["INSTALL_HINT", "MARKER_FILE", "RegistryError", "mlflow_client", "read_marker", "server_errors",
           "write_marker"]

INSTALL_HINT = 'pip install "robustkit[mlflow]"'
#: written into an audit folder once it is logged (and into a fetched baseline): the run it belongs to
MARKER_FILE = "mlflow.json"


class RegistryError(RobustkitError):
    """The tracking server or the registry could not do what was asked."""


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise RegistryError(f"--mlflow / mlflow: URIs: expected the mlflow package, got none installed; {INSTALL_HINT}") from exc
    return mlflow


def mlflow_client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (None: MLflow's own default)."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # robustkit says where the run went
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files; bars clutter CI logs
    mlflow = _mlflow()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    with server_errors("opening the tracking store", uri):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def server_errors(what: str, uri: str | None) -> Iterator[None]:
    """Turn anything MLflow (or the network under it) raises into one line naming ``what`` and ``uri``."""
    try:
        yield
    except RobustkitError:
        raise
    except Exception as exc:  # MlflowException, requests' ConnectionError, OSError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegistryError(f"{what} (tracking server {uri or 'default'}): {first[:600]}") from exc


def write_marker(folder: Path, *, tracking_uri: str, run_id: str, experiment_id: str,
                 model: str | None = None, version: str | None = None) -> Path:
    """Record in ``folder`` which run holds it, so that gate and compare can log to that run."""
    obj = {"tracking_uri": tracking_uri, "run_id": run_id, "experiment_id": experiment_id,
           "registered_model": model, "version": version}
    path = Path(folder) / MARKER_FILE
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
    return path


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The run an audit folder was logged to (``mlflow.json``), or None."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: expected the JSON robustkit log writes, got unreadable content ({exc}).") from exc
    return obj if isinstance(obj, dict) and obj.get("run_id") else None
