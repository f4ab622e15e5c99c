"""Log a gate's outcome (and the paired comparison behind it) to the candidate's MLflow run.

The candidate's run is the one its audit folder was logged to (``mlflow.json``, written by
``robustkit log``). The run gets ``gate/gate.json`` (every rule, its bounds, each matched
metric with its value, interval, verdict and message), ``gate/gate.txt``, ``gate/junit.xml``
and the tag ``robustkit.gate`` = ``PASS`` or ``FAIL``. With a baseline, the comparison with it
goes to ``compare/compare.json`` and the tag ``robustkit.compare.baseline_run`` names the
baseline's run (``history`` reads both). No alias is ever moved: promotion stays a person's or
the pipeline's decision.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from robustkit.compare import compare
from robustkit.gate import GateReport
from robustkit.registry.client import RegistryError, mlflow_client, read_marker, server_errors
from robustkit.results import AuditResult, load_results

__all__ = ["COMPARE_ARTIFACT", "GATE_TAG", "gate_json", "log_gate"]

GATE_TAG = "robustkit.gate"
BASELINE_RUN_TAG = "robustkit.compare.baseline_run"
COMPARE_ARTIFACT = "compare/compare.json"


def gate_json(report: GateReport, audit: AuditResult) -> dict[str, Any]:
    """The gate's outcome as JSON: each rule with its form and status, and the acceptance judge's
    outcome of every metric it matched (:meth:`robustkit.judge.Outcome.to_json`: value, interval,
    what was judged, status, reason, the difference with the baseline)."""
    rules = [{**dataclasses.asdict(r.rule), "title": r.rule.title, "status": r.status, "passed": r.passed,
              "metrics": [o.to_json() for o in r.outcomes]} for r in report.rules]
    judgement = report.judgement
    return {"verdict": "PASS" if report.passed else "FAIL", "policy": judgement.source,
            "baseline": judgement.baseline, "judge": judgement.judge, "rules": rules,
            "audit": {"model": audit.model.get("name"), "schema_version": audit.schema_version}}


def log_gate(report: GateReport, audit_dir: str | Path, *, baseline: Path | None = None,
             tracking_uri: str | None = None, allow_config_mismatch: bool = False, seed: int = 0) -> str:
    """Log ``report`` to the run of ``audit_dir`` (and its comparison with ``baseline``); return the run id."""
    folder = Path(audit_dir)
    marker = read_marker(folder)
    if marker is None:
        raise RegistryError(f"gate --mlflow: expected {folder} to be logged (its mlflow.json), got none; "
                            f"run robustkit log {folder} first.")
    audit = load_results(folder)
    run_id = str(marker["run_id"])
    client = mlflow_client(tracking_uri or marker.get("tracking_uri"))
    base_marker = read_marker(baseline) if baseline is not None else None
    with server_errors(f"gate --mlflow: the gate's outcome was not logged to run {run_id}", str(client.tracking_uri)):
        client.log_text(run_id, json.dumps(gate_json(report, audit), indent=2, allow_nan=False), "gate/gate.json")
        client.log_text(run_id, report.text(), "gate/gate.txt")
        client.log_text(run_id, report.junit(), "gate/junit.xml")
        if baseline is not None:
            cmp = compare([baseline, audit], allow_config_mismatch=allow_config_mismatch, seed=seed,
                          labels=["baseline", "candidate"])
            client.log_text(run_id, json.dumps(cmp.to_json(), indent=2, allow_nan=False), COMPARE_ARTIFACT)
            client.set_tag(run_id, BASELINE_RUN_TAG, str(base_marker["run_id"]) if base_marker else f"folder {baseline}")
        client.set_tag(run_id, GATE_TAG, "PASS" if report.passed else "FAIL")
    return run_id
