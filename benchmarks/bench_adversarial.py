"""Benchmark the compiled PGD of robustkit.model.attacks on InceptionV3 (128x128, batch 32, CPU).

Prints, in one run:
  1. PGD wall time / time of the same number of bare compiled input-gradient passes
     (ModelAdapter.gradient) -- target <= 1.15;
  2. foolbox LinfPGD (same steps, step size, no random start) / robustkit's PGD;
  3. a five-epsilon sweep's cost relative to five independent PGD runs (gradient
     evaluations and wall time);
  4. APGD-CE (``--apgd-steps``, 100 by default: ``steps + 1`` gradient passes) / the same number
     of bare compiled gradient passes -- target <= 1.15;
  5. with ``--art`` (IBM ART installed): ART's AutoProjectedGradientDescent (CE) / robustkit's
     APGD-CE on the same images (target: ART at least 3x slower), and the ensemble's robust
     accuracy (APGD-CE, APGD-DLR, FAB-T, Square) against ART's worst case over APGD-CE, APGD-DLR
     and Square (target: not higher);
  6. with ``--study``: the standard profile's sweeps (ensemble with FAB-T and Square, Linf and L2 grids) on
     ``--study-images`` images the model gets right, timed: the bulk of the adversarial
     study's cost for the demo audit.

Usage (from the repository root):
    CUDA_VISIBLE_DEVICES= python benchmarks/bench_adversarial.py [--steps 5] [--repeats 2] [--apgd-steps 100]
        [--batch 32] [--art] [--study]
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
from robustkit.model.apgd import LinfAPGD  # noqa: E402
from robustkit.model.ensemble import ENSEMBLE_ATTACKS, ENSEMBLE_LABELS, Ensemble  # noqa: E402

SIZE, CLASSES = 128, 3


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
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--art", action="store_true", help="compare with IBM ART (if installed)")
    parser.add_argument("--study", action="store_true", help="time the standard profile's sweeps")
    parser.add_argument("--study-images", type=int, default=48)
    parser.add_argument("--skip-pgd", action="store_true", help="skip parts 1-3")
    args = parser.parse_args()
    steps, repeats, batch = args.steps, args.repeats, args.batch

    adapter = ModelAdapter(_model(), batch_size=batch)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, SIZE, SIZE, 3)).astype(np.float32)
    y = adapter.logits(x).argmax(axis=1)
    eps = 8 / 255
    step = 2.5 * eps / steps
    print(f"InceptionV3 {SIZE}x{SIZE}, batch {batch}, {steps} steps, device: "
          f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}, TF {tf.__version__}")
    if not args.skip_pgd:
        _pgd_parts(adapter, x, y, eps, step, steps, repeats)
    _apgd_part(adapter, x, y, eps, args.apgd_steps, repeats)
    if args.art:
        _art_part(adapter, x, y, eps, args.apgd_steps)
    if args.study:
        _study_part(adapter, args.study_images, rng)


def _pgd_parts(adapter: ModelAdapter, x: np.ndarray, y: np.ndarray, eps: float, step: float, steps: int,
               repeats: int) -> None:
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



def _interleaved(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall times of ``first`` and ``second`` run alternately (after one warm-up each), so that
    load from other processes on a shared machine hits both alike."""
    first(), second()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for j, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - start)
    return best[0], best[1]


def _apgd_part(adapter: ModelAdapter, x: np.ndarray, y: np.ndarray, eps: float, steps: int, repeats: int) -> None:
    def bare() -> None:
        for _ in range(steps + 1):
            adapter.gradient(x, y)

    apgd = LinfAPGD(steps=steps)
    t_bare, t_apgd = _interleaved(bare, lambda: apgd(adapter, x, y, epsilons=eps, seed=0), repeats)
    print(f"bare compiled gradient passes x{steps + 1}: {t_bare:8.2f} s")
    print(f"robustkit APGD-CE ({steps} iterations):   {t_apgd:8.2f} s")
    print(f"  -> APGD / bare gradients = {t_apgd / t_bare:.3f}   (target <= 1.15)")


def _art_part(adapter: ModelAdapter, x: np.ndarray, y: np.ndarray, eps: float, steps: int) -> None:
    try:
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
        from art.estimators.classification import TensorFlowV2Classifier
    except ImportError:
        print("IBM ART is not installed: no ART comparison")
        return
    clf = TensorFlowV2Classifier(model=lambda t, training=False: adapter.logits_graph(t), nb_classes=CLASSES,
                                 input_shape=adapter.input_shape, clip_values=(0.0, 1.0),
                                 loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def art_apgd(loss: str) -> np.ndarray:
        attack = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
                                              nb_random_init=1, batch_size=len(x), loss_type=loss, verbose=False)
        return np.asarray(attack.generate(x=x, y=y))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        adv_ce = art_apgd("cross_entropy")
        t_art = time.perf_counter() - start
        art_ce = adapter.logits(adv_ce).argmax(axis=1) != y
        broken = art_ce.copy()
        for make in (lambda: art_apgd("difference_logits_ratio"),
                     lambda: np.asarray(SquareAttack(clf, norm=np.inf, eps=eps, max_iter=5000, nb_restarts=1,
                                                     batch_size=len(x), verbose=False).generate(x=x, y=y))):
            broken |= adapter.logits(make()).argmax(axis=1) != y
    start = time.perf_counter()
    ours = LinfAPGD(steps=steps)(adapter, x, y, epsilons=eps, seed=0)
    t_ours = time.perf_counter() - start
    ens = Ensemble(norm="linf", steps=steps, fab_steps=100, square_queries=5000)(adapter, x, y, epsilons=eps, seed=0)
    print(f"ART APGD-CE ({steps} iterations, eager): {t_art:8.2f} s; robustkit APGD-CE: {t_ours:8.2f} s")
    print(f"  -> ART / robustkit = {t_art / t_ours:.2f}   (target >= 3); APGD-CE robust accuracy: ART "
          f"{1 - art_ce.mean():.3f}, robustkit {1 - ours.success.mean():.3f}; images ART broke and robustkit "
          f"did not: {np.flatnonzero(art_ce & ~ours.success).tolist()}")
    print(f"robust accuracy: robustkit ensemble (APGD-CE, APGD-DLR, FAB-T, Square) {1 - ens.success.mean():.3f}; "
          f"ART worst case of APGD-CE, "
          f"APGD-DLR, Square {1 - broken.mean():.3f}   (target: robustkit not higher)")


def _study_part(adapter: ModelAdapter, n: int, rng: np.random.Generator) -> None:
    """The standard profile's two sweeps on ``n`` images labelled with the model's own predictions
    (so every image is attacked, as the demo's clean-correct ones are)."""
    from robustkit.studies.adversarial import AdversarialConfig

    cfg = AdversarialConfig()
    x = rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
    y = adapter.logits(x).argmax(axis=1)
    total = 0.0
    for norm, grid in (("linf", cfg.epsilons_linf), ("l2", cfg.epsilons_l2)):
        attack = Ensemble(norm=norm, steps=cfg.apgd_steps, restarts=cfg.apgd_restarts,
                          n_target_classes=cfg.n_target_classes, fab_steps=cfg.fab_steps,
                          square_queries=cfg.square_queries)
        start = time.perf_counter()
        sweep = A.epsilon_sweep(attack, adapter, x, y, grid, seed=np.arange(n))
        took = time.perf_counter() - start
        total += took
        print(f"standard-profile {norm} sweep on {n} images: {took:.1f} s, {sweep.gradient_evals} gradient "
              f"evaluations, robust accuracy {np.round(sweep.correct.mean(0), 3)}, broken by "
              f"{np.bincount(sweep.broken_by, minlength=len(ENSEMBLE_ATTACKS) + 1)[1:]} "
              f"({', '.join(ENSEMBLE_LABELS[a] for a in ENSEMBLE_ATTACKS)})")
    print(f"  -> the two sweeps: {total:.1f} s")


if __name__ == "__main__":
    main()
