"""Killed audits: the output folder keeps complete results, and a re-run resumes to the same numbers.

A subprocess audits the toy model with ``clean`` and a second study, ``slow_tail``. In one
variant ``slow_tail`` sleeps until it is killed (``ROBUSTKIT_TEST_SLOW=1``): the test waits
until ``results.json`` holds ``clean`` and ``slow_tail`` says it started, sends SIGINT, and
measures how long the audit took to raise KeyboardInterrupt (the audit's promptness; the
interpreter's teardown with TensorFlow loaded after that takes 1 s on a quiet machine and
several under load, so it is only guarded against hanging). The child restores Python's
SIGINT handler first: a test run started as a background job (``pytest ... &`` in a script)
passes SIGINT on as *ignored*, and Python then installs no KeyboardInterrupt handler at all:
the audit never stops (reproduced with ``bash -c 'pytest ... & wait'``; the likely cause of
the one 60 s failure on a busy machine, where runs go to the background). In the other the subprocess hangs
inside the atomic write of the ``results.json`` that adds ``slow_tail`` (temporary file
written, not yet renamed) and gets SIGKILL there. Either way the folder must hold the
previous complete, schema-valid results; then the audit is re-run in this process
(``slow_tail`` now fast) and must resume and give the numbers of an uninterrupted audit
into another folder. The atomic writer is also tested directly with failing writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

import robustkit
from robustkit import results as results_module
from robustkit.results import (
    AuditResult,
    StudyResult,
    atomic_write_bytes,
    atomic_write_text,
    load_results,
    save_results,
)
from robustkit.runner import audit
from robustkit.studies.clean import CleanStudy
from tests.conftest import strip_volatile

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(robustkit.__file__).parent / "schema" / "results.schema.json").read_text())
STUDIES = ["clean", "slow_tail"]
CONFIG = {"clean": {"n_bootstrap": 50}}
WAIT_S = 240.0
STEP_S = 0.05  # how often the sleeping study wakes up (its "batch")
PROMPT_S = 2.0  # SIGINT -> KeyboardInterrupt in the audit: many steps, even on a loaded machine

# The extra study, shared by the subprocess (exec'd there) and this process.
STUDY_SRC = '''
import os, time
import numpy as np
from robustkit.results import StudyResult
from robustkit.studies import Study, StudyConfig, register


@register
class SlowTailStudy(Study):
    name = "slow_tail"
    description = "test study: margins of the clean logits; sleeps until killed when told to"
    Config = StudyConfig
    metric_docs = {"mean_margin": ("mean top-1 minus top-2 logit", "none")}

    def run(self, model, data, ctx):
        if os.environ.get("ROBUSTKIT_TEST_SLOW") == "1":
            open(os.environ["ROBUSTKIT_TEST_STARTED"], "w").close()
        while os.environ.get("ROBUSTKIT_TEST_SLOW") == "1":
            time.sleep(0.05)
        z = np.sort(ctx.clean_logits(model, data), axis=1)
        margin = z[:, -1] - z[:, -2]
        noise = ctx.rng("slow_tail").normal(size=len(margin))  # a seeded random choice
        return StudyResult(name=self.name,
                           metrics={"mean_margin": float(margin.mean()), "noise": float(noise.mean())},
                           records={"margin": margin.astype(np.float32)})
'''

# Run in the subprocess: argv = model, data, out, mode ("study" sleeps in slow_tail; "write"
# hangs in the rename of the last results.json).
RUNNER = '''
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
model, data, out, mode = sys.argv[1:5]
exec(compile(os.environ["ROBUSTKIT_TEST_STUDY"], "slow_tail_study", "exec"))
if mode == "write":
    real_replace = os.replace

    def hanging_replace(src, dst):
        if str(dst).endswith("results.json") and os.path.exists(os.path.join(out, "records.npz")):
            import numpy as np
            with np.load(os.path.join(out, "records.npz")) as z:
                if "slow_tail/margin" in z.files:
                    open(out + ".hanging", "w").close()
                    while True:
                        time.sleep(0.05)
        return real_replace(src, dst)

    os.replace = hanging_replace
from robustkit.runner import audit
try:
    audit(model, data, studies=["clean", "slow_tail"], out=out, seed=0, profile="quick",
          config={"clean": {"n_bootstrap": 50}}, report=True)
except KeyboardInterrupt:
    print("INTERRUPTED", time.monotonic(), flush=True)  # CLOCK_MONOTONIC: comparable with the parent's
    raise
print("FINISHED", flush=True)
'''


@pytest.fixture()
def slow_tail_study():
    """Register the test study in this process (fast mode) for the re-runs."""
    from robustkit.studies import _REGISTRY

    namespace: dict[str, Any] = {}
    exec(compile(STUDY_SRC, "slow_tail_study", "exec"), namespace)
    yield namespace["SlowTailStudy"]
    _REGISTRY.pop("slow_tail", None)



def _start(model: Path, data: Path, out: Path, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, ROBUSTKIT_TEST_STUDY=STUDY_SRC, TF_CPP_MIN_LOG_LEVEL="2",
               ROBUSTKIT_TEST_SLOW="1" if mode == "study" else "0", ROBUSTKIT_TEST_STARTED=str(_started(out)))
    log = open(out.parent / "child.log", "w")  # a file, not a pipe: a full pipe would block the child
    with log:
        return subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(model), str(data), str(out), mode],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )


def _started(out: Path) -> Path:
    return out.parent / "slow_tail.started"


def _log(proc: subprocess.Popen[str]) -> str:
    return Path(proc.args[5]).parent.joinpath("child.log").read_text(errors="replace")[-3000:]  # args[5]: out


def _wait_for(proc: subprocess.Popen[str], ready: Any) -> None:
    """Poll until ``ready()``; fail with the child's output if it exits or takes too long."""
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the audit subprocess exited early ({proc.returncode}):\n{_log(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"the audit subprocess did not reach the point to kill it in time:\n{_log(proc)}")
        time.sleep(0.1)


def _finished_studies(out: Path) -> list[str]:
    """Studies in results.json; every read must parse (the file is replaced atomically)."""
    path = out / "results.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8"))["studies"])


def _kill(proc: subprocess.Popen[str], sig: signal.Signals) -> float | None:
    """Send ``sig``, wait for the exit; return the seconds from SIGINT to KeyboardInterrupt in
    the audit (None for other signals)."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=WAIT_S)  # a hang guard only: the teardown's time depends on the load
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the audit did not exit within {WAIT_S:.0f} s of {sig.name}:\n{_log(proc)}")
    assert proc.returncode != 0
    if sig != signal.SIGINT:
        return None
    marks = [line.split() for line in _log(proc).splitlines() if line.startswith("INTERRUPTED ")]
    assert marks, f"the audit never raised KeyboardInterrupt:\n{_log(proc)}"
    return float(marks[-1][1]) - sent


def _check_complete_previous(out: Path, expected: list[str]) -> AuditResult:
    obj = json.loads((out / "results.json").read_text(encoding="utf-8"))
    jsonschema.validate(obj, SCHEMA)
    previous = load_results(out)
    assert list(previous.studies) == expected
    assert all(s.status == "ok" for s in previous.studies.values())
    assert len(previous.ids) == obj["n_samples"] == 36
    assert previous.records("clean")["probs"].shape == (36, 3)
    assert not (out / "report.html").exists()  # the report is rendered only at the very end
    return previous


@pytest.fixture(scope="module")
def uninterrupted(toy_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from robustkit.studies import _REGISTRY

    namespace: dict[str, Any] = {}
    exec(compile(STUDY_SRC, "slow_tail_study", "exec"), namespace)
    out = tmp_path_factory.mktemp("uninterrupted")
    try:
        result = audit(toy_model, toy_data, studies=STUDIES, out=out, seed=0, profile="quick",
                       config=CONFIG)
    finally:
        _REGISTRY.pop("slow_tail", None)
    return result, out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "mode"),
    [(signal.SIGINT, "study"), (signal.SIGKILL, "write")],
    ids=["sigint-in-study", "sigkill-in-write"],
)
def test_killed_audit_keeps_complete_results_and_resumes_to_the_same_numbers(
    sig: signal.Signals, mode: str, toy_model: Path, toy_data: Path, tmp_path: Path,
    uninterrupted, slow_tail_study, monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "audit"
    proc = _start(toy_model, toy_data, out, mode)
    if mode == "study":
        _wait_for(proc, lambda: _finished_studies(out) == ["clean"] and _started(out).exists())
    else:
        _wait_for(proc, lambda: Path(str(out) + ".hanging").exists())
    latency = _kill(proc, sig)
    if latency is not None:
        assert 0 <= latency < PROMPT_S, f"KeyboardInterrupt {latency:.2f} s after SIGINT (steps of {STEP_S} s)"
        assert 'File "slow_tail_study"' in _log(proc)  # interrupted inside the sleeping study

    previous = _check_complete_previous(out, ["clean"])
    # figures.npz is written before results.json, like records.npz; its keys are content hashes,
    # so the previous results.json still finds clean's figures in it (checked by load_results below)
    leftovers = sorted(p.name for p in out.iterdir() if p.name not in ("results.json", "records.npz", "figures.npz"))
    if mode == "study":
        assert leftovers == []  # an interrupted writer cleans up; a sleeping study wrote nothing
    else:
        # killed between writing the temporary file and the rename: the temp file stays,
        # complete and hidden, and it is not what load_results read.
        assert len(leftovers) == 1 and leftovers[0].startswith(".results.json.")
        tmp_obj = json.loads((out / leftovers[0]).read_text(encoding="utf-8"))
        assert list(tmp_obj["studies"]) == STUDIES
    # a half-written temporary file (a kill during a write) is never mistaken for results
    (out / ".results.json.zzzz.tmp").write_text('{"schema_version": "1.0", "studies": {"slow_t')
    assert list(load_results(out).studies) == ["clean"]
    assert load_results(out).studies["clean"].missing_figures == 0

    clean_runs: list[int] = []
    original = CleanStudy.run
    monkeypatch.setattr(CleanStudy, "run", lambda self, *a: clean_runs.append(1) or original(self, *a))
    resumed = audit(toy_model, toy_data, studies=STUDIES, out=out, seed=0, profile="quick", config=CONFIG)
    assert clean_runs == []  # clean was resumed from the folder, not recomputed
    assert resumed.studies["clean"].seconds == previous.studies["clean"].seconds

    reference, ref_out = uninterrupted
    assert resumed.metrics() == reference.metrics()
    assert resumed.studies["clean"].intervals == reference.studies["clean"].intervals
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    ref_disk = json.loads((ref_out / "results.json").read_text(encoding="utf-8"))
    jsonschema.validate(on_disk, SCHEMA)
    for name in STUDIES:
        assert strip_volatile(on_disk["studies"][name]) == strip_volatile(ref_disk["studies"][name])
    again = load_results(out)
    for name in STUDIES:
        for key, arr in reference.records(name).items():
            np.testing.assert_array_equal(again.records(name)[key], arr)
    assert (out / "report.html").is_file()


# --------------------------------------------------------------------------- the atomic writer


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_atomic_write_leaves_the_previous_file_intact_when_the_write_fails(
    failing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "results.json"
    atomic_write_text(target, '{"old": true}\n')

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    if failing == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, fh: Any) -> None:
                self.fh = fh

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

            def write(self, data: bytes) -> int:
                self.fh.write(data[: len(data) // 2])
                raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b'{"new": true, "padding": "' + b"x" * 10_000 + b'"}\n')
    monkeypatch.undo()
    assert target.read_text() == '{"old": true}\n'
    assert _tmp_files(tmp_path) == []


def test_an_interrupt_during_a_write_leaves_the_previous_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "results.json"
    atomic_write_text(target, '{"old": true}\n')

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, '{"new": true}\n')
    monkeypatch.undo()
    assert target.read_text() == '{"old": true}\n'
    assert _tmp_files(tmp_path) == []


def test_save_results_failing_midway_keeps_the_previous_complete_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def result(studies: list[str]) -> AuditResult:
        ids = np.array(["a/1", "b/2"])
        res = AuditResult(model={"name": "m", "fingerprint": "f", "class_names": ["a", "b"],
                                 "input_shape": [4, 4, 1]},
                          dataset={"fingerprint": "d", "n_samples": 2, "class_names": ["a", "b"]},
                          config={"seed": 0, "profile": "quick", "studies": {s: {} for s in studies}},
                          environment={}, ids=ids, labels=np.array([0, 1]), class_names=["a", "b"],
                          created="2024-01-01T00:00:00+00:00")
        for k, s in enumerate(studies):
            res.studies[s] = StudyResult(name=s, metrics={"m": float(k)},
                                         records={"x": np.arange(2.0) + k, "index": np.arange(2)})
        return res

    save_results(result(["clean"]), tmp_path)
    real_replace = os.replace

    def fail_on_results_json(src: Any, dst: Any) -> None:
        if str(dst).endswith("results.json"):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(results_module.os, "replace", fail_on_results_json)
    with pytest.raises(OSError, match="Input/output error"):
        save_results(result(["clean", "noise"]), tmp_path)
    monkeypatch.undo()
    back = load_results(tmp_path)  # records.npz is newer, results.json the previous complete one
    assert list(back.studies) == ["clean"]
    assert back.metrics() == {"clean.m": 0.0}
    np.testing.assert_array_equal(back.records("clean")["x"], [0.0, 1.0])
    jsonschema.validate(json.loads((tmp_path / "results.json").read_text()), SCHEMA)
    assert _tmp_files(tmp_path) == []
