"""The Ray engine: every study's ``map`` on a Ray Data actor pool, ``reduce`` on the driver.

The sample positions of the audit, followed by those of each study's extra samples
(:meth:`~robustkit.studies.base.Study.extra_data`: the OOD study's reference and OOD sets, built
by its ``prepare`` on the driver and shipped with it), become a Ray dataset; ``map_batches`` runs
them through an actor pool (:class:`ray.data.ActorPoolStrategy`), each actor loading the checkpoint once into
a :class:`~robustkit.model.ModelAdapter` and running the maps of every study on its batches.
Images are read by path inside the actors, so every worker must see the checkpoint and the
data at the same paths (a shared filesystem or the same mount on every node). Each batch comes
back to the driver as one payload (positions + records per study), is written to
``<out>/shards/`` as it arrives (a killed driver resumes from there) and the records are put
in sample order with :func:`~robustkit.studies.base.merge_records` before each study's
``reduce``. Since every random draw of a map is keyed by sample id, the result equals the
in-process engine's. Each batch names the Ray node that mapped it: a DEBUG line on the driver
(logger ``robustkit.engines.ray_engine``, with ``positions`` and ``node`` on the record) and a
``node`` entry in its shard.

Faults: Ray Data restarts a dead actor and re-runs its unfinished batches (its actor pools
default to unlimited ``max_restarts`` and ``max_task_retries``); a batch that comes back twice
is kept once (by its positions), batches may arrive in any order, and a sample that no batch
brought back is an error naming it, never a silent gap. A study whose ``map`` raises fails
alone (status ``failed``), as in the in-process engine. A failure Ray cannot recover (an actor
that exits on purpose, a node's agent lost, an object beyond reconstruction: a ``RayError`` at the
driver) stops the audit with one line (:class:`~robustkit.errors.ClusterError`, exit 1) that says
what happened and how many samples the shards keep; a re-run maps only the rest. Tests rehearse
these faults through ``run_studies_ray``'s ``deliver`` hook (a batch delivered twice, dropped, out
of order) and with a worker that exits mid-audit.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.engines.ray_connect import CONNECT_TIMEOUT, check_address, join_cluster
from robustkit.errors import ClusterError, ConfigError, RobustkitError, check_range, param_error
from robustkit.results import StudyResult, atomic_write_bytes
from robustkit.studies.base import EXTRA, AuditContext, Study, log_phases, merge_records

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["Delivery", "RayOptions", "require_ray", "run_studies_ray"]

#: One DEBUG line per batch the driver receives: its positions and the Ray node that mapped it.
log = logging.getLogger(__name__)
INSTALL = 'pip install "robustkit[ray]"'
SHARDS = "shards"

Payload = dict[str, Any]
#: study name -> (first position, count) of its :meth:`Study.extra_data` samples, numbered after
#: the audit's samples: the pool maps positions ``0 .. N - 1`` (the audit) and then these.
Extras = dict[str, tuple[int, int]]
#: A fault-injection hook for tests: takes the stream of finished batches (payloads with
#: ``pos``, ``studies``, ``seconds``) as Ray delivers them to the driver and returns the stream
#: the driver reads (a batch twice, one left out, another order). ``None``: as delivered.
Delivery = Callable[[Iterator[Payload]], Iterator[Payload]]


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine runs.

    Attributes:
        address: a cluster to connect to (``ray://...`` or ``host:port``); ``None`` uses
            ``RAY_ADDRESS`` if set, else starts a local instance with this machine's CPUs and
            stops it at the end.
        workers: actors in the pool (each holds one copy of the model).
        cpus_per_worker: CPUs reserved per actor (TensorFlow's thread pools are sized to it).
        gpus_per_worker: GPUs per actor (fractions share a GPU).
        batch_size: samples per map call (default: the model's batch size).
        connect_timeout: seconds to reach a named cluster (a TCP connection to the address,
            then ``ray.init``) before the audit stops with a one-line error.
    """

    address: str | None = None
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int | None = None
    connect_timeout: float = CONNECT_TIMEOUT

    def validate(self) -> None:
        check_range("workers", self.workers, low=1, integer=True)
        check_range("cpus_per_worker", self.cpus_per_worker, low=0.0, low_open=True)
        check_range("gpus_per_worker", self.gpus_per_worker, low=0.0)
        if self.batch_size is not None:
            check_range("batch_size", self.batch_size, low=1, integer=True)
        check_range("connect_timeout", self.connect_timeout, low=0.0, low_open=True)
        if self.address is not None and not isinstance(self.address, str):
            raise param_error("ray_address", "a string such as 'ray://head:10001' or 'auto'", self.address)


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"The 'engine' option 'ray' needs Ray: {INSTALL}") from None
    return ray


# ------------------------------------------------------------------------------ the actor


class _StudyMapper:
    """One Ray actor: the checkpoint loaded once, every study's ``map`` on each batch (the audit's
    samples and the studies' extra samples alike)."""

    def __init__(self, *, model_spec: dict[str, Any], studies: list[Study], data: Dataset,
                 selections: dict[str, np.ndarray], extras: Extras, seed: int, threads: int) -> None:
        entered = time.time()  # after Ray placed the actor and unpickled these arguments (importing robustkit)
        _limit_threads(threads)  # imports TensorFlow
        set_up = time.time()
        from robustkit.model.adapter import load_model

        self.studies = studies
        self.data = data
        self.selections = {k: _lookup(v) for k, v in selections.items()}
        self.extras = extras
        self.broken: dict[str, str] | None = None
        self.node = _node_id()
        self.start: dict[str, float] | None = {"entered": entered, "tensorflow_s": set_up - entered}
        try:
            t = time.perf_counter()
            self.model = load_model(**model_spec)
            loaded = time.perf_counter()
            # the forward graph traced on one image now, so that the first batch pays only its own passes
            self.model.logits(np.zeros((1, *self.model.input_shape), np.float32))
            self.start.update(load_s=loaded - t, trace_s=time.perf_counter() - loaded)
        except RobustkitError as exc:  # bad input on this worker (a checkpoint it cannot read): told to the
            self.broken = _error(exc)  # driver with its first batch; raised, Ray would retry it as a crash
            return
        t = time.perf_counter()
        self.ctx = AuditContext(seed=seed, model_info=self.model.describe())
        self.start.update(describe_s=time.perf_counter() - t, ready=time.time())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        positions = np.asarray(batch["pos"], dtype=np.int64)
        payload: Payload = {"pos": positions, "studies": {}, "seconds": {}, "broken": self.broken,
                            "node": self.node, "start": self.start}
        self.start = None  # told once, with the actor's first batch
        for study in self.studies if self.broken is None else []:
            local = self.selections[study.name](positions)  # positions in the study's own subset
            self._map(payload, study.name, study, self.data, positions, local)
            if study.name in self.extras:
                first, count = self.extras[study.name]
                local = np.where((positions >= first) & (positions < first + count), positions - first, -1)
                extra = study.extra_data(self.ctx)
                assert extra is not None  # prepared on the driver, shipped with the study
                self._map(payload, EXTRA + study.name, study, extra, local, local)
        return {"payload": np.array([pickle.dumps(payload, protocol=5)], dtype=object),
                "first": positions[:1], "n": np.array([len(positions)])}

    def _map(self, payload: Payload, key: str, study: Study, source: Dataset, rows: np.ndarray,
             local: np.ndarray) -> None:
        """``study.map`` over ``source``'s ``rows`` where ``local >= 0``, kept under ``key``
        with the ``local`` positions it merges at (its error, if it raised)."""
        keep = local >= 0
        if not keep.any():
            return
        start = time.perf_counter()
        try:
            payload["studies"][key] = (local[keep], study.map(self.model, source.subset(rows[keep]), self.ctx))
        except Exception as exc:  # noqa: BLE001 - reported on the driver, the other studies go on
            payload["studies"][key] = (None, _error(exc))
        payload["seconds"][key] = time.perf_counter() - start


def _error(exc: Exception) -> dict[str, str]:
    from robustkit.errors import RobustkitError

    kind = type(exc).__name__ if isinstance(exc, RobustkitError) else ""
    return {"kind": kind, "message": f"{type(exc).__name__}: {exc}"[:2000], "text": str(exc)}


def _node_id() -> str:
    """The id (hex) of the Ray node this actor runs on ("" outside Ray)."""
    import ray

    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""


def _lookup(selected: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function from audit positions to positions in a study's subset (-1: not selected)."""
    table = {int(p): i for i, p in enumerate(selected)}
    return lambda pos: np.array([table.get(int(p), -1) for p in pos], dtype=np.int64)


def _limit_threads(threads: int) -> None:
    """TensorFlow in an actor uses its reserved CPUs only, and grows GPU memory on demand."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from robustkit._tf import tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # already initialised in this process (a reused worker): keep its settings
        pass


# ------------------------------------------------------------------------------ the driver


def run_studies_ray(
    studies: list[Study],
    model: ModelAdapter,
    data: Dataset,
    ctx: AuditContext,
    *,
    options: RayOptions,
    model_spec: dict[str, Any],
    out: Path | None = None,
    on_result: Callable[[StudyResult], None] | None = None,
    deliver: Delivery | None = None,
) -> dict[str, StudyResult]:
    """Run ``studies`` on ``data`` through Ray and return their reduced, stamped results.

    Args:
        studies: configured studies (``clean`` first, as the runner orders them).
        model: the driver's adapter (for its description and batch size; the actors load
            their own from ``model_spec``).
        data: the audit's samples.
        ctx: the audit context (seed, progress, reference).
        options: the engine's settings.
        model_spec: keyword arguments of :func:`robustkit.model.adapter.load_model` that every
            actor uses (the checkpoint path must be readable on every node).
        out: the audit folder; finished batches are kept in ``out/shards`` for resume.
        on_result: called with each study's result as soon as it is reduced.
        deliver: tests only: rearranges the batches as the driver receives them
            (:data:`Delivery`); off by default.

    Raises:
        RobustkitError: a sample that no batch brought back (named by its id); the finished
            batches stay in ``out/shards`` and a re-run maps the rest.
    """
    options.validate()
    ray = require_ray()
    ctx.model_info = model.describe()
    selections = {s.name: s.select(data, ctx) for s in studies}
    for study in studies:  # driver-side decisions (a split) travel with the study to the workers
        study.prepare(data.subset(selections[study.name]), ctx)
    extras = _extra_ranges(studies, ctx, first=len(data))
    total = len(data) + sum(count for _, count in extras.values())
    key = _run_key(studies, model, data, ctx.seed)
    shard_dir = out / SHARDS / key if out is not None else None
    done = _load_shards(shard_dir)
    todo = np.setdiff1d(np.arange(total), np.concatenate([p["pos"] for p in done]) if done else [])
    if done and not ctx.quiet:
        print(f"ray: {total - len(todo)} of {total} samples from finished shards in {shard_dir}",
              file=sys.stderr, flush=True)
    started = _connect(ray, options)
    try:
        if len(todo):
            done += _map_on_ray(ray, todo, total, studies, data, selections, extras, ctx, options, model_spec, model,
                                shard_dir, deliver)
    finally:
        if started:
            ray.shutdown()
    _check_every_sample(done, total, _namer(data, studies, ctx, extras))
    results = {}
    for study in studies:
        results[study.name] = _reduce(study, done, data, selections[study.name], ctx, extras)
        if on_result is not None:
            on_result(results[study.name])
    return results


def _extra_ranges(studies: list[Study], ctx: AuditContext, *, first: int) -> Extras:
    """Each prepared study's extra samples as a range of pool positions from ``first`` on."""
    extras: Extras = {}
    for study in studies:
        extra = study.extra_data(ctx)
        if extra is not None and len(extra):
            extras[study.name] = (first, len(extra))
            first += len(extra)
    return extras


def _namer(data: Dataset, studies: list[Study], ctx: AuditContext, extras: Extras) -> Callable[[int], str]:
    """The id of a pool position, for errors: an audit sample's, or ``<study> extra <its id>``."""
    def name(pos: int) -> str:
        if pos < len(data):
            return str(data.ids[pos])
        for study in studies:
            first, count = extras.get(study.name, (0, 0))
            extra = study.extra_data(ctx) if first <= pos < first + count else None
            if extra is not None:
                return f"{study.name} extra {extra.ids[pos - first]}"
        return f"position {pos}"
    return name


def _connect(ray: Any, options: RayOptions) -> bool:
    """Join the named cluster (or ``RAY_ADDRESS``) within ``options.connect_timeout``; else start
    a local one. True if started here."""
    _quiet(ray)
    if ray.is_initialized():
        return False
    address = check_address(options.address, timeout=options.connect_timeout)
    if address:
        join_cluster(ray, address, timeout=options.connect_timeout)
        return True
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    return True


def _quiet(ray: Any) -> None:
    """No Ray Data progress bars or INFO lines on the driver: robustkit draws its own bar. Ray
    Data's ERROR lines (a traceback when its execution aborts) stay in its log file under the Ray
    session's ``logs/``: the driver says what happened in one line (:func:`_cluster_failed`)."""
    import logging

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def _map_on_ray(ray: Any, todo: np.ndarray, total: int, studies: list[Study], data: Dataset,
                selections: dict[str, np.ndarray], extras: Extras, ctx: AuditContext, options: RayOptions,
                model_spec: dict[str, Any], model: ModelAdapter, shard_dir: Path | None,
                deliver: Delivery | None = None) -> list[Payload]:
    bs = int(options.batch_size or model.batch_size)
    ds = ray.data.from_items([{"pos": int(p)} for p in todo], override_num_blocks=max(1, -(-len(todo) // bs)))
    mapped = ds.map_batches(
        _StudyMapper,
        batch_size=bs,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        fn_constructor_kwargs={
            "model_spec": model_spec, "studies": studies, "data": data, "selections": selections,
            "extras": extras, "seed": ctx.seed, "threads": int(max(1, options.cpus_per_worker)),
        },
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
    )  # Ray Data's actor pools restart dead actors and retry their tasks by default
    got: list[Payload] = []
    seen: set[tuple[int, ...]] = set()
    began = time.time()
    broken: dict[str, str] | None = None
    stream = (pickle.loads(b["payload"][0]) for b in mapped.iter_batches(batch_size=1, batch_format="numpy"))
    with ctx.bar(len(todo), "ray") as bar:
        try:
            for payload in deliver(stream) if deliver is not None else stream:
                if payload.get("broken"):  # a worker that could not start: bad input, said once the stream ends
                    broken = payload["broken"]
                    continue
                if payload.get("start"):
                    _log_start(payload["start"], payload.get("node", ""), began)
                sig = tuple(int(p) for p in payload["pos"])
                if sig in seen:  # a retried batch that also finished the first time
                    continue
                seen.add(sig)
                node = payload.get("node", "")
                log.debug("batch of %d samples from position %d mapped on node %s", len(sig), min(sig), node,
                          extra={"positions": sig, "node": node})
                if shard_dir is not None:
                    _save_shard(shard_dir, payload)
                got.append(payload)
                bar.update(len(sig))
        except ray.exceptions.RayError as exc:  # what Ray could not recover: a node, an agent, an object lost
            done = total - len(todo) + sum(len(sig) for sig in seen)
            raise _cluster_failed(exc, done=done, total=total, shard_dir=shard_dir) from None
    if broken is not None:  # the other workers' batches are in the shards; a re-run maps the rest
        raise (_error_class(broken) or RobustkitError)("a Ray worker: " + broken["text"])
    return got


def _log_start(start: dict[str, float], node: str, began: float) -> None:
    """One DEBUG line per actor: what its start cost, measured apart (``actor_start`` on the record:
    ``placed_s`` from the map's start to the actor's constructor, which covers Ray's scheduling, the
    worker process and unpickling the studies (importing robustkit), ``tensorflow_s`` importing and
    setting up TensorFlow, ``load_s`` the checkpoint, ``trace_s`` the first forward pass on one image
    (graph tracing), ``describe_s`` the model's description, ``ready_s`` from the map's start to a
    ready actor; wall clocks of driver and worker, so across machines it
    assumes synchronised clocks)."""
    nan = float("nan")
    parts = {"placed_s": start["entered"] - began, "tensorflow_s": start.get("tensorflow_s", nan),
             "load_s": start.get("load_s", nan), "trace_s": start.get("trace_s", nan),
             "describe_s": start.get("describe_s", nan), "ready_s": start.get("ready", nan) - began}
    log.debug("actor on node %s ready %.1f s after the map started (placed %.1f s, TensorFlow %.1f s, checkpoint "
              "%.1f s, tracing %.1f s, description %.1f s)", node, parts["ready_s"], parts["placed_s"],
              parts["tensorflow_s"], parts["load_s"], parts["trace_s"], parts["describe_s"],
              extra={"actor_start": parts, "node": node})


def _cluster_failed(exc: BaseException, *, done: int, total: int, shard_dir: Path | None) -> RobustkitError:
    """One line for a failure Ray could not recover: what happened, what is kept, how to resume.
    A robustkit error inside it (an actor's bad input, e.g. a checkpoint a node cannot read)
    is raised as itself."""
    node: BaseException | None = exc
    while node is not None:
        inner = getattr(node, "cause", None)  # Ray's task errors carry the worker's exception
        if isinstance(node, RobustkitError) and not isinstance(inner, BaseException):
            return node
        node = inner if isinstance(inner, BaseException) else node.__cause__
    lines = [" ".join(ln.split()) for ln in str(exc).splitlines() if ln.strip()] or [""]
    said = " ... ".join(dict.fromkeys([lines[0], lines[-1]]))  # Ray's headline and its reason
    said = f"{type(exc).__name__}: {said[:400]}"
    kept = (f"{done} of {total} samples are kept in {shard_dir}: re-run the same command to resume from "
            "them (--fresh starts over)" if shard_dir is not None else
            "nothing is kept (no output folder): re-run with --out to keep finished batches")
    return ClusterError(f"ray engine: the Ray cluster failed mid-audit and Ray could not recover ({said}); {kept}.")


def _check_every_sample(payloads: list[Payload], total: int, name: Callable[[int], str]) -> None:
    """Raise a one-line error naming the samples (ids) that no finished batch covers."""
    covered = np.concatenate([np.asarray(p["pos"], dtype=np.int64) for p in payloads] or [np.zeros(0, np.int64)])
    missing = np.setdiff1d(np.arange(total), covered)
    if len(missing):
        named = ", ".join(repr(name(int(i))) for i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise RobustkitError(f"ray engine: expected records of every sample, got none for {len(missing)} of "
                             f"{total}: {named}{more}; re-run into the same folder to map them.")


def _reduce(study: Study, payloads: list[Payload], data: Dataset, selected: np.ndarray, ctx: AuditContext,
            extras: Extras) -> StudyResult:
    """Merge the study's records (and its extra samples' records, under :data:`EXTRA` keys) in
    sample order and reduce them. Its ``seconds`` are the map time summed over the workers
    (worker-seconds, as in one process) plus the reduce."""
    start = time.perf_counter()
    keys = [study.name] + ([EXTRA + study.name] if study.name in extras else [])
    mapped = sum(float(p.get("seconds", {}).get(k, 0.0)) for p in payloads for k in keys)
    parts = {k: [p["studies"][k] for p in payloads if k in p["studies"]] for k in keys}
    errors = [rec for k in keys for pos, rec in parts[k] if pos is None]
    if errors:
        return _failed(study, errors[0], time.perf_counter() - start)
    sub = data.subset(selected)
    records = _merged(parts[study.name], len(sub), study.name)
    if study.name in extras:
        extra = _merged(parts[EXTRA + study.name], extras[study.name][1], study.name)
        records.update({EXTRA + k: v for k, v in extra.items()})
    reducing = time.perf_counter()
    result = study.reduce(records, sub, ctx)
    log_phases(study.name, len(sub), mapped, time.perf_counter() - reducing)
    return study.finalize(result, selected, mapped + time.perf_counter() - start)


def _merged(parts: list[Any], n: int, name: str) -> dict[str, np.ndarray]:
    """One set of records from batches given as ``(local positions, records)``, each batch once."""
    unique: dict[tuple[int, ...], Any] = {}
    for pos, rec in parts:
        unique.setdefault(tuple(int(i) for i in pos), (pos, rec))
    return merge_records(list(unique.values()), n, study=name)


def _error_class(error: dict[str, str]) -> type[RobustkitError] | None:
    """The robustkit error class a worker caught (by name), or None for any other exception."""
    from robustkit import errors as E

    cls = getattr(E, error["kind"], None) if error["kind"] else None
    return cls if isinstance(cls, type) and issubclass(cls, E.RobustkitError) else None


def _failed(study: Study, error: dict[str, str], seconds: float) -> StudyResult:
    """A study whose map raised: a robustkit error (bad input) stops the audit as in-process."""
    cls = _error_class(error)
    if cls is not None:
        raise cls(error["text"])
    return StudyResult(name=study.name, status="failed", seconds=seconds, config=study.config_dict(),
                       error=error["message"])


# ------------------------------------------------------------------------------ shards on disk


def _run_key(studies: list[Study], model: ModelAdapter, data: Dataset, seed: int) -> str:
    """Shards belong to one model, data, seed and set of study configs."""
    text = repr((model.fingerprint, data.fingerprint, seed, [(s.name, s.config_dict()) for s in studies]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_shard(folder: Path, payload: dict[str, Any]) -> None:
    """One finished batch as ``.npz`` (no pickles on disk): ``pos``, ``node`` (the Ray node that
    mapped it) and ``<study>|<record>``."""
    folder.mkdir(parents=True, exist_ok=True)
    pos = np.asarray(payload["pos"], dtype=np.int64)
    arrays: dict[str, np.ndarray] = {"pos": pos, "node": np.asarray(str(payload.get("node", "")))}
    for name, (local, records) in payload["studies"].items():
        if local is None:  # a failed map is re-run on resume, not stored
            continue
        arrays[f"{name}|"] = np.asarray(local, dtype=np.int64)
        arrays[f"{name}|seconds|"] = np.asarray(payload.get("seconds", {}).get(name, 0.0))
        arrays.update({f"{name}|{k}": np.asarray(v) for k, v in records.items()})
    digest = hashlib.sha1(pos.tobytes()).hexdigest()[:8]
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(folder / f"{int(pos.min()):08d}-{len(pos):05d}-{digest}.npz", buf.getvalue())


def _load_shards(folder: Path | None) -> list[dict[str, Any]]:
    """The batches a killed run finished (a torn or unreadable file is dropped and re-run)."""
    if folder is None or not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.glob("*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception:  # noqa: BLE001 - re-computed, never trusted
            f.unlink(missing_ok=True)
            continue
        studies: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        for key in arrays:
            name, _, rec = key.partition("|")
            if rec == "seconds|":
                seconds[name] = float(arrays[key])
            elif key not in ("pos", "node") and not rec:
                studies[name] = (arrays[key], {k.partition("|")[2]: v for k, v in arrays.items()
                                               if k.startswith(name + "|") and k not in (key, f"{name}|seconds|")})
        out.append({"pos": arrays["pos"], "studies": studies, "seconds": seconds,
                    "node": str(arrays["node"]) if "node" in arrays else ""})
    return out
