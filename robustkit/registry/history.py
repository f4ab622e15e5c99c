"""``robustkit history``: chosen metrics over the registered versions of a model that have an audit.

A version has an audit when its ``robustkit.audit_run`` tag names a run (``robustkit log
--registered-model``). Values and intervals are read from the run's metrics (through the
key table ``audit/metric_names.json``); a version's change against the previous version is
read from ``compare/compare.json`` when the run's ``robustkit.compare.baseline_run`` tag names
the previous version's audit run, and is "not tested" otherwise.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustkit.errors import ConfigError
from robustkit.registry.baseline import parse_model_uri
from robustkit.registry.client import RegistryError, mlflow_client, server_errors
from robustkit.registry.gate_log import BASELINE_RUN_TAG, COMPARE_ARTIFACT
from robustkit.registry.log import AUDIT_ARTIFACTS, AUDIT_RUN_TAG, NAMES_FILE
from robustkit.report.history_render import VersionAudit, render_history

__all__ = ["DEFAULT_METRICS", "history", "version_audits"]

#: drawn when --metrics is not given (those the audits have)
DEFAULT_METRICS = ("clean.accuracy", "clean.auroc.macro", "clean.sensitivity.*", "calibration.ece")


def history(model_uri: str, *, out: str | Path, metrics: Sequence[str] | None = None,
            tracking_uri: str | None = None) -> Path:
    """Write ``history.html`` for ``mlflow:models:/NAME`` into ``out``; return its path.

    Raises:
        RegistryError: a malformed URI, a server that does not answer, a model with no audited version.
        ConfigError: a ``--metrics`` pattern that matches no metric of any version.
    """
    name, alias, version = parse_model_uri(model_uri)
    if alias or version:
        raise RegistryError(f"history {model_uri}: expected a registered model (mlflow:models:/NAME), got one version.")
    client = mlflow_client(tracking_uri)
    with server_errors(f"history {model_uri}", str(client.tracking_uri)):
        versions = version_audits(client, name)
    if not versions:
        raise RegistryError(f"history {model_uri}: expected registered versions with an audit ({AUDIT_RUN_TAG} tag), "
                            "got none; link one with robustkit log DIR --registered-model NAME --version V.")
    chosen = _choose(metrics, versions)
    return render_history(name, versions, chosen, out, tracking_uri=str(client.tracking_uri))


def _choose(patterns: Sequence[str] | None, versions: Sequence[VersionAudit]) -> list[str]:
    names = list(dict.fromkeys(n for v in versions for n in v.values))
    out: list[str] = []
    for pattern in patterns or DEFAULT_METRICS:
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits and patterns:
            raise ConfigError(f"--metrics: expected a pattern matching a metric of the audits, got {pattern!r}, "
                              "which matches nothing.")
        out += [n for n in hits if n not in out]
    if not out:
        raise ConfigError(f"--metrics: the audits have none of the default metrics ({', '.join(DEFAULT_METRICS)}); "
                          "name some with --metrics.")
    return out


def version_audits(client: Any, name: str) -> list[VersionAudit]:
    """The versions of ``name`` with a linked audit, oldest first, each compared with the one before."""
    found = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version))
    aliases: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():  # search leaves them out
        aliases.setdefault(str(version), []).append(alias)
    out: list[VersionAudit] = []
    prev_run: str | None = None
    for mv in found:
        run_id = (mv.tags or {}).get(AUDIT_RUN_TAG)
        if not run_id:
            continue
        out.append(_version(client, mv, str(run_id), prev_run, tuple(sorted(aliases.get(str(mv.version), [])))))
        prev_run = str(run_id)
    return out


def _version(client: Any, mv: Any, run_id: str, prev_run: str | None, aliases: tuple[str, ...]) -> VersionAudit:
    run = client.get_run(run_id)
    table = json.loads(_text(client, run_id, f"{AUDIT_ARTIFACTS}/{NAMES_FILE}"))
    values: dict[str, float] = {}
    ends: dict[str, dict[str, float]] = {}
    for key, value in run.data.metrics.items():
        entry = table.get(key)
        if entry is None:
            continue
        if "stored" in entry:  # an infinity MLflow clamped
            value = math.copysign(math.inf, value)
        if entry["end"] == "value":
            values[entry["metric"]] = float(value)
        else:
            ends.setdefault(entry["metric"], {})[entry["end"]] = float(value)
    directions = {e["metric"]: e["direction"] for e in table.values()}
    intervals = {n: (e["ci_low"], e["ci_high"]) for n, e in ends.items() if len(e) == 2}
    changes, note = _changes(client, run, prev_run)
    return VersionAudit(version=str(mv.version), aliases=aliases, run_id=run_id,
                        model=run.data.tags.get("robustkit.model", ""), values=values, intervals=intervals,
                        directions=directions, changes=changes, change_note=note)


def _changes(client: Any, run: Any, prev_run: str | None) -> tuple[dict[str, str] | None, str]:
    if prev_run is None:
        return None, "first audited version"
    base = run.data.tags.get(BASELINE_RUN_TAG)
    if base is None:
        return None, "not tested: no comparison logged to this run"
    if base != prev_run:
        return None, f"not tested: the logged comparison is against {base}, not the previous version's audit"
    cmp = json.loads(_text(client, run.info.run_id, COMPARE_ARTIFACT))
    metrics = cmp["candidates"][0]["metrics"]
    return {m: d["verdict"] for m, d in metrics.items()}, f"paired tests against the previous version (alpha {cmp['alpha']})"


def _text(client: Any, run_id: str, path: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, path, tmp)
        return Path(local).read_text(encoding="utf-8")
