"""Cost of the saliency study relative to the bare gradient passes it needs (target <= 1.2).

Builds robustkit's InceptionV3 (random weights) at 128 px and a small phantom set with
lesion masks, runs the study once (after the clean pass, as in an audit), then times as
many warm ``ModelAdapter.gradient`` image passes, and ``ModelAdapter.logits`` passes, as
the study reported, at the same batch size.

Usage:
    python benchmarks/bench_saliency.py [--size 128] [--samples 6] [--batch-size 16]
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
    try:
        from robustkit.model.training import build_model

        return build_model("inception_v3", input_size=size, channels=1)
    except ImportError:
        from robustkit._tf import keras

        return keras.applications.InceptionV3(weights=None, input_shape=(size, size, 3), classes=3)


def _bare_seconds(adapter, n_grad: int, n_fwd: int) -> float:
    bs = adapter.batch_size
    x = np.random.default_rng(0).random((bs, *adapter.input_shape)).astype(np.float32)
    t = np.zeros(bs, np.int32)
    adapter.gradient(x[:1], t[:1])  # warm: traced once, as the study's functions are
    start = time.perf_counter()
    for done in range(0, n_grad, bs):
        k = min(bs, n_grad - done)
        adapter.gradient(x[:k], t[:k])
    for done in range(0, n_fwd, bs):
        adapter.logits(x[: min(bs, n_fwd - done)])
    return time.perf_counter() - start


def _tracing_seconds(adapter) -> dict[str, float]:
    """First call minus warm call of each method of a fresh explainer (two images)."""
    from robustkit.model.explainers import Explainer

    ex = Explainer(adapter)
    x = np.random.default_rng(1).random((2, *adapter.input_shape)).astype(np.float32)
    t = np.zeros(2, np.int32)
    calls = {"vanilla_gradient": lambda: ex.vanilla_gradient(x, t), "smoothgrad": lambda: ex.smoothgrad(x, t, n=2),
             "integrated_gradients": lambda: ex.integrated_gradients(x, t, steps=2),
             "gradcam": lambda: ex.gradcam(x, t)}
    first = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        first[name] = time.perf_counter() - start
    out = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        out[name] = max(0.0, first[name] - (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from robustkit.data.loader import load_dataset
    from robustkit.data.phantom import generate_phantom
    from robustkit.model.adapter import ModelAdapter
    from robustkit.studies import AuditContext, get_study

    with tempfile.TemporaryDirectory() as tmp:
        generate_phantom(Path(tmp) / "ph", per_class=max(2, args.samples // 3), size=args.size, seed=0)
        data = load_dataset(Path(tmp) / "ph")
        model = _model(args.size)
        adapter = ModelAdapter(model, class_names=list(data.class_names), batch_size=args.batch_size,
                               input_scale="unit")
        study = get_study("saliency").configure("standard", {
            "max_samples": args.samples, "stability_samples": args.samples, "smoothgrad_n": 10, "ig_steps": 16,
            "n_noise": 1, "randomization_samples": 2, "randomization_steps": 4, "deletion_steps": 10,
        })
        ctx = AuditContext(seed=0)
        sub = data.subset(study.select(data, ctx))
        ctx.clean_logits(adapter, sub)  # the audit's clean pass, shared with every study
        times = []
        for _ in range(2):  # the first run traces the explainer's graphs; the second is warm
            start = time.perf_counter()
            result = study.execute(adapter, data, ctx)
            times.append(time.perf_counter() - start)
        passes = result.data["passes"]
        bare_s = _bare_seconds(adapter, passes["gradient"], passes["forward"])
        tracing = _tracing_seconds(adapter)
    print(f"InceptionV3 {args.size}px, {len(result.records['index'])} images, batch {args.batch_size}")
    print(f"gradient image-passes {passes['gradient']}, forward image-passes {passes['forward']}")
    print(f"bare passes {bare_s:.1f} s; study first run {times[0]:.1f} s (ratio {times[0] / bare_s:.2f}, "
          f"with tracing), warm {times[1]:.1f} s (ratio {times[1] / bare_s:.2f}; target <= 1.2)")
    print("tracing a fresh explainer (first call minus warm, 2 images): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in tracing.items()) + f"; total {sum(tracing.values()):.2f} s")


if __name__ == "__main__":
    main()
