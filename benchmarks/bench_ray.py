"""The Ray engine's overhead and scaling, side by side in one run, and a cost table for 10^5 images
from measured growth.

Usage (from the repository root; needs ``pip install "robustkit[ray]"``)::

    python benchmarks/bench_ray.py                          # 2,000 phantom images, 64 px, quick
    python benchmarks/bench_ray.py --sizes 2000,10000,50000 --studies clean,perturbation,calibration --every-image

For each size N, the same audit (a phantom of N images, the small CNN with fixed random weights,
the ``quick`` profile; ``--every-image`` lifts its sample caps) runs in this one process:
in-process, then through a local Ray instance with 1 worker (and, at the first size, with 2 workers;
each worker holds the model; the one worker gets every CPU, as in-process TensorFlow does, the two
workers half each). It prints each wall time, Ray's overhead with one worker over in-process
(the issue's target: <= 1.25), the speed-up from 1 to 2 workers, whether the audits agree, each
study's map and reduce seconds apart (read from robustkit's DEBUG lines:
``robustkit.studies.base.log_phases``; on Ray the map is worker-seconds) and what starting each
actor cost, measured apart (placement with the import of robustkit and TensorFlow, checkpoint
load, first-pass tracing: ``robustkit.engines.ray_engine``'s ``actor_start`` lines).

Then the 100,000-image table: each study's map and reduce time at 10^5 images extrapolated
from the largest measured size with the growth exponent measured between the two largest
sizes (log-log slope; with one size, linear is assumed and said), the map scaled by the
measured ratio of one InceptionV3 forward pass at 299 px to one pass of the benchmark model
(both batched, on this CPU) and divided by the workers, the reduce not (it runs once, on the
driver, and does not depend on the model). It is an estimate for a cluster of machines like
this one (CPU workers), not a measurement, and it says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

STUDY_CONFIG = {  # the quick profile, with the sample caps of the quick profile
    "clean": {"n_bootstrap": 200},
}


def _model(size: int, path: Path) -> Path:
    from robustkit._tf import keras
    from robustkit.model.training import build_model

    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", input_size=size, num_classes=3, channels=1)
    model.save(path)
    meta = {"class_names": ["COVID-19", "NORMAL", "Viral Pneumonia"], "arch": "small_cnn"}
    path.with_name(path.stem + ".meta.json").write_text(json.dumps(meta))
    return path


def _forward_ratio(size: int, small: Path) -> float:
    """Seconds per image of InceptionV3 at 299 px over the benchmark model at ``size``."""
    from robustkit.model.adapter import ModelAdapter, load_model
    from robustkit.model.training import build_model

    def per_image(adapter: ModelAdapter) -> float:
        h, w, c = adapter.input_shape
        x = np.random.default_rng(0).random((16, h, w, c), dtype=np.float32)
        adapter.logits(x[:4])  # trace
        t = time.perf_counter()
        for _ in range(2):
            adapter.logits(x)
        return (time.perf_counter() - t) / 32

    big = ModelAdapter(build_model("inception_v3", input_size=299, num_classes=3, channels=1, weights="none"),
                       class_names=["a", "b", "c"], batch_size=16)
    return per_image(big) / per_image(load_model(small, batch_size=16))


class _Lines(logging.Handler):
    """Collects robustkit's DEBUG timing lines (``phases`` and ``actor_start`` on the records)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.phases: list[dict] = []
        self.starts: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "phases"):
            self.phases.append(dict(record.phases))
        if hasattr(record, "actor_start"):
            self.starts.append(dict(record.actor_start))

    def take(self) -> tuple[list[dict], list[dict]]:
        out = (self.phases, self.starts)
        self.phases, self.starts = [], []
        return out


LINES = _Lines()
for _name in ("robustkit.studies.base", "robustkit.engines.ray_engine"):
    logging.getLogger(_name).setLevel(logging.DEBUG)
    logging.getLogger(_name).addHandler(LINES)


def _audit(model: Path, data: Path, out: Path, studies: list[str], **engine) -> dict:
    from robustkit.runner import audit

    LINES.take()
    t = time.perf_counter()
    result = audit(model, data, studies=studies, profile="quick", config=dict(STUDY_CONFIG), seed=0, out=out,
                   report=False, batch_size=32, fresh=True, **engine)
    wall = time.perf_counter() - t
    phases, starts = LINES.take()
    return {"wall": wall, "result": result, "phases": {p["study"]: p for p in phases}, "starts": starts}


def _agree(a, b) -> bool:
    for name, s in a.studies.items():
        for key, v in s.metrics.items():
            w = b.studies[name].metrics[key]
            if not (np.isclose(v, w, rtol=1e-5, atol=1e-5) or (np.isnan(v) and np.isnan(w))):
                return False
    return True


def _slope(a: float, b: float, na: int, nb: int) -> float | None:
    return math.log(b / a) / math.log(nb / na) if a > 0 and b > 0 and nb != na else None


def _one_size(n: int, args, studies: list[str], root: Path, model: Path, ray, first: bool) -> dict:
    from robustkit.data.phantom import generate_phantom

    t = time.perf_counter()
    data = generate_phantom(root / f"data{n}", per_class=n // 3, size=args.size, seed=0)
    n = 3 * (n // 3)
    print(f"\n== {n} phantom images at {args.size} px (made in {time.perf_counter() - t:.0f} s), studies "
          f"{studies}, quick profile{' without sample caps' if args.every_image else ''}, small CNN", flush=True)
    local = _audit(model, data, root / f"local{n}", studies)
    cpus = float(os.cpu_count() or 1)  # the same CPUs in every run: in-process TensorFlow uses them all
    one = _audit(model, data, root / f"ray1-{n}", studies, engine="ray", workers=1, cpus_per_worker=cpus)
    two = (_audit(model, data, root / f"ray2-{n}", studies, engine="ray", workers=2, cpus_per_worker=cpus / 2)
           if first else None)
    t0, t1 = local["wall"], one["wall"]
    print(f"in-process            {t0:8.1f} s")
    print(f"ray, 1 worker         {t1:8.1f} s   overhead {t1 / t0:.2f}x in-process on a running instance "
          f"(target <= 1.25)")
    if two is not None:
        print(f"ray, 2 workers        {two['wall']:8.1f} s   speed-up {t1 / two['wall']:.2f}x over 1 worker "
              f"({os.cpu_count()} CPUs on this machine)")
    same = _agree(local["result"], one["result"]) and (two is None or _agree(local["result"], two["result"]))
    print(f"same numbers in process and on Ray: {same}")
    for s in one["starts"]:
        print(f"actor start: ready {s['ready_s']:.1f} s after the map began = placed {s['placed_s']:.1f} s "
              f"(scheduling, worker process, importing robustkit) + TensorFlow {s['tensorflow_s']:.1f} s + "
              f"checkpoint {s['load_s']:.2f} s + first-pass tracing {s['trace_s']:.2f} s + description "
              f"{s['describe_s']:.2f} s")
    print(f"{'study':14s} {'in-process map':>15s} {'reduce':>8s} {'ray map (worker-s)':>19s} {'reduce':>8s}")
    for name in studies:
        a, b = local["phases"].get(name, {}), one["phases"].get(name, {})
        print(f"{name:14s} {a.get('map_s', float('nan')):13.1f} s {a.get('reduce_s', float('nan')):6.1f} s "
              f"{b.get('map_s', float('nan')):17.1f} s {b.get('reduce_s', float('nan')):6.1f} s")
    return {"n": n, "in_process_s": t0, "ray1_s": t1, "ray2_s": two["wall"] if two else None, "same": same,
            "phases": local["phases"], "ray_phases": one["phases"], "actor_starts": one["starts"]}


def _projection(rows: list[dict], studies: list[str], ratio: float) -> dict:
    """Map and reduce seconds of each study at 10^5 images (see the module doc)."""
    big = rows[-1]
    prev = rows[-2] if len(rows) > 1 else None
    out = {}
    for name in studies:
        ph = big["phases"].get(name)
        if ph is None:
            continue
        n_big = ph["n"]
        parts = {}
        for part in ("map_s", "reduce_s"):
            slope = None
            if prev is not None and name in prev["phases"]:
                slope = _slope(prev["phases"][name][part], ph[part], prev["phases"][name]["n"], n_big)
            k = 1.0 if slope is None else slope
            parts[part] = ph[part] * (1e5 / max(1, n_big)) ** k
            parts[part.replace("_s", "_exponent")] = slope
        parts["map_s"] *= ratio
        out[name] = parts
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000", help="image counts, comma-separated (default 2000)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--studies", default="clean,perturbation,noise,calibration,adversarial")
    ap.add_argument("--every-image", action="store_true",
                    help="lift the quick profile's sample caps (every study on every image)")
    ap.add_argument("--out", type=Path, help="write the measured rows and the projection as JSON here")
    args = ap.parse_args()
    studies = args.studies.split(",")
    sizes = sorted(int(n) for n in args.sizes.split(","))
    if args.every_image:
        for name in studies:
            STUDY_CONFIG.setdefault(name, {})["max_samples"] = None

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = _model(args.size, root / "model.keras")
        import ray

        ts = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        t_start = time.perf_counter() - ts  # a running cluster is the usual case: timed apart
        print(f"starting Ray locally: {t_start:.1f} s (once per audit on a laptop; none on a running cluster)")
        rows = [_one_size(n, args, studies, root, model, ray, i == 0) for i, n in enumerate(sizes)]
        ray.shutdown()
        ratio = _forward_ratio(args.size, model)
    proj = _projection(rows, studies, ratio)
    how = ("growth exponent between the two largest sizes" if len(rows) > 1 else
           "linear growth ASSUMED (one size measured: run --sizes with two or more)")
    print(f"\n100,000 images at 299 px, estimated from {rows[-1]['n']} measured images ({how}); map scaled by "
          f"InceptionV3 at 299 px / benchmark model at {args.size} px per forward pass = {ratio:.1f}x and divided "
          "by the workers; reduce once on the driver, not scaled")
    print(f"{'study':14s} {'map exp':>8s} {'reduce exp':>11s} {'reduce':>9s} {'1 worker':>10s} {'8 workers':>10s} "
          f"{'64 workers':>10s}")
    total = {w: 0.0 for w in (1, 8, 64)}

    def fmt(v):
        return "    -" if v is None else f"{v:5.2f}"

    for name, p in proj.items():
        cells = {w: (p["map_s"] / w + p["reduce_s"]) / 3600 for w in (1, 8, 64)}
        for w in total:
            total[w] += cells[w]
        print(f"{name:14s} {fmt(p['map_exponent']):>8s} {fmt(p['reduce_exponent']):>11s} {p['reduce_s']:7.0f} s "
              + " ".join(f"{cells[w]:8.2f} h" for w in (1, 8, 64)))
    print(f"{'all':14s} {'':8s} {'':11s} {'':9s} " + " ".join(f"{total[w]:8.2f} h" for w in (1, 8, 64)))
    print("(on Ray the 1-worker overhead measured above adds to the map; studies with a sample cap, e.g. "
          "adversarial without --every-image, are costed per image audited)")
    if args.out:
        for r in rows:
            r.pop("result", None)
        args.out.write_text(json.dumps({"rows": rows, "projection": proj, "forward_ratio": ratio,
                                        "ray_start_s": t_start, "cpus": os.cpu_count()}, indent=1, default=str))


if __name__ == "__main__":
    main()
