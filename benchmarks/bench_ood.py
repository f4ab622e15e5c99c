"""Cost of the OOD study relative to one forward pass of its ID + OOD images (target <= 1.15).

Builds robustkit's InceptionV3 (random weights) at 128 px and a small phantom set, runs the
study once (which builds the OOD sets, maps the audit and the extra images with the
compiled logits-and-features call, then fits, scores and bootstraps), then times one warm
``ModelAdapter.logits`` pass over as many images as the study mapped, at the same batch
size, in the same run.

Usage:
    python benchmarks/bench_ood.py [--size 128] [--per-class 12] [--per-set 16] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _model(size: int):
    from robustkit.model.training import build_model

    return build_model("inception_v3", input_size=size, channels=1)


def _bare_seconds(adapter, n: int) -> float:
    bs = adapter.batch_size
    x = np.random.default_rng(0).random((bs, *adapter.input_shape)).astype(np.float32)
    adapter.logits(x[:1])  # warm: traced once
    start = time.perf_counter()
    for done in range(0, n, bs):
        adapter.logits(x[: min(bs, n - done)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--per-set", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from robustkit.data.loader import load_dataset
    from robustkit.data.phantom import generate_phantom
    from robustkit.model.adapter import ModelAdapter
    from robustkit.studies import AuditContext, get_study

    with tempfile.TemporaryDirectory() as tmp:
        generate_phantom(Path(tmp) / "ph", per_class=args.per_class, size=args.size, seed=0)
        data = load_dataset(Path(tmp) / "ph")
        adapter = ModelAdapter(_model(args.size), class_names=list(data.class_names), batch_size=args.batch_size)
        adapter.logits_and_features(np.zeros((1, *adapter.input_shape), np.float32))  # warm, as an audit's earlier studies leave it
        study = get_study("ood").configure("quick", {"n_per_set": args.per_set})
        ctx = AuditContext(seed=0, model_info=adapter.describe())
        start = time.perf_counter()
        study.prepare(data, ctx)  # builds the OOD sets (DICOM decoding, phantom rendering): no model
        prepare_s = time.perf_counter() - start
        from robustkit.data import ood_sets

        ood_sets._decoded.cache_clear()  # the study decodes its DICOM files again, as a fresh audit does
        ctx = AuditContext(seed=0)
        start = time.perf_counter()
        result = study.execute(adapter, data, ctx)
        study_s = time.perf_counter() - start
        n_images = len(data) + sum(int(s["n"]) for s in result.data["sets"])
        bare_s = _bare_seconds(adapter, n_images)
    print(f"InceptionV3 {args.size}px, {len(data)} ID + {n_images - len(data)} OOD images, batch {args.batch_size}")
    print(f"study {study_s:.1f} s (building the sets, timed apart with imports: {prepare_s:.1f} s), "
          f"one forward pass {bare_s:.1f} s")
    print(f"ratio {study_s / bare_s:.2f} (target <= 1.15); without the set building "
          f"{(study_s - prepare_s) / bare_s:.2f}")


if __name__ == "__main__":
    main()
