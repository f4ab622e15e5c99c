"""Peak memory of a quick audit on 200 and on 2,000 phantom images (each in its own process).

Usage (from the repository root)::

    python benchmarks/bench_memory.py                     # clean study, 64 px phantom, small CNN
    python benchmarks/bench_memory.py --studies clean,calibration --size 64

For each dataset size the audit runs in a fresh subprocess, once with robustkit's default
image cache (resized images kept in memory up to ``robustkit.data.dataset.CACHE_BYTES``, 256 MB)
and once with the cache off (pure streaming). Each child reports:

* ``rss_model``: peak RSS (``ru_maxrss``) after importing TensorFlow and loading the model;
* ``rss_peak``: peak RSS at the end of the audit (results, records and report written);
* ``traced``: the peak of Python/numpy allocations during the audit (``tracemalloc``;
  TensorFlow's own C++ buffers are not in it, they are in the RSS).

The issue's target is that the peak memory on 2,000 images is well below 10x that on 200:
memory must not grow with the number of samples beyond the per-sample records (and the
bounded cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time, tracemalloc
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
args = json.loads(sys.argv[1])
import robustkit.data.dataset as data_module
if args["no_cache"]:
    data_module.CACHE_BYTES = 0
from robustkit.runner import audit
from robustkit.model.adapter import load_model

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

model = load_model(args["model"])
rss_model = rss_mb()
tracemalloc.start()
t0 = time.perf_counter()
result = audit(model, args["data"], studies=args["studies"], profile="quick", seed=0,
               out=args["out"], quiet=True, report=True)
seconds = time.perf_counter() - t0
traced = tracemalloc.get_traced_memory()[1] / 2**20
tracemalloc.stop()
print(json.dumps({"n": len(result.ids), "rss_model": rss_model, "rss_peak": rss_mb(),
                  "traced": traced, "seconds": seconds,
                  "status": {k: s.status for k, s in result.studies.items()}}))
"""


def _make_model(path: Path, size: int) -> Path:
    """An untrained small CNN at ``size`` px (memory does not depend on the weights' values)."""
    from robustkit._tf import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 1))
    x = inp
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(32, activation="relu")(x))
    keras.Model(inp, out, name="bench_cnn").save(path)
    meta = {"class_names": ["COVID-19", "NORMAL", "Viral Pneumonia"], "arch": "bench_cnn"}
    path.with_name(path.stem + ".meta.json").write_text(json.dumps(meta))
    return path


def _child(model: Path, data: Path, out: Path, studies: list[str], no_cache: bool) -> dict:
    args = {"model": str(model), "data": str(data), "out": str(out), "studies": studies,
            "no_cache": no_cache}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"audit child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default="clean", help="comma-separated studies (default clean)")
    parser.add_argument("--size", type=int, default=64, help="phantom and model input side (default 64)")
    parser.add_argument("--sizes", default="200,2000", help="dataset sizes (default 200,2000)")
    a = parser.parse_args(argv)
    studies = [s for s in a.studies.split(",") if s]
    counts = [int(n) for n in a.sizes.split(",")]
    sys.path.insert(0, str(REPO))
    from robustkit.data.phantom import generate_phantom

    rows = []
    with tempfile.TemporaryDirectory(prefix="rk-bench-mem-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        model = _make_model(root / "bench.keras", a.size)
        datasets = {n: generate_phantom(root / f"data{n}", per_class=-(-n // 3), size=a.size, seed=0)
                    for n in counts}
        print(f"setup (model + phantom data): {time.perf_counter() - t0:.1f} s", flush=True)
        for no_cache in (False, True):
            for n in counts:
                r = _child(model, datasets[n], root / f"out{n}{'nc' if no_cache else ''}", studies, no_cache)
                r["cache"] = "off" if no_cache else "on"
                rows.append(r)
                print(f"  {r['n']:>5} images, cache {r['cache']:>3}: peak RSS {r['rss_peak']:7.1f} MiB "
                      f"(model loaded {r['rss_model']:6.1f}, audit adds {r['rss_peak'] - r['rss_model']:6.1f}), "
                      f"traced peak {r['traced']:6.1f} MiB, {r['seconds']:5.1f} s, {r['status']}", flush=True)
    print(f"\nquick audit ({', '.join(studies)}), {a.size} px phantom, small CNN, CPU:")
    for cache in ("on", "off"):
        small, large = (next(r for r in rows if r["n"] >= n and r["cache"] == cache) for n in (counts[0], counts[-1]))
        print(f"  cache {cache}: peak RSS {small['rss_peak']:.1f} -> {large['rss_peak']:.1f} MiB, "
              f"ratio {large['rss_peak'] / small['rss_peak']:.2f}; "
              f"audit increment {small['rss_peak'] - small['rss_model']:.1f} -> "
              f"{large['rss_peak'] - large['rss_model']:.1f} MiB; "
              f"traced {small['traced']:.1f} -> {large['traced']:.1f} MiB "
              f"(ratio {large['traced'] / max(small['traced'], 1e-9):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
