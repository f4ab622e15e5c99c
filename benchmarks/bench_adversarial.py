"""Benchmark the compiled PGD of robustkit.model.attacks on InceptionV3 (128x128, batch 32, CPU).

Prints, in one run:
  1. PGD wall time / time of the same number of bare compiled input-gradient passes
     (ModelAdapter.gradient) -- target <= 1.15;
  2. foolbox LinfPGD (same steps, step size, no random start) / robustkit's PGD;
  3. a five-epsilon sweep's cost relative to five independent PGD runs (gradient
     evaluations and wall time).

Usage (from the repository root):
    CUDA_VISIBLE_DEVICES= python benchmarks/bench_adversarial.py [--steps 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from robustkit._tf import keras, tf  # noqa: E402
from robustkit.model import attacks as A  # noqa: E402
from robustkit.model.adapter import ModelAdapter  # noqa: E402

SIZE, BATCH, CLASSES = 128, 32, 3


def _model() -> keras.Model:
    try:
        from robustkit.model.training import build_model

        return build_model("inception_v3", input_size=SIZE, num_classes=CLASSES)
    except ImportError:
        return keras.applications.InceptionV3(weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES)


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: tracing and compilation are not measured
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    steps, repeats = args.steps, args.repeats

    adapter = ModelAdapter(_model(), batch_size=BATCH)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    y = adapter.logits(x).argmax(axis=1)
    eps = 8 / 255
    step = 2.5 * eps / steps
    print(f"InceptionV3 {SIZE}x{SIZE}, batch {BATCH}, {steps} steps, device: "
          f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}, TF {tf.__version__}")

    def bare() -> None:
        for _ in range(steps):
            adapter.gradient(x, y)

    pgd = A.LinfPGD(steps=steps, abs_stepsize=step, random_start=False)
    t_bare = _best_time(bare, repeats)
    t_pgd = _best_time(lambda: pgd(adapter, x, y, epsilons=eps), repeats)
    print(f"bare compiled gradient passes x{steps}: {t_bare:8.2f} s")
    print(f"robustkit LinfPGD ({steps} steps):       {t_pgd:8.2f} s")
    print(f"  -> PGD / bare gradients = {t_pgd / t_bare:.3f}   (target <= 1.15)")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import foolbox as fb
    fmodel = A.foolbox_model(adapter)
    fattack = fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=False)
    xt, yt = tf.constant(x), tf.constant(y.astype(np.int64))
    t_fb = _best_time(lambda: fattack(fmodel, xt, yt, epsilons=eps), repeats)
    print(f"foolbox LinfPGD ({steps} steps, eager loop around the compiled model): {t_fb:8.2f} s")
    print(f"  -> foolbox / robustkit = {t_fb / t_pgd:.3f}   (foolbox / bare gradients = {t_fb / t_bare:.3f})")

    grid = [0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
    pgd_rs = A.LinfPGD(steps=steps, random_start=True)
    start = time.perf_counter()
    sweep = A.epsilon_sweep(pgd_rs, adapter, x, y, grid, seed=0)
    t_sweep = time.perf_counter() - start
    start = time.perf_counter()
    independent = sum(pgd_rs(adapter, x, y, epsilons=e, seed=0).gradient_evals for e in grid)
    t_indep = time.perf_counter() - start
    print(f"five-epsilon sweep: {sweep.gradient_evals} gradient evaluations, {t_sweep:.2f} s; five independent "
          f"runs: {independent}, {t_indep:.2f} s")
    print(f"  -> sweep / independent = {sweep.gradient_evals / independent:.3f} (evaluations), "
          f"{t_sweep / t_indep:.3f} (wall time); robust accuracy per epsilon {np.round(sweep.correct.mean(0), 3)}")


if __name__ == "__main__":
    main()
