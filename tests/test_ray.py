"""The Ray engine on a local Ray instance: the same results as in-process, faults and resume.

Marked slow (a local Ray instance and TensorFlow in every actor take tens of seconds); skipped
where Ray is not installed (``pip install "robustkit[ray]"``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from robustkit.errors import ConfigError
from robustkit.results import load_results
from robustkit.runner import audit
from tests.conftest import write_toy_dataset

ray = pytest.importorskip("ray", reason='the Ray engine needs pip install "robustkit[ray]"')

pytestmark = pytest.mark.slow

STUDIES = ["clean", "perturbation", "noise", "calibration", "adversarial", "saliency"]
CONFIG = {
    "perturbation": {"n_bootstrap": 20, "transforms": ["jpeg", "rotation", "gaussian_blur"], "severities": [1, 4]},
    "noise": {"n_bootstrap": 20, "severities": [1, 4]},
    "calibration": {"n_bootstrap": 20},
    "adversarial": {"max_samples": 12},
    "clean": {"n_bootstrap": 20},
    "saliency": {"max_samples": 6},
}


@pytest.fixture(scope="module")
def bigger_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("raydata") / "data", per_class=20, seed=3)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _audit(model: Path, data: Path, out: Path | None, **kw):
    return audit(model, data, studies=STUDIES, profile="quick", config=CONFIG, seed=1, out=out, report=False,
                 batch_size=8, **kw)


def _comparable(result) -> dict:
    """results.json without timings, creation time and the engine field."""
    obj = json.loads(json.dumps(result.to_json()))
    obj["config"].pop("engine")
    obj.pop("created"), obj.pop("seconds", None)
    obj["model"].get("input_probe", {}).pop("seconds", None)
    for s in obj["studies"].values():
        s.pop("seconds")
    return obj


def _close(a, b, where="") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert np.isclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_ray_audit_equals_the_in_process_audit(toy_model: Path, bigger_data: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="robustkit"):
        local = _audit(toy_model, bigger_data, tmp_path / "local")
        phases_local = [r.phases for r in caplog.records if hasattr(r, "phases")]
        caplog.clear()
        distributed = _audit(toy_model, bigger_data, tmp_path / "ray", engine="ray", workers=2)
    # each study's map and reduce told apart (in process: within the study's own time) and each actor's start
    assert [p["study"] for p in phases_local] == list(local.studies)
    for p in phases_local:
        assert 0 <= p["map_s"] and 0 <= p["reduce_s"]
        assert p["map_s"] + p["reduce_s"] <= local.studies[p["study"]].seconds + 1e-3
    assert sorted(r.phases["study"] for r in caplog.records if hasattr(r, "phases")) == sorted(distributed.studies)
    starts = [r.actor_start for r in caplog.records if hasattr(r, "actor_start")]
    assert 1 <= len(starts) <= 2  # one line per actor, with its first batch (an actor may get none)
    for s in starts:
        assert min(s["placed_s"], s["tensorflow_s"], s["load_s"], s["trace_s"]) >= 0
        assert s["placed_s"] + s["tensorflow_s"] + s["load_s"] + s["trace_s"] <= s["ready_s"] + 0.05
    assert distributed.to_json()["config"]["engine"] == {"name": "ray", "workers": 2}
    assert all(s.status == "ok" for s in distributed.studies.values()), {
        n: s.error for n, s in distributed.studies.items()}
    _close(_comparable(local), _comparable(distributed))
    _same_records(load_results(tmp_path / "local"), load_results(tmp_path / "ray"), STUDIES)
    assert not (tmp_path / "ray" / "shards").exists()  # spent once every study is saved


def test_a_multilabel_audit_on_ray_equals_the_in_process_audit(toy_multilabel_model: Path, toy_multilabel: Path,
                                                                tmp_path: Path) -> None:
    """One task model through both engines: a sigmoid model's per-finding studies, the OOD study's
    reference split and slices included, give the in-process results.json and records on Ray."""
    studies = ["clean", "perturbation", "noise", "calibration", "slices", "ood"]
    config = {**{k: v for k, v in CONFIG.items() if k in studies}, "slices": {"n_bootstrap": 20},
              "ood": {"n_bootstrap": 20}}

    def run(out: Path, **kw):
        return audit(toy_multilabel_model, toy_multilabel, studies=studies, profile="quick", config=config, seed=1,
                     out=out, report=False, batch_size=8, **kw)

    local = run(tmp_path / "local")
    distributed = run(tmp_path / "ray", engine="ray", workers=1)
    assert local.task["exclusive"] is False  # a multi-label task, decided per finding
    assert {n: s.status for n, s in distributed.studies.items()} == dict.fromkeys(studies, "ok")
    _close(_comparable(local), _comparable(distributed))
    _same_records(load_results(tmp_path / "local"), load_results(tmp_path / "ray"), studies)


def _same_records(a, b, names) -> None:
    """Every study's per-sample records equal (integers exactly, floats to 1e-5), same keys."""
    for name in names:
        assert set(b.studies[name].records) == set(a.studies[name].records), name
        for key, arr in a.studies[name].records.items():
            other = b.studies[name].records[key]
            assert other.shape == arr.shape, f"{name}.{key}"
            if arr.dtype.kind in "biu":
                np.testing.assert_array_equal(other, arr, err_msg=f"{name}.{key}")
            else:
                np.testing.assert_allclose(other, arr, rtol=1e-5, atol=1e-5, err_msg=f"{name}.{key}")


def _map_workers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "MapWorker"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_killed_actor_is_replaced_and_every_sample_counted_once(toy_model: Path, bigger_data: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "killed"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            shards = list((out / "shards").rglob("*.npz")) if (out / "shards").exists() else []
            pids = _map_workers()
            if shards and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = audit(toy_model, bigger_data, studies=["clean", "perturbation"], profile="quick", config=CONFIG,
                   seed=1, out=out, report=False, batch_size=4, engine="ray", workers=2)
    thread.join(timeout=1)
    assert killed, "no actor was killed mid-run (the audit finished first)"
    local = audit(toy_model, bigger_data, studies=["clean", "perturbation"], profile="quick", config=CONFIG,
                  seed=1, report=False, batch_size=4)
    assert all(s.status == "ok" for s in result.studies.values()), {n: s.error for n, s in result.studies.items()}
    _close(_comparable(local), _comparable(result))  # metrics, intervals, tables, checks: as in-process
    _same_records(local, result, ["clean", "perturbation"])  # each sample once, in order, same records


def test_a_killed_driver_resumes_from_its_shards(toy_model: Path, bigger_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "robustkit", "audit", "--model", str(toy_model), "--data", str(bigger_data),
           "--out", str(out), "--studies", "clean,perturbation", "--profile", "quick", "--seed", "1",
           "--batch-size", "4", "--engine", "ray", "--workers", "1",
           "--set", "perturbation.transforms=['jpeg','rotation','gaussian_blur']", "--set", "perturbation.n_bootstrap=20"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("shards/*/*.npz"))) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    finished = list(out.glob("shards/*/*.npz"))
    assert finished and not (out / "results.json").exists(), "the driver was not killed mid-run"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "samples from finished shards" in again.stderr
    resumed = load_results(out)
    local = audit(toy_model, bigger_data, studies=["clean", "perturbation"], profile="quick", seed=1,
                  config={"perturbation": {"transforms": ["jpeg", "rotation", "gaussian_blur"], "n_bootstrap": 20}},
                  report=False, batch_size=4)
    for name in ("clean", "perturbation"):
        np.testing.assert_array_equal(resumed.studies[name].records["pred"], local.studies[name].records["pred"])
        assert resumed.studies[name].metrics == pytest.approx(local.studies[name].metrics, nan_ok=True)


def test_engine_options_need_the_ray_engine(toy_model: Path, toy_data: Path) -> None:
    with pytest.raises(ConfigError, match=r"need --engine ray"):
        audit(toy_model, toy_data, studies=["clean"], workers=2, report=False)
    with pytest.raises(ConfigError, match=r"The 'workers' parameter must be an int in \[1, inf\)\. Got 0"):
        audit(toy_model, toy_data, studies=["clean"], engine="ray", workers=0, report=False)
