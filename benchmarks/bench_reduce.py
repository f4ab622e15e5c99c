"""Every built-in study's ``reduce`` on N = 1,000, 10,000 and 100,000 synthetic samples: time,
peak memory and how both grow with N (no model in the measured part).

Usage (from the repository root)::

    python benchmarks/bench_reduce.py --out reduce.json
    python benchmarks/bench_reduce.py --studies clean,ood --sizes 1000,10000 --timeout 120
    python benchmarks/bench_reduce.py --multilabel --studies slices --seed-dir /tmp/rk-seed-ml

How the records are made: a small phantom (``--per-class`` images per class, 64 px, three
sites of metadata) and an untrained small CNN are mapped once by every study (the demo's
options, ``robustkit.demo.DEMO_AUDIT``, on the ``standard`` profile, without ``max_samples``
so that the reduce sees every sample); those are the shapes, dtypes and value ranges of
what each study's ``map`` returns. For a size N, a child process draws N rows of them with a
seeded generator (``numpy.random.default_rng(--seed)``; the first rows are the small set
itself, so every sample appears), moves the copies' float values by a relative 1e-3 (distinct
scores, as in real data: ties would make the sorts cheap), gives the copies new sample ids, carries the study's
driver-side state over to them (the calibration split, the OOD reference split; fixed-size
choices such as the adversarial checks' or saliency's sub-studies keep their first-copy
samples: saliency's copies are outside its stability, randomisation and activation-panel
sets, holding what its map writes there), then times ``study.reduce`` once. The OOD sets
(extra records) keep their size: they do not grow with the audit. The rows are drawn in
chunks of :data:`CHUNK` (the same numbers as one draw), so that building the records never
holds a second copy of them.

Memory-mapped records: the studies in :data:`MAPPED` (saliency, whose records keep
per-sample maps, about 111 KB a sample) get their grown records as ``.npy`` files, written
chunk by chunk into a temporary folder under ``--records-dir`` (default the system's
temporary folder; removed after the run) and loaded with ``numpy.load(mmap_mode="r")``, as
records read per study from disk would be; their size is then checked against that
folder's free disk space (less 2 GB) instead of ``--max-records-mb``, and ``records_mb``
is what they take on disk. The pages the reduce reads count in its RSS.

Each (study, N) runs in its own process so that peaks do not mix: ``rss_before`` is the
RSS once the records are built (where Linux allows, the peak is then restarted there by
writing 5 to ``/proc/self/clear_refs``, so that building the records does not hide the
reduce's own peak; otherwise the peak so far), ``rss_peak`` the peak RSS (``VmHWM``) at the
end of the reduce, ``reduce_mb`` the difference (what the reduce itself added above the
records). A run past
``--timeout`` seconds is killed and reported as such; a size whose records alone would take
more than ``--max-records-mb`` (or the free disk, for :data:`MAPPED` studies) is not run and said so. The growth exponent is the log-log
slope of the time (and of ``reduce_mb``) between consecutive sizes: 1 is linear in N.

Multi-label (``--multilabel``): the phantom is the multi-label one (``generate_phantom(...,
multilabel=True)``: ``4 * --per-class`` images with co-occurring findings, the same three sites
of metadata) and the CNN has a sigmoid head with one output per finding (sidecar ``"output":
"multilabel"``, no critical class), so a study's reduce takes its multi-label path (the slices
study: every slice's per-finding AUROC intervals and its gap test against the rest). Only the
slices study is measured this way so far; others may run too. Keep a separate ``--seed-dir``
for it (the seed records of the two kinds differ; ``context.json`` records which kind it holds
and a mismatch is refused).

Target (issue 29): every study's reduce at N = 100,000 in under 60 s and under 4 GB
(``rss_peak``) on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CRITICAL = "COVID-19"
#: studies whose grown records are written to disk and memory-mapped (see the module doc)
MAPPED = ("saliency",)
#: rows drawn and written at a time
CHUNK = 512

CHILD = r"""
import json, pickle, resource, sys, time
import numpy as np
args = json.loads(sys.argv[1])
sys.path.insert(0, args["repo"])
sys.path.insert(0, args["bench"])
from bench_reduce import grow
study, records, data, ctx = grow(args["seed_dir"], args["study"], args["n"], args["seed"], mmap_dir=args["mmap_dir"])
def rss(field="VmHWM"):  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak over fork)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
import gc
gc.collect()
try:  # restart the peak at the records' RSS, so that building them does not hide the reduce's peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss("VmRSS")
except OSError:
    before = rss()
t0 = time.perf_counter()
result = study.reduce(records, data, ctx)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rss_before": before, "rss_peak": rss(), "status": result.status,
                  "n_metrics": len(result.metrics), "n_intervals": len(result.intervals),
                  "records_mb": sum(v.nbytes for v in records.values()) / 2**20}))
"""


def _make_model(path: Path, size: int, *, multilabel: bool = False) -> Path:
    """An untrained small CNN at ``size`` px (the reduce's cost does not depend on its weights):
    a softmax over the three classes, or (``multilabel``) a sigmoid per finding."""
    from robustkit._tf import keras
    from robustkit.data.phantom import FINDINGS

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 1))
    x = inp
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    names = list(FINDINGS) if multilabel else ["COVID-19", "NORMAL", "Viral Pneumonia"]
    out = keras.layers.Dense(len(names), activation="sigmoid" if multilabel else "softmax", name="predictions")(x)
    keras.Model(inp, out, name="bench_cnn").save(path)
    meta: dict = {"class_names": names, "arch": "bench_cnn", **({"output": "multilabel"} if multilabel else {})}
    path.with_name(path.stem + ".meta.json").write_text(json.dumps(meta))
    return path


def _config(name: str) -> dict:
    from robustkit.demo import DEMO_AUDIT

    return {k: v for k, v in DEMO_AUDIT.get(name, {}).items() if k != "max_samples"}


def _task(model_info: dict, names: list[str]):
    """The demo's critical class for the single-label model; none for the findings of the multi-label one."""
    from robustkit.task import Task

    return Task.from_results(model_info, names, {"critical_class": CRITICAL if CRITICAL in names else None})


def seed_records(seed_dir: Path, studies: list[str], *, per_class: int, size: int, multilabel: bool = False) -> None:
    """Map the small phantom once per study; write its records, its prepared state and the context."""
    from robustkit.data import load_dataset
    from robustkit.data.phantom import generate_phantom
    from robustkit.model.adapter import load_model
    from robustkit.studies import get_study
    from robustkit.studies.base import EXTRA, AuditContext

    root = generate_phantom(seed_dir / "data", per_class=per_class, size=size, seed=0, sites=3, multilabel=multilabel)
    root = root / "manifest.csv" if multilabel else root  # the multi-label form is read from its manifest
    model = load_model(_make_model(seed_dir / "bench.keras", size, multilabel=multilabel))
    data = load_dataset(root, class_names=list(model.class_names))
    info = model.describe()
    if not (seed_dir / "context.json").exists():
        (seed_dir / "context.json").write_text(json.dumps({"root": str(root), "model_info": info,
                                                           "multilabel": multilabel}, default=str))
    for name in studies:
        t0 = time.perf_counter()
        ctx = AuditContext(seed=0, model_info=info, task=_task(info, list(model.class_names)))
        study = get_study(name).configure("standard", _config(name))
        study.prepare(data, ctx)
        records = study.map_all(model, data, ctx)
        extra = study.extra_data(ctx)
        if extra is not None:
            records.update({EXTRA + k: v for k, v in study.map_all(model, extra, ctx).items()})
        (seed_dir / f"{name}.pkl").write_bytes(pickle.dumps(study))
        import numpy as np

        np.savez(seed_dir / f"{name}.npz", **records)
        print(f"  mapped {name} on {len(data)} images in {time.perf_counter() - t0:.1f} s", flush=True)


def _carry_state(study, name: str, small, big, src) -> None:
    """The driver-side state of ``prepare`` over the grown samples (what is a fraction grows with
    them; what is a fixed number of samples keeps the first copy's)."""
    import numpy as np

    if name == "calibration":
        ids = np.asarray(big.ids)
        study._evaluation = frozenset(ids[np.isin(np.asarray(small.ids)[src], sorted(study._evaluation))].tolist())
    if name == "ood" and study._ref_pos is not None:
        pos = np.flatnonzero(np.isin(src, study._ref_pos))
        study._ref_pos, study._ref_labels, study._ref_targets = pos, big.labels[pos], big.targets[pos]


def _jitter(part, first: int, rng) -> None:
    """Move each value of a float record's drawn copies (``part``'s rows from ``first`` on) by a
    relative 1e-3, in place, so that scores are distinct as in real data (ties would flatter the sorts)."""
    if part.dtype.kind == "f" and first < len(part):
        part[first:] *= (1 + 1e-3 * rng.standard_normal(part[first:].shape)).astype(part.dtype)


def _outside_sub_studies(name: str, key: str, part) -> None:
    """Set ``part`` (copies' rows of record ``key``) to what the map writes for a sample outside
    the study's fixed-size sub-studies (saliency: stability, randomisation, activation panel)."""
    import numpy as np

    if name != "saliency" or not len(part):
        return
    if key in ("stability_role", "rand_role", "act_role", "stability_changed"):
        part[:] = 0
    elif key == "act_channels":
        part[:] = -1
    elif key in ("stability_spearman", "stability_ssim", "stability_topk", "max_sensitivity", "act_maps") or (
            key.startswith("rand_") and key != "rand_steps"):
        part[:] = np.nan


def _chunks(name: str, key: str, v, src, m: int, rng):
    """Record ``key`` of the grown samples, ``v[src]``, in chunks of :data:`CHUNK` rows: the
    copies (rows from ``m`` on) jittered and outside the sub-studies."""
    for lo in range(0, len(src), CHUNK):
        part = v[src[lo:lo + CHUNK]]
        first = max(m - lo, 0)
        _jitter(part, first, rng)
        _outside_sub_studies(name, key, part[first:])
        yield part


def _grown(name: str, key: str, v, src, m: int, rng, mmap_dir: Path | None):
    """One grown record, in memory, or written to ``mmap_dir/key.npy`` and memory-mapped."""
    import numpy as np

    shape = (len(src), *v.shape[1:])
    if mmap_dir is None:
        out = np.empty(shape, v.dtype)
        for lo, part in zip(range(0, len(src), CHUNK), _chunks(name, key, v, src, m, rng)):
            out[lo:lo + len(part)] = part
        return out
    path = mmap_dir / f"{key}.npy"
    with open(path, "wb") as f:  # plain writes: the file's pages never enter this process's RSS
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(v.dtype),
                                                 "fortran_order": False, "shape": shape})
        for part in _chunks(name, key, v, src, m, rng):
            f.write(np.ascontiguousarray(part).tobytes())
    return np.load(path, mmap_mode="r")


def grow(seed_dir: str, name: str, n: int, seed: int, *, mmap_dir: str | None = None):
    """``(study, records, data, ctx)`` for ``n`` samples drawn from the seed records (see the
    module doc); with ``mmap_dir``, the grown records are ``.npy`` files there, memory-mapped."""
    import dataclasses

    import numpy as np

    from robustkit.data import load_dataset
    from robustkit.studies.base import EXTRA, AuditContext

    seed_path = Path(seed_dir)
    context = json.loads((seed_path / "context.json").read_text())
    small = load_dataset(context["root"], class_names=context["model_info"]["class_names"])
    study = pickle.loads((seed_path / f"{name}.pkl").read_bytes())
    base = dict(np.load(seed_path / f"{name}.npz", allow_pickle=True))  # written by seed_records
    m = len(small)
    src = np.concatenate([np.arange(min(m, n)), np.random.default_rng(seed).integers(0, m, max(n - m, 0))])
    samples = [s if i < m else dataclasses.replace(s, id=f"{s.id}~{i}") for i, s in
               enumerate(small.samples[j] for j in src)]
    big = small._derive(samples)
    _carry_state(study, name, small, big, src)
    rng = np.random.default_rng([seed, 1])
    where = None if mmap_dir is None else Path(mmap_dir)
    records = {k: (v if k.startswith(EXTRA) else _grown(name, k, v, src, m, rng, where)) for k, v in base.items()}
    info = context["model_info"]
    ctx = AuditContext(seed=0, model_info=info, task=_task(info, list(info["class_names"])))
    return study, records, big, ctx


def _records_mb(seed_dir: Path, name: str, n: int) -> float:
    """What the grown records will take (the extra records do not grow)."""
    import numpy as np

    with np.load(seed_dir / f"{name}.npz", allow_pickle=True) as z:
        arrays = {k: z[k] for k in z.files}
    from robustkit.studies.base import EXTRA

    return sum(v.nbytes / len(v) * n if not k.startswith(EXTRA) and len(v) else v.nbytes
               for k, v in arrays.items()) / 2**20


def _child(seed_dir: Path, name: str, n: int, seed: int, timeout: float, mmap_dir: Path | None = None) -> dict:
    args = {"repo": str(REPO), "bench": str(Path(__file__).resolve().parent), "seed_dir": str(seed_dir),
            "study": name, "n": n, "seed": seed, "mmap_dir": None if mmap_dir is None else str(mmap_dir)}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=env,
                              capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"study": name, "n": n, "status": f"killed after {timeout:.0f} s", "seconds": None}
    if proc.returncode != 0:
        return {"study": name, "n": n, "status": f"failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1][:200]}",
                "seconds": None, "wall": time.perf_counter() - t0}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(study=name, n=n, reduce_mb=out["rss_peak"] - out["rss_before"])
    return out


def _run(seed_dir: Path, name: str, n: int, a: argparse.Namespace) -> dict:
    """One (study, N) child, its records in memory or (:data:`MAPPED`) memory-mapped from disk."""
    import shutil

    need = _records_mb(seed_dir, name, n)
    if name not in MAPPED:
        if need > a.max_records_mb:
            return {"study": name, "n": n, "seconds": None, "records_mb": need,
                    "status": f"not run: its records alone take {need:.0f} MB (--max-records-mb)"}
        return _child(seed_dir, name, n, a.seed, a.timeout)
    a.records_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(a.records_dir).free / 2**20 - 2048
    if need > free:
        return {"study": name, "n": n, "seconds": None, "records_mb": need,
                "status": f"not run: its records take {need:.0f} MB, {free:.0f} MB free in {a.records_dir}"}
    with tempfile.TemporaryDirectory(prefix="rk-bench-records-", dir=a.records_dir) as where:
        out = _child(seed_dir, name, n, a.seed, a.timeout, Path(where))
    out["status"] += " (records memory-mapped)" if out["status"] == "ok" else ""
    return out


def _slope(rows: list[dict], key: str) -> list[float | None]:
    """Log-log slopes of ``key`` between consecutive sizes (None where a value is missing)."""
    out: list[float | None] = []
    for a, b in zip(rows, rows[1:]):
        va, vb = a.get(key), b.get(key)
        ok = va is not None and vb is not None and va > 0 and vb > 0
        out.append(math.log(vb / va) / math.log(b["n"] / a["n"]) if ok else None)
    return out


def _fmt(v: float | None, spec: str) -> str:
    """``v`` formatted by ``spec`` (``"9.2f"``); a missing value as ``-`` in the same width."""
    return format("-", f">{spec.split('.')[0]}") if v is None else format(v, spec)


def _print_table(rows: list[dict], studies: list[str]) -> None:
    print(f"\n{'study':<13}{'N':>8}{'time s':>9}{'rss MB':>9}{'reduce MB':>11}{'records MB':>11}"
          f"{'metrics':>8}{'intervals':>10}  status")
    for name in studies:
        mine = [r for r in rows if r["study"] == name]
        for r in mine:
            print(f"{name:<13}{r['n']:>8}{_fmt(r.get('seconds'), '9.2f')}{_fmt(r.get('rss_peak'), '9.0f')}"
                  f"{_fmt(r.get('reduce_mb'), '11.0f')}{_fmt(r.get('records_mb'), '11.1f')}"
                  f"{r.get('n_metrics', '-'):>8}{r.get('n_intervals', '-'):>10}  {r['status']}")
        times, mems = _slope(mine, "seconds"), _slope(mine, "reduce_mb")
        print(f"{'':<13}growth exponent, time: {', '.join(_fmt(s, '.2f') for s in times)}; "
              f"reduce memory: {', '.join(_fmt(s, '.2f') for s in mems)}")


def _check_kind(seed_dir: Path, multilabel: bool) -> None:
    """Refuse a seed folder that holds the other kind of records (single-label or multi-label)."""
    context = seed_dir / "context.json"
    if context.exists() and bool(json.loads(context.read_text()).get("multilabel", False)) != multilabel:
        held = "multi-label" if not multilabel else "single-label"
        raise SystemExit(f"--seed-dir {seed_dir}: expected seed records of the kind asked for, got {held} ones "
                         f"(give {'--multilabel' if not multilabel else 'no --multilabel'} or another folder).")


def main(argv: list[str] | None = None) -> int:
    from robustkit.studies import available

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default=",".join(available()), help="comma-separated studies (default all)")
    parser.add_argument("--sizes", default="1000,10000,100000", help="sample counts (default 1000,10000,100000)")
    parser.add_argument("--per-class", type=int, default=24, help="phantom images per class mapped (default 24)")
    parser.add_argument("--size", type=int, default=64, help="phantom and model input side (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn rows (default 0)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per (study, N) run (default 300)")
    parser.add_argument("--max-records-mb", type=float, default=3000.0,
                        help="skip a size whose records alone take more (default 3000)")
    parser.add_argument("--seed-dir", type=Path, help="reuse (or write) the mapped seed records here")
    parser.add_argument("--records-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help=f"where the memory-mapped records of {', '.join(MAPPED)} are written (default %(default)s)")
    parser.add_argument("--multilabel", action="store_true",
                        help="a multi-label phantom and a sigmoid model (see the module doc; use its own --seed-dir)")
    parser.add_argument("--out", type=Path, help="write the rows and slopes as JSON here")
    a = parser.parse_args(argv)
    studies = [s for s in a.studies.split(",") if s]
    sizes = sorted(int(n) for n in a.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="rk-bench-reduce-") as tmp:
        seed_dir = a.seed_dir or Path(tmp)
        _check_kind(seed_dir, a.multilabel)
        todo = [s for s in studies if not (seed_dir / f"{s}.npz").exists()]
        if todo:
            seed_dir.mkdir(parents=True, exist_ok=True)
            seed_records(seed_dir, todo, per_class=a.per_class, size=a.size, multilabel=a.multilabel)
        rows = []
        for name in studies:
            for n in sizes:
                r = _run(seed_dir, name, n, a)
                rows.append(r)
                print(f"  {name} N={n}: {_fmt(r.get('seconds'), '.2f')} s, peak RSS "
                      f"{_fmt(r.get('rss_peak'), '.0f')} MB ({r['status']})", flush=True)
    _print_table(rows, studies)
    if a.out:
        slopes = {s: {"time": _slope([r for r in rows if r["study"] == s], "seconds"),
                      "reduce_mb": _slope([r for r in rows if r["study"] == s], "reduce_mb")} for s in studies}
        a.out.write_text(json.dumps({"rows": rows, "slopes": slopes, "sizes": sizes,
                                     "cpus": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
