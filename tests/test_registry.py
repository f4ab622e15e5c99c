"""The MLflow registry against a real ``mlflow server`` (SQLite backend, local artifact root,
127.0.0.1 on a free port) and a file store: what robustkit logs is read back through
``MlflowClient`` and compared with the audit folder; baselines by alias give the same
comparison as the folders; history over three versions; a server stopped mid-log."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from robustkit import cli
from robustkit.compare import compare
from robustkit.registry.names import mlflow_key, mlflow_keys, robustkit_name
from robustkit.report.views import fmt, fmt_interval
from robustkit.results import load_results, save_results
from tests.test_compare import flipped, make_audit

mlflow = pytest.importorskip("mlflow", reason='the registry tests need pip install "robustkit[mlflow]"')
from mlflow.tracking import MlflowClient  # noqa: E402

ODD = {"slices.accuracy.site=C&view=AP": 0.75, "ood.auroc.mr/ct": 0.9, "clean.sensitivity.Ödem:links": 0.5,
       "clean.nan_metric": float("nan"), "clean.inf_metric": float("inf")}
POLICY = '[[rule]]\nmetric = "clean.accuracy"\nmin = 0.5\n[[rule]]\nmetric = "clean.accuracy"\nmax_drop = 0.01\n'


# ---------------------------------------------------------------- servers and audits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path, *, db: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` with a SQLite store and a local artifact root; returns once /health answers.

    ``db``: a store to start from (a copy of one already migrated starts in seconds, not a minute).
    """
    port = _free_port()
    root.mkdir(parents=True, exist_ok=True)
    if db is not None:
        shutil.copyfile(db, root / "mlflow.db")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(root / "server.log", "wb") as log:  # the child keeps its own handle
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.25)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow-server")


@pytest.fixture(scope="session")
def server(server_root: Path) -> Iterator[str]:
    proc, uri = start_server(server_root)
    yield uri
    stop_server(proc)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own baseline cache; no retries against a server that went away."""
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def write_audit(folder: Path, correct: np.ndarray, *, name: str) -> Path:
    """A small synthetic audit (tests/test_compare.py's builder) with odd metric names, intervals,
    a NaN and an infinity, plus a report, a card and a study export standing in as files."""
    audit = make_audit(correct, name=name)
    clean = audit.studies["clean"]
    for metric, value in ODD.items():
        study, _, rest = metric.partition(".")
        audit.studies.setdefault(study, type(clean)(name=study)).metrics[rest] = value
    clean.intervals["accuracy"] = [clean.metrics["accuracy"] - 0.04, clean.metrics["accuracy"] + 0.03]
    audit.studies["slices"].intervals["accuracy.site=C&view=AP"] = [0.6, 0.85]
    save_results(audit, folder)
    rng = np.random.default_rng(len(name))
    for extra in ("report.html", "card.html", "card.json", "temperature.json"):
        (folder / extra).write_bytes(rng.bytes(2048))
    return folder


def register_version(client: MlflowClient, name: str) -> str:
    """A registered model version whose source is a training run's checkpoint artifact."""
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    exp = client.get_experiment_by_name("training") or client.get_experiment(client.create_experiment("training"))
    run = client.create_run(exp.experiment_id)
    return str(client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test's own set-up printed (MLflow's INFO lines) is not the command's
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def base_correct() -> np.ndarray:
    return np.random.default_rng(0).random(300) < 0.85


# ---------------------------------------------------------------- names


def test_metric_keys_are_valid_one_to_one_and_read_back() -> None:
    from mlflow.utils.validation import _validate_metric_name

    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ019_.- =&/:<>%()[]+,;|é∑") + ["\u00a0", "::3a"]
    names = {"".join(rng.choice(alphabet, size=rng.integers(1, 12))) for _ in range(3000)}
    names |= set(ODD) | {"a" * 400 + "=", "a" * 400 + "&"}
    keys = {mlflow_key(n): n for n in names}
    assert len(keys) == len(names)  # no collision
    for key, name in keys.items():
        for k in (key, key + ".ci_low", key + ".ci_high"):
            _validate_metric_name(k)  # MLflow's own check (characters, path-like keys)
            assert len(k) <= 250
        if ":--" not in key:
            assert robustkit_name(key) == name
    with pytest.raises(Exception, match="already has"):
        mlflow_keys(["a", "a.ci_low"], ["a"])


# ---------------------------------------------------------------- log and read back


def test_logged_run_reads_back_equal_to_the_folder(server: str, tmp_path: Path, base_correct: np.ndarray,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_audit(tmp_path / "a1", base_correct, name="v1")
    client = MlflowClient(server)
    version = register_version(client, "rk-log")
    before = {p.name: sha(p) for p in folder.iterdir()}
    code, _, err = run_cli(["log", str(folder), "--mlflow", server, "--registered-model", "rk-log", "--version", version],
                           capsys)
    assert code == 0, err
    marker = json.loads((folder / "mlflow.json").read_text())
    run = client.get_run(marker["run_id"])
    result = load_results(folder)
    expected = {mlflow_key(k): v for k, v in result.metrics().items()}
    for k in result.metrics():
        if result.interval(k) is not None:
            expected[mlflow_key(k) + ".ci_low"], expected[mlflow_key(k) + ".ci_high"] = result.interval(k)
    got = run.data.metrics
    assert set(got) == set(expected)
    for key, value in expected.items():
        if math.isinf(value):  # MLflow's store clamps; the run says so
            assert got[key] == math.copysign(sys.float_info.max, value)
            assert "clean.inf_metric" in run.data.tags["robustkit.note"]
            continue
        assert (math.isnan(got[key]) and math.isnan(value)) or got[key] == value, key
    assert got["slices.accuracy.site:3dC:26view:3dAP.ci_low"] == 0.6
    assert run.data.params["model.fingerprint"] == "sha256:v1"
    assert run.data.params["studies"] == "clean,perturbation,calibration,slices,ood"
    assert run.data.tags["robustkit.model_version"] == version
    assert run.data.tags["robustkit.registered_model"] == "rk-log"
    assert client.get_model_version("rk-log", version).tags["robustkit.audit_run"] == run.info.run_id
    listed = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "audit")}
    assert listed == set(before) | {"metric_names.json"}
    dst = Path(client.download_artifacts(run.info.run_id, "audit", str(tmp_path / "dl")))
    assert {n: sha(dst / n) for n in before} == before  # byte-identical
    assert run.info.status == "FINISHED"


def test_file_store_without_a_server(tmp_path: Path, base_correct: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustkit.registry import RegistryError, log_audit

    folder = write_audit(tmp_path / "a1", base_correct, name="v1")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(RegistryError, match="MLFLOW_ALLOW_FILE_STORE"):  # MLflow 3's opt-in, said in one line
        log_audit(folder, tracking_uri=uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = log_audit(folder, tracking_uri=uri)
    got = MlflowClient(uri).get_run(run.run_id).data.metrics
    assert got["clean.accuracy"] == load_results(folder).metric("clean.accuracy")
    assert got["clean.sensitivity.:c3:96dem:3alinks"] == 0.5


# ---------------------------------------------------------------- baselines, gate, history


def test_baseline_by_alias_gives_the_folders_comparison(server: str, tmp_path: Path, base_correct: np.ndarray,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from robustkit.registry import log_audit, resolve_baseline

    client = MlflowClient(server)
    base = write_audit(tmp_path / "base", base_correct, name="released")
    cand = write_audit(tmp_path / "cand", flipped(base_correct, 30, to=False), name="candidate")
    version = register_version(client, "rk-alias")
    run = log_audit(base, tracking_uri=server, registered_model="rk-alias", version=version)
    client.set_registered_model_alias("rk-alias", "champion", version)
    fetched = resolve_baseline("mlflow:models:/rk-alias@champion", tracking_uri=server)
    assert fetched is not None and json.loads((fetched / "mlflow.json").read_text())["run_id"] == run.run_id
    by_alias = compare([fetched, cand], labels=["b", "c"], n_boot=200).to_json()
    by_folder = compare([base, cand], labels=["b", "c"], n_boot=200).to_json()
    assert by_alias == by_folder
    assert by_alias["candidates"][0]["metrics"]["clean.accuracy"]["verdict"] == "regression"
    by_run = resolve_baseline(f"mlflow:runs:/{run.run_id}", tracking_uri=server)
    assert by_run == fetched
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # compare has no --mlflow: MLflow's own variable
    code, _, err = run_cli(["compare", "mlflow:models:/rk-alias@champion", str(cand), "--out", str(tmp_path / "cmp"),
                            "--n-boot", "200"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["candidates"][0]["metrics"] == \
        by_folder["candidates"][0]["metrics"]


@pytest.mark.parametrize("uri, message", [
    ("mlflow:models:/rk-errors@nobody", "nobody"),
    ("mlflow:models:/rk-errors/1", "no robustkit.audit_run tag"),
    ("mlflow:runs:/0123456789abcdef0123456789abcdef", "0123456789abcdef"),
    ("mlflow:models:/", "expected mlflow:models:/NAME"),
])
def test_bad_baselines_are_one_line_errors(server: str, tmp_path: Path, base_correct: np.ndarray, uri: str,
                                           message: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(server)
    if not client.search_model_versions("name = 'rk-errors'"):
        register_version(client, "rk-errors")  # version 1, no audit linked
    cand = write_audit(tmp_path / "cand", base_correct, name="c")
    (tmp_path / "policy.toml").write_text(POLICY)
    code, _, err = run_cli(["gate", str(cand), "--policy", str(tmp_path / "policy.toml"), "--baseline", uri,
                            "--mlflow", server], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("robustkit: error:")
    assert message in err and uri in err


def test_a_run_without_the_audit_and_a_silent_server(server: str, tmp_path: Path, base_correct: np.ndarray,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(server)
    bare = client.create_run(client.create_experiment("bare")).info.run_id
    cand = write_audit(tmp_path / "cand", base_correct, name="c")
    out = str(tmp_path / "cmp")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    code, _, err = run_cli(["compare", f"mlflow:runs:/{bare}", str(cand), "--out", out], capsys)
    assert code == 2 and "audit/results.json" in err and bare in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    code, _, err = run_cli(["card", str(cand), "--baseline", "mlflow:models:/rk-x@champion"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "mlflow:models:/rk-x@champion" in err and "127.0.0.1" in err


def test_gate_logs_to_the_candidates_run_and_history_marks_versions(
        server: str, tmp_path: Path, base_correct: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    from robustkit.registry import log_audit

    client = MlflowClient(server)
    worse = flipped(base_correct, 30, to=False)
    audits = [write_audit(tmp_path / f"v{i}", c, name=f"m{i}") for i, c in
              enumerate([base_correct, worse, flipped(worse, 5, to=True, seed=3)], start=1)]
    runs = []
    for folder in audits:
        version = register_version(client, "rk-hist")
        runs.append(log_audit(folder, tracking_uri=server, registered_model="rk-hist", version=version).run_id)
    client.set_registered_model_alias("rk-hist", "champion", "1")
    (tmp_path / "policy.toml").write_text(POLICY)
    code, out, err = run_cli(["gate", str(audits[1]), "--policy", str(tmp_path / "policy.toml"), "--baseline",
                              "mlflow:models:/rk-hist@champion", "--mlflow", server], capsys)
    assert code == 1, err  # the drop of 30 samples is a significant regression
    run = client.get_run(runs[1])
    assert run.data.tags["robustkit.gate"] == "FAIL"
    assert run.data.tags["robustkit.compare.baseline_run"] == runs[0]
    assert client.get_model_version_by_alias("rk-hist", "champion").version == "1"  # never moved
    gate_json = json.loads(Path(client.download_artifacts(runs[1], "gate/gate.json", str(tmp_path / "g"))).read_text())
    assert [r["passed"] for r in gate_json["rules"]] == [True, False]
    assert gate_json["rules"][0]["metrics"][0]["interval"] == load_results(audits[1]).interval("clean.accuracy")

    code, page, err = run_cli(["history", "mlflow:models:/rk-hist", "--metrics", "clean.accuracy", "slices.*",
                               "--out", str(tmp_path / "hist"), "--mlflow", server], capsys)
    assert code == 0, err
    html = (tmp_path / "hist" / "history.html").read_text()
    assert "<script" not in html.lower()
    rows = html.split('id="metric-0"')[1].split("</section>")[0]
    for folder in audits:  # each version's value and interval, as the report formats them
        audit = load_results(folder)
        assert f"<td class=\"num\">{fmt(audit.metric('clean.accuracy'))}</td>" in rows
        assert fmt_interval(audit.interval("clean.accuracy")) in rows
    assert rows.count("first version") == 1 and ">regression<" in rows and rows.count("not tested") == 1
    assert "slices.accuracy.site=C&amp;view=AP" in html
    assert "<td>v1</td><td>champion</td>" in rows


# ---------------------------------------------------------------- failures


def test_server_stopped_mid_log_keeps_the_audit_and_says_what_is_missing(
        server: str, server_root: Path, tmp_path: Path, base_correct: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustkit.registry import RegistryError, log_audit

    folder = write_audit(tmp_path / "a1", base_correct, name="v1")
    before = {p.name: sha(p) for p in folder.iterdir()}
    proc, uri = start_server(tmp_path / "srv", db=server_root / "mlflow.db")  # a second server, ours to stop
    original = MlflowClient.log_artifact

    def stop_before_records(self, run_id, local_path, artifact_path=None):  # type: ignore[no-untyped-def]
        if Path(local_path).name == "records.npz":  # results.json went; the server goes now
            stop_server(proc)
        return original(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifact", stop_before_records)
    try:
        with pytest.raises(RegistryError) as info:
            log_audit(folder, tracking_uri=uri)
    finally:
        stop_server(proc)
    msg = str(info.value)
    assert "not logged: artifacts records.npz, report.html, card.html, card.json, temperature.json" in msg
    assert "the audit on disk is complete" in msg and uri in msg
    assert {p.name: sha(p) for p in folder.iterdir()} == before  # untouched, no mlflow.json


def test_audit_with_mlflow_logs_the_finished_audit(server: str, toy_model: Path, toy_data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit"
    code, _, err = run_cli(["audit", "--model", str(toy_model), "--data", str(toy_data), "--out", str(out),
                            "--studies", "clean", "--profile", "quick", "--quiet", "--mlflow", server], capsys)
    assert code == 0, err
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    client = MlflowClient(server)
    run = client.get_run(run_id)
    assert run.data.metrics["clean.accuracy"] == load_results(out).metric("clean.accuracy")
    assert run.data.params["studies"] == "clean" and run.data.params["profile"] == "quick"
    assert run.data.tags["robustkit.checks"] in ("pass", "warn", "fail")
    got = Path(client.download_artifacts(run_id, "audit/results.json", str(tmp_path / "dl")))
    assert sha(got) == sha(out / "results.json")
    assert f"logged {out} to run {run_id}" in err
