"""A two-node Ray cluster on one machine: robustkit joins it by address and maps on both nodes.

``ray.cluster_utils.Cluster`` starts a head (1 CPU) and a second node (1 CPU) on this machine,
as ``ray start --head`` and ``ray start --address`` would (the README shows that form). The
audit joins with ``ray_address=`` and two workers of one CPU each, so each node holds one
actor; the driver logs the node of every batch it receives (DEBUG, ``robustkit.engines.ray_engine``),
which is what the tests read. The numbers equal the in-process audit's; with the second node
removed mid-audit, its actor's batches are mapped again on the head, each sample counted once.

Marked slow (a Ray cluster and TensorFlow in its actors); skipped without Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robustkit.data.loader import load_dataset
from robustkit.model.adapter import load_model
from robustkit.runner import audit
from robustkit.studies import AuditContext, get_study

pytest.importorskip("ray.data", reason='the Ray engine needs pip install "robustkit[ray]"')
ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from tests.test_ray import _close, _comparable, _same_records  # noqa: E402

pytestmark = pytest.mark.slow

BATCH = 6  # 36 toy images: 6 batches
STUDIES = ["clean", "noise"]
CONFIG = {"clean": {"n_bootstrap": 20},
          "noise": {"n_bootstrap": 20, "severities": [2], "transforms": ["gaussian"], "max_samples": 14}}
LOGGER = "robustkit.engines.ray_engine"
#: A lost node is declared dead after ~1 s of missed health checks (Ray's default: ~15 s), so
#: its actor's unfinished batches go to the head sooner; nothing else in the cluster changes.
HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                 "health_check_timeout_ms": 500, "health_check_failure_threshold": 2}


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(autouse=True)
def both_actors_ready() -> Iterator[None]:
    """Ray Data maps as soon as one actor is ready; on toy data the first one could map every batch
    before the other has loaded TensorFlow. Here the pool waits for both (Ray's own setting)."""
    context = ray.data.DataContext.get_current()
    before, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 120
    yield
    context.wait_for_min_actors_s = before


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A head and a second node on 127.0.0.1, one CPU each (the machine's CPUs split)."""
    assert not ray.is_initialized()
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                         "_system_config": HEALTH_CHECKS})
    made.add_node(num_cpus=1)
    made.wait_for_nodes()
    try:
        yield made
    finally:
        if ray.is_initialized():
            ray.shutdown()
        made.shutdown()


@pytest.fixture(scope="module")
def local(toy_model: Path, toy_data: Path) -> Any:
    return _audit(toy_model, toy_data, None)


def _audit(model: Path, data: Path, out: Path | None, **kw: Any) -> Any:
    return audit(model, data, studies=STUDIES, profile="quick", config=CONFIG, seed=1, out=out, report=False,
                 batch_size=BATCH, **kw)


class _Batches(logging.Handler):
    """The driver's DEBUG line per received batch: its positions and the node that mapped it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.batches: list[tuple[tuple[int, ...], str]] = []
        self.received: list[float] = []  # when the driver received each batch

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "positions"):
            self.batches.append((record.positions, record.node))
            self.received.append(record.created)


@pytest.fixture
def batches() -> Iterator[_Batches]:
    logger = logging.getLogger(LOGGER)
    handler, level = _Batches(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _node_ids(cluster: Cluster) -> tuple[str, str]:
    return cluster.head_node.node_id, next(iter(cluster.worker_nodes)).node_id


def _each_sample_once(batches: list[tuple[tuple[int, ...], str]], n: int) -> None:
    positions = sorted(p for pos, _ in batches for p in pos)
    assert positions == list(range(n)), positions


def test_the_map_runs_on_both_nodes_with_the_in_process_numbers(cluster: Cluster, batches: _Batches, local: Any,
                                                                 toy_model: Path, toy_data: Path,
                                                                 tmp_path: Path) -> None:
    head, second = _node_ids(cluster)
    result = _audit(toy_model, toy_data, tmp_path / "ray", engine="ray", ray_address=cluster.address, workers=2)
    nodes = {node for _, node in batches.batches}
    assert nodes == {head, second}, batches.batches  # every batch from one of the two nodes, both at work
    _each_sample_once(batches.batches, len(local.studies["clean"].records["pred"]))
    assert all(s.status == "ok" for s in result.studies.values()), {n: s.error for n, s in result.studies.items()}
    _close(_comparable(local), _comparable(result))
    _same_records(local, result, STUDIES)


def _slow_clean(seconds: float) -> Any:
    """The clean study, taking ``seconds`` more per batch, so that the audit still has batches to
    map when the second node goes. Defined here, so Ray ships the class to the workers by value."""
    from robustkit.studies.clean import CleanStudy

    class SlowClean(CleanStudy):
        def map(self, model: Any, batch: Any, ctx: AuditContext) -> dict[str, Any]:
            time.sleep(seconds)
            return super().map(model, batch, ctx)

    return SlowClean.configure("quick", CONFIG["clean"])


def test_a_node_removed_mid_audit_and_the_audit_completes_on_the_other(cluster: Cluster, batches: _Batches,
                                                                        toy_model: Path, toy_data: Path,
                                                                        tmp_path: Path) -> None:
    from robustkit.engines.ray_engine import SHARDS, RayOptions, run_studies_ray
    from tests.test_ray_faults import _assert_same_as_in_process

    head, second = _node_ids(cluster)
    worker = next(iter(cluster.worker_nodes))
    model, data = load_model(toy_model, batch_size=BATCH), load_dataset(toy_data)
    local = {"clean": get_study("clean").configure("quick", CONFIG["clean"]).execute(model, data, AuditContext(seed=1))}
    removed: list[float] = []

    def remover() -> None:  # the second node goes once the driver has received a batch it mapped
        deadline = time.time() + 120
        while time.time() < deadline and not removed:
            if any(node == second for _, node in batches.batches):
                cluster.remove_node(worker, allow_graceful=False)
                removed.append(time.time())
            time.sleep(0.02)

    thread = threading.Thread(target=remover, daemon=True)
    thread.start()
    results = run_studies_ray([_slow_clean(0.25)], model, data, AuditContext(seed=1),
                              options=RayOptions(address=cluster.address, workers=2, batch_size=BATCH // 2),
                              model_spec={"path": str(toy_model), "batch_size": BATCH}, out=tmp_path)
    thread.join(timeout=5)
    assert removed, "the second node was not removed mid-audit (the audit finished first)"
    assert {node for _, node in batches.batches} == {head, second}
    after = [node for (_, node), t in zip(batches.batches, batches.received) if t > removed[0]]
    assert head in after, batches.batches  # the head went on (batches the second node had finished may
    _each_sample_once(batches.batches, len(data))  # still arrive after it went; each is counted once)
    _assert_same_as_in_process(results, local)
    shards = [np.load(f) for f in (tmp_path / SHARDS).rglob("*.npz")]  # the same nodes, kept for resume
    assert sorted((tuple(z["pos"]), str(z["node"])) for z in shards) == sorted(batches.batches)
