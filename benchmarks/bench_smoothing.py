"""Benchmark the smoothing study against the bare forward passes it needs (target <= 1.10).

Prints, in one run, on the same model and images:
  1. the study's wall time (``SmoothingStudy.execute``: loading, keyed noise, the compiled
     noisy-copy batches, counting, CERTIFY/PREDICT and the reduce);
  2. the wall time of the same model calls on noisy images prepared beforehand
     (``ModelAdapter.logits`` with the same batch sizes: ``n0`` and ``n`` draws per image and
     noise level in chunks of ``draw_batch``, plus the clean pass);
  3. their ratio (target <= 1.10) and the study's throughput in model passes per second.

Usage (from the repository root):
    python benchmarks/bench_smoothing.py [--arch inception_v3] [--size 128] [--images 8]
        [--n0 32] [--n 480] [--sigmas 0.12,0.25,0.5] [--draw-batch 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from robustkit.data.loader import load_dataset  # noqa: E402
from robustkit.model.adapter import ModelAdapter  # noqa: E402
from robustkit.model.training import build_model  # noqa: E402
from robustkit.studies.base import AuditContext  # noqa: E402
from robustkit.studies.smoothing import DRAWS_PER_KEY, SmoothingStudy  # noqa: E402
from robustkit.task import Task  # noqa: E402

CLASSES = ("a", "b", "c")


def _interleaved(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Wall times of each function, run in turn ``repeats`` times after a warm-up of each
    (tracing and compilation are not measured), so that a busy machine slows both alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def _dataset(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.uniform(0, 1, (size, size)) * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def _call_sizes(n_draws: int, per_call: int) -> list[int]:
    """The batch sizes the study's compiled graph runs for ``n_draws`` draws of one stream."""
    return [min(per_call, n_draws - s) for s in range(0, n_draws, per_call)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="inception_v3")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=6, help="at least 3 (one per class)")
    parser.add_argument("--n0", type=int, default=32)
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--sigmas", default="0.12,0.25,0.5")
    parser.add_argument("--draw-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]

    model = ModelAdapter(build_model(args.arch, input_size=args.size, num_classes=len(CLASSES)),
                         class_names=list(CLASSES), batch_size=args.draw_batch)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(_dataset(Path(tmp), max(3, args.images), args.size)).with_class_order(list(CLASSES))
        study = SmoothingStudy.configure("standard", {"max_samples": None, "sigmas": sigmas, "n0": args.n0,
                                                      "n": args.n, "draw_batch": args.draw_batch,
                                                      "check_samples": 0})  # CERTIFY's passes only: the
        # consistency check's attacks are extra work the bare passes do not include (its cost is stated apart)
        task = Task(names=CLASSES)

        def run_study() -> object:
            return study.execute(model, data, AuditContext(seed=0, task=task))  # a fresh clean-logits cache

        per_call = max(1, args.draw_batch // DRAWS_PER_KEY) * DRAWS_PER_KEY
        sizes = [len(data)] + [s for _ in range(len(data) * len(sigmas)) for n in (args.n0, args.n)
                               for s in _call_sizes(n, per_call)]
        noisy = np.clip(np.random.default_rng(1).normal(0.5, 0.25, (per_call, args.size, args.size, 3)),
                        0, 1).astype(np.float32)

        def run_bare() -> object:
            return [model.logits(noisy[:s]) for s in sizes]

        studies, bares = _interleaved([run_study, run_bare], args.repeats)
    passes = sum(sizes)
    t_study, t_bare = min(studies), min(bares)
    pairs = sorted(a / b for a, b in zip(studies, bares))
    print(f"{args.arch} {args.size}px, {args.images} images, sigmas {sigmas}, n0 {args.n0}, n {args.n}, "
          f"draw batch {per_call}: {passes} model passes in {len(sizes)} calls")
    print(f"study {t_study:.3f} s, bare forward passes {t_bare:.3f} s (best of {args.repeats}, interleaved), "
          f"ratio {t_study / t_bare:.3f} (target <= 1.10), median paired ratio {pairs[len(pairs) // 2]:.3f}; "
          f"{passes / t_study:.0f} passes/s")


if __name__ == "__main__":
    main()
