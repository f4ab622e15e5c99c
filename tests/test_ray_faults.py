"""The Ray engine's promises under delivery faults, rehearsed through ``run_studies_ray(deliver=...)``.

Ray Data re-runs the batches of a dead actor, so a batch can reach the driver twice; a bug or
a lost block can leave one out; batches arrive in whatever order the actors finish. Whatever
happens, every sample is counted exactly once and the records equal the in-process engine's,
or the audit stops with a one-line error naming the missing sample. Each fault is planted in
the stream of finished batches the driver reads (the hook is off in normal runs). A failure
Ray cannot recover is a worker that ends its actor on purpose: one line, and a re-run resumes.
The OOD study's extra samples (reference and OOD sets) are mapped by the workers, not the driver.

Marked slow (a local Ray instance and TensorFlow in an actor); skipped without Ray.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robustkit.data.loader import load_dataset
from robustkit.errors import RobustkitError
from robustkit.model.adapter import load_model
from robustkit.studies import AuditContext, get_study

ray = pytest.importorskip("ray", reason='the Ray engine needs pip install "robustkit[ray]"')

from robustkit.engines.ray_engine import SHARDS, RayOptions, run_studies_ray  # noqa: E402

pytestmark = pytest.mark.slow

BATCH = 6  # 36 toy images: 6 batches
STUDIES = {"clean": {"n_bootstrap": 20},
           "noise": {"n_bootstrap": 20, "severities": [2], "transforms": ["gaussian"], "max_samples": 14}}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _studies() -> list[Any]:
    return [get_study(name).configure("quick", cfg) for name, cfg in STUDIES.items()]


class _Counting:
    """A progress factory that adds up what every bar was told."""

    def __init__(self) -> None:
        self.counted: dict[str, int] = {}

    def __call__(self, *, total: int, desc: str) -> _Counting:
        self.desc = desc
        self.counted.setdefault(desc, 0)
        return self

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.counted[self.desc] += n


@pytest.fixture(scope="module")
def setup(toy_model: Path, toy_data: Path) -> dict[str, Any]:
    model = load_model(toy_model, batch_size=BATCH)
    data = load_dataset(toy_data)
    local = {s.name: s.execute(model, data, AuditContext(seed=1)) for s in _studies()}
    return {"model": model, "data": data, "local": local,
            "spec": {"path": str(toy_model), "batch_size": BATCH}}


def _run(setup: dict[str, Any], *, out: Path | None, deliver: Any = None) -> tuple[dict[str, Any], _Counting]:
    progress = _Counting()
    ctx = AuditContext(seed=1, quiet=False, progress=progress)
    results = run_studies_ray(_studies(), setup["model"], setup["data"], ctx,
                              options=RayOptions(workers=1, batch_size=BATCH), model_spec=setup["spec"],
                              out=out, deliver=deliver)
    return results, progress


def _assert_same_as_in_process(results: dict[str, Any], local: dict[str, Any]) -> None:
    assert list(results) == list(local)
    for name, res in results.items():
        assert res.status == "ok", res.error
        ref = local[name]
        assert set(res.records) == set(ref.records), name
        for key, arr in ref.records.items():
            got = res.records[key]
            assert got.shape == arr.shape, f"{name}.{key}"
            if arr.dtype.kind in "biuUSO":
                np.testing.assert_array_equal(got, arr, err_msg=f"{name}.{key}")
            else:
                np.testing.assert_allclose(got, arr, rtol=1e-5, atol=1e-6, err_msg=f"{name}.{key}")
        assert res.metrics == pytest.approx(ref.metrics, rel=1e-5, abs=1e-6, nan_ok=True), name
        assert res.intervals.keys() == ref.intervals.keys(), name


def _twice(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A retried batch: the first batch comes back again (a separate copy) after the second."""
    first = next(stream)
    yield first
    yield next(stream)
    yield pickle.loads(pickle.dumps(first))
    yield from stream


def _reversed(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from reversed(list(stream))


def _dropping_third(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for k, payload in enumerate(stream):
        if k != 2:
            yield payload


@pytest.mark.parametrize("deliver", [_twice, _reversed], ids=["a-batch-twice", "out-of-order"])
def test_each_sample_once_and_the_in_process_records_whatever_the_delivery(
        deliver: Any, setup: dict[str, Any], tmp_path: Path) -> None:
    results, progress = _run(setup, out=tmp_path, deliver=deliver)
    _assert_same_as_in_process(results, setup["local"])
    n = len(setup["data"])
    assert progress.counted == {"ray": n}  # the bar counts each sample once, duplicates included
    shards = sorted((tmp_path / SHARDS).rglob("*.npz"))
    assert len(shards) == n // BATCH  # one shard per distinct batch
    on_disk = np.concatenate([np.load(f)["pos"] for f in shards])
    assert sorted(on_disk.tolist()) == list(range(n))


def test_a_batch_on_disk_twice_is_counted_once(setup: dict[str, Any], tmp_path: Path) -> None:
    _run(setup, out=tmp_path)
    shards = sorted((tmp_path / SHARDS).rglob("*.npz"))
    shutil.copy(shards[1], shards[1].with_name("00000000-copy-" + shards[1].name))  # e.g. a synced copy
    results, progress = _run(setup, out=tmp_path)  # every sample on disk: nothing left to map
    assert progress.counted == {}
    _assert_same_as_in_process(results, setup["local"])


def test_a_missing_batch_is_an_error_naming_its_samples(setup: dict[str, Any], tmp_path: Path) -> None:
    data = setup["data"]
    with pytest.raises(RobustkitError) as caught:
        _run(setup, out=tmp_path, deliver=_dropping_third)
    message = str(caught.value)
    assert "\n" not in message
    kept = np.concatenate([np.load(f)["pos"] for f in (tmp_path / SHARDS).rglob("*.npz")])
    missing = sorted(set(range(len(data))) - set(kept.tolist()))
    assert len(missing) == BATCH  # exactly the dropped batch
    assert f"got none for {BATCH} of {len(data)}" in message
    for pos in missing[:5]:
        assert repr(str(data.ids[pos])) in message, message
    assert all(repr(str(data.ids[p])) not in message for p in kept), message
    resumed, progress = _run(setup, out=tmp_path)  # a re-run maps only the missing batch
    assert progress.counted == {"ray": BATCH}
    _assert_same_as_in_process(resumed, setup["local"])


def _exiting_clean(flag: Path, shards: Path) -> Any:
    """The clean study, except that the first worker to find two finished shards under ``shards``
    (and no ``flag``) ends its actor on purpose: Ray neither restarts it nor retries its batch,
    and the driver gets an ``ActorDiedError``, as when a node's agent is lost. Defined here, so
    Ray ships the class to the workers by value."""
    from robustkit.studies.clean import CleanStudy

    class ExitingClean(CleanStudy):
        def map(self, model: Any, batch: Any, ctx: AuditContext) -> dict[str, np.ndarray]:
            if not flag.exists() and len(list(shards.rglob("*.npz"))) >= 2:
                flag.touch()
                ray.actor.exit_actor()
            return super().map(model, batch, ctx)

    return ExitingClean.configure("quick", STUDIES["clean"])


def test_a_failure_ray_cannot_recover_is_one_line_and_a_re_run_resumes(setup: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    from robustkit.errors import ClusterError

    data, n = setup["data"], len(setup["data"])

    def run() -> tuple[dict[str, Any], _Counting]:
        progress = _Counting()
        studies = [_exiting_clean(tmp_path / "exited", tmp_path / SHARDS), _studies()[1]]
        results = run_studies_ray(studies, setup["model"], data, AuditContext(seed=1, quiet=False, progress=progress),
                                  options=RayOptions(workers=1, batch_size=BATCH), model_spec=setup["spec"],
                                  out=tmp_path)
        return results, progress

    with pytest.raises(ClusterError) as caught:
        run()
    message = str(caught.value)
    assert caught.value.exit_code == 1 and "\n" not in message, message
    assert "the Ray cluster failed mid-audit and Ray could not recover (ActorDiedError: " in message
    shards = {f: f.stat().st_mtime_ns for f in (tmp_path / SHARDS).rglob("*.npz")}
    kept = sorted(int(p) for f in shards for p in np.load(f)["pos"])
    assert len(kept) >= 2 * BATCH and len(kept) == len(set(kept)) < n
    folder = next(iter(shards)).parent
    assert f"{len(kept)} of {n} samples are kept in {folder}: re-run the same command to resume" in message

    resumed, progress = run()
    assert progress.counted == {"ray": n - len(kept)}  # only the samples no shard holds are mapped again
    assert all(f.stat().st_mtime_ns == t for f, t in shards.items())  # the kept shards are read, not rewritten
    _assert_same_as_in_process(resumed, setup["local"])


OOD = {"sets": ["ct", "synthetic", "inverted"], "n_per_set": 4, "n_bootstrap": 20, "n_gallery": 0}


def test_the_ood_sets_are_mapped_by_the_workers_with_the_in_process_numbers(
        setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustkit.studies.base import EXTRA

    model, data = setup["model"], setup["data"]
    local = get_study("ood").configure("quick", OOD).execute(model, data, AuditContext(seed=1))

    def driver_forward(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the driver ran the model: the extra samples belong to the workers")

    monkeypatch.setattr(model, "logits_and_features", driver_forward)
    progress = _Counting()
    study = get_study("ood").configure("quick", OOD)
    results = run_studies_ray([study], model, data, AuditContext(seed=1, quiet=False, progress=progress),
                              options=RayOptions(workers=1, batch_size=BATCH), model_spec=setup["spec"],
                              out=tmp_path)
    _assert_same_as_in_process(results, {"ood": local})
    n_extra = len(study.extra_data(AuditContext(seed=1)))  # reference split + 3 sets of 4
    assert n_extra >= 12
    assert progress.counted == {"ray": len(data) + n_extra}
    shards = [np.load(f) for f in (tmp_path / SHARDS).rglob("*.npz")]
    extra_rows = sorted(int(i) for z in shards if f"{EXTRA}ood|" in z.files for i in z[f"{EXTRA}ood|"])
    assert extra_rows == list(range(n_extra))  # each extra sample mapped once, by a worker


def test_a_checkpoint_a_worker_cannot_read_is_bad_input_not_a_cluster_failure(setup: dict[str, Any],
                                                                               tmp_path: Path) -> None:
    from robustkit.errors import ClusterError, ModelError

    missing = tmp_path / "elsewhere.keras"  # e.g. a path the driver sees and a node does not
    with pytest.raises(ModelError) as caught:
        run_studies_ray(_studies(), setup["model"], setup["data"], AuditContext(seed=1),
                        options=RayOptions(workers=1, batch_size=BATCH), model_spec={"path": str(missing)},
                        out=tmp_path)
    assert not isinstance(caught.value, ClusterError)
    assert str(caught.value) == f"a Ray worker: {missing}: expected a model checkpoint, got no such file."
    assert not list((tmp_path / SHARDS).rglob("*.npz"))
