"""Joining a Ray cluster: an address where no cluster answers fails in bounded time, in one line.

``ray.init`` against a dead address retries for minutes and prints a warning every few
seconds; robustkit dials the address (and Ray's form of it) first, then joins once in a child
process it kills at ``--ray-connect-timeout``. The ports here are real: one nothing listens on,
and one that accepts TCP connections but never speaks Ray's protocol. Skipped without Ray.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustkit.errors import ConfigError

pytest.importorskip("ray", reason='the Ray engine needs pip install "robustkit[ray]"')

from robustkit.engines.ray_connect import check_address, join_cluster  # noqa: E402


def _free_port() -> int:
    """A port nothing listens on (bound once to find it, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on every interface that accepts TCP connections and never answers."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_nothing_listening_is_one_line_naming_the_address_and_what_was_tried() -> None:
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        check_address(f"127.0.0.1:{port}", timeout=5)
    message = str(caught.value)
    assert time.monotonic() - start < 5
    assert "\n" not in message
    assert f"--ray-address '127.0.0.1:{port}'" in message
    assert f"127.0.0.1:{port} connection refused" in message
    assert "within 5 s, --ray-connect-timeout" in message
    assert "--ray-address auto" in message  # the hint for the head machine itself


def test_ray_address_from_the_environment_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=rf"at RAY_ADDRESS '127\.0\.0\.1:{port}'"):
        check_address(None, timeout=5)


def test_no_address_means_a_local_instance_and_an_answering_port_is_kept(silent_port: int) -> None:
    assert check_address(None) is None
    assert check_address("local") == "local"
    assert check_address(f"127.0.0.1:{silent_port}", timeout=5) == f"127.0.0.1:{silent_port}"
    assert check_address(f"ray://127.0.0.1:{silent_port}", timeout=5) == f"ray://127.0.0.1:{silent_port}"


@pytest.mark.parametrize("address", ["head", "head:port", "head:0", ":6379"])
def test_an_address_without_a_port_is_refused_with_the_forms(address: str) -> None:
    with pytest.raises(ConfigError, match=r"The 'ray_address' parameter must be 'auto', 'HOST:PORT' or "
                                          r"'ray://HOST:PORT'\. Got"):
        check_address(address, timeout=1)


def test_a_port_that_answers_but_is_no_cluster_stops_at_the_deadline(silent_port: int) -> None:
    class NeverCalled:
        def init(self, **kw: object) -> None:
            raise AssertionError("the driver must not join before the trial join succeeded")

    start = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        join_cluster(NeverCalled(), f"127.0.0.1:{silent_port}", timeout=3)
    assert time.monotonic() - start < 3 + 5  # the deadline, and killing the child
    message = str(caught.value)
    assert "\n" not in message
    assert f"at '127.0.0.1:{silent_port}' answered TCP but did not accept a driver within 3 s" in message


@pytest.mark.slow
def test_a_running_cluster_is_joined() -> None:
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        address = check_address(cluster.address, timeout=30)
        assert address == cluster.address
        join_cluster(ray, address, timeout=60)
        assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 1.0  # the head's CPU, not ours
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_the_cli_fails_in_bounded_time_with_one_line_and_exit_2(toy_model: Path, toy_data: Path,
                                                                 tmp_path: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "robustkit", "audit", "--model", str(toy_model), "--data", str(toy_data),
           "--out", str(tmp_path / "out"), "--studies", "clean", "--engine", "ray",
           "--ray-address", f"127.0.0.1:{port}", "--ray-connect-timeout", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": ""})  # 300 s: far above the bound, never reached
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"robustkit: error: ray engine: no Ray cluster answers at --ray-address "
                               f"'127.0.0.1:{port}'")
    assert not (tmp_path / "out" / "results.json").exists()


def test_the_timeout_is_an_engine_option_checked_before_the_model_loads(tmp_path: Path) -> None:
    from robustkit.runner import audit

    missing = tmp_path / "no-such.keras"  # never read: the engine options are checked first
    port = _free_port()
    with pytest.raises(ConfigError, match=r"The 'connect_timeout' parameter must be a number in \(0, inf\)"):
        audit(missing, tmp_path, engine="ray", ray_address=f"127.0.0.1:{port}", ray_connect_timeout=0, report=False)
    config = {"engine": {"name": "ray", "address": f"127.0.0.1:{port}", "connect_timeout": 2}}
    with pytest.raises(ConfigError, match=rf"no Ray cluster answers at --ray-address '127\.0\.0\.1:{port}' "
                                          r"\(TCP connections within 2 s"):
        audit(missing, tmp_path, config=config, report=False)
