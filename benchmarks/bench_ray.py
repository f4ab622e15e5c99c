"""The Ray engine's overhead and scaling, side by side in one run, and a cost table for 10^5 images.

Usage (from the repository root; needs ``pip install "robustkit[ray]"``)::

    python benchmarks/bench_ray.py                          # 2,000 phantom images, 64 px, quick
    python benchmarks/bench_ray.py --per-class 200 --size 64 --studies clean,perturbation

The same audit (a phantom of ``3 * per_class`` images, the small CNN with fixed random weights,
the ``quick`` profile) runs three times in this one process: in-process, through a local Ray
instance with 1 worker, and with 2 workers (each worker holds the model; the one worker gets
every CPU, as in-process TensorFlow does, the two workers half each). It prints each wall time, Ray's overhead with one worker over
in-process (the issue's target: <= 1.3) and the speed-up from 1 to 2 workers on this machine,
and checks that the three audits agree.

Then, from the measured per-image time of every study in-process, it prints what a
100,000-image audit at 299 px would cost on 1, 8 and 64 workers, with the arithmetic: the
per-image times are scaled by the measured ratio of one InceptionV3 forward pass at 299 px to
one pass of the benchmark model (both batched, on this CPU), multiplied by 10^5, divided by
the number of workers, times the one-worker overhead measured above (on a running Ray
instance: starting one is timed apart, since a cluster is already running). It is an estimate for a
cluster of machines like this one (CPU workers), not a measurement.
"""

from __future__ import annotations

import argparse
import json
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


def _audit(model: Path, data: Path, out: Path, studies: list[str], **engine) -> tuple[float, object]:
    from robustkit.runner import audit

    t = time.perf_counter()
    result = audit(model, data, studies=studies, profile="quick", config=dict(STUDY_CONFIG), seed=0, out=out,
                   report=False, batch_size=32, fresh=True, **engine)
    return time.perf_counter() - t, result


def _agree(a, b) -> bool:
    for name, s in a.studies.items():
        for key, v in s.metrics.items():
            w = b.studies[name].metrics[key]
            if not (np.isclose(v, w, rtol=1e-5, atol=1e-5) or (np.isnan(v) and np.isnan(w))):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=667)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--studies", default="clean,perturbation,noise,calibration,adversarial")
    ap.add_argument("--every-image", action="store_true",
                    help="lift the quick profile's sample caps (every study on every image)")
    args = ap.parse_args()
    studies = args.studies.split(",")
    if args.every_image:
        for name in studies:
            STUDY_CONFIG.setdefault(name, {})["max_samples"] = None

    from robustkit.data.phantom import generate_phantom

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generate_phantom(root / "data", per_class=args.per_class, size=args.size, seed=0)
        model = _model(args.size, root / "model.keras")
        n = 3 * args.per_class
        print(f"{n} phantom images at {args.size} px, studies {studies}, quick profile, small CNN")
        t0, local = _audit(model, data, root / "local", studies)
        import ray

        ts = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        t_start = time.perf_counter() - ts  # a running cluster is the usual case: timed apart
        cpus = float(os.cpu_count() or 1)  # the same CPUs in every run: in-process TensorFlow uses them all
        t1, one = _audit(model, data, root / "ray1", studies, engine="ray", workers=1, cpus_per_worker=cpus)
        t2, two = _audit(model, data, root / "ray2", studies, engine="ray", workers=2, cpus_per_worker=cpus / 2)
        ray.shutdown()
        print(f"in-process            {t0:8.1f} s")
        print(f"starting Ray locally  {t_start:8.1f} s   (once per audit on a laptop; none on a running cluster)")
        print(f"ray, 1 worker         {t1:8.1f} s   overhead {t1 / t0:.2f}x in-process on a running instance "
              f"(target <= 1.3); {(t1 + t_start) / t0:.2f}x with the start")
        print(f"ray, 2 workers        {t2:8.1f} s   speed-up {t1 / t2:.2f}x over 1 worker "
              f"({os.cpu_count()} CPUs on this machine)")
        print(f"same numbers: 1 worker {_agree(local, one)}, 2 workers {_agree(local, two)}")

        ratio = _forward_ratio(args.size, model)
        overhead = max(1.0, t1 / t0)
        print(f"\nInceptionV3 at 299 px / benchmark model at {args.size} px, per image forward: {ratio:.1f}x")
        print("100,000 images at 299 px, estimated: per-image seconds here x "
              f"{ratio:.1f} x 1e5 / workers x {overhead:.2f} (1-worker overhead)")
        print(f"{'study':14s} {'s/image here':>13s} {'1 worker':>12s} {'8 workers':>12s} {'64 workers':>12s}")
        total = 0.0
        for name in studies:
            s = local.studies[name]
            n_study = len(s.records["index"]) if "index" in s.records else n
            per = s.seconds / max(1, n_study)
            cost = per * ratio * 1e5 * overhead
            total += cost
            print(f"{name:14s} {per:13.5f} " + " ".join(f"{cost / w / 3600:10.2f} h" for w in (1, 8, 64)))
        print(f"{'all':14s} {'':13s} " + " ".join(f"{total / w / 3600:10.2f} h" for w in (1, 8, 64)))
        print("(studies with a sample cap in the quick profile, e.g. adversarial, are costed per image "
              "audited; on 10^5 images they would keep their cap unless max_samples is raised)")


if __name__ == "__main__":
    main()
