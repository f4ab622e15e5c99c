"""Benchmark: the perturbation and noise studies against their bare forward passes.

Builds the audited architecture (InceptionV3, 128x128x3, random weights), saves and reloads it
as a checkpoint, writes a small phantom dataset, and measures in one run, for each study:

* the wall time of the whole study (transforms in a background thread, model passes,
  metrics, bootstrap intervals, example thumbnails), its clean pass excluded because the
  audit shares it with the clean study;
* the time of the same number of bare compiled forward passes (``ModelAdapter.logits`` on
  pre-made batches of the same size);

and prints their ratio (target: at most 1.15).

Run from the repository root::

    .venv/bin/python benchmarks/bench_conditions.py            # ~2-3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_conditions.py --n 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustkit.data.loader import load_dataset  # noqa: E402
from robustkit.data.regions import MASK_CONDITIONS  # noqa: E402
from robustkit.model.adapter import ModelAdapter, load_model  # noqa: E402
from robustkit.studies import AuditContext, get_study  # noqa: E402
from robustkit.studies.condition_plan import plan_conditions  # noqa: E402

SIZE = 128
CLASSES = ["COVID-19", "NORMAL", "Viral Pneumonia"]
#: (study, overrides): every transform of the family, so the slowest ones (rotation, zoom,
#: JPEG, resolution) are all in the measurement; perturbation at its middle severity only.
RUNS = (
    ("perturbation", {"severities": [3]}),
    ("noise", {"severities": [1, 3, 5]}),
)


def _build(folder: Path) -> Path:
    """InceptionV3 at 128 px (robustkit.model.training's model, else keras.applications), saved as .keras."""
    from robustkit._tf import keras

    try:
        from robustkit.model.training import build_model

        model = build_model("inception_v3", input_size=SIZE, num_classes=3, channels=3, weights="none")
    except ImportError:
        model = keras.applications.InceptionV3(weights=None, input_shape=(SIZE, SIZE, 3), classes=3,
                                               classifier_activation="softmax")
    path = folder / "inception.keras"
    model.save(path)
    (folder / "inception.meta.json").write_text(json.dumps({"class_names": CLASSES}))
    return path


def _data(folder: Path, n: int, seed: int):
    per_class = -(-n // 3)
    try:
        from robustkit.data.phantom import generate_phantom

        root = generate_phantom(folder / "phantom", per_class=per_class, size=SIZE, seed=seed)
    except ImportError:
        from PIL import Image

        rng = np.random.default_rng(seed)
        root = folder / "random"
        for name in CLASSES:
            (root / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(root / name / f"{i}.png")
    return load_dataset(root).subsample(n, seed=seed)


def _bare(model: ModelAdapter, batches: list[np.ndarray], passes: int) -> float:
    """Seconds for ``passes`` compiled forward calls cycling over the pre-made batches."""
    start = time.perf_counter()
    for i in range(passes):
        model.logits(batches[i % len(batches)])
    return time.perf_counter() - start


def _measure(name: str, overrides: dict, model: ModelAdapter, data, seed: int, repeats: int) -> dict[str, float]:
    """Alternate bare runs and study runs (bare, study, bare, ..., bare); each study run is
    compared with the mean of the bare runs either side of it, so that a drifting machine
    load cancels out; the median ratio over the repeats is reported."""
    study = get_study(name).configure("standard", {"max_samples": None, **overrides})
    plan = plan_conditions(study.config.transforms, study.config.severities)
    ctx = AuditContext(seed=seed)
    ctx.clean_logits(model, data)  # shared with the clean study in an audit; also warms up the graph
    h, w, c = model.input_shape
    starts = range(0, len(data), model.batch_size)
    batches = [data.load_images(np.arange(s, min(len(data), s + model.batch_size)), size=(h, w), channels=c)
               for s in starts]
    lung = len(MASK_CONDITIONS) if name == "perturbation" and data.has_lung_masks else 0  # lungs/outside blanked
    passes = (len(plan.jobs) + lung) * len(batches)
    bare = [_bare(model, batches, passes)]
    runs = []
    for _ in range(repeats):
        calls, start = model.calls, time.perf_counter()
        study.execute(model, data, ctx)
        runs.append(time.perf_counter() - start)
        assert model.calls - calls == passes, (model.calls - calls, passes)  # one pass per sample and condition
        bare.append(_bare(model, batches, passes))
    ratios = [r / ((a + b) / 2) for r, a, b in zip(runs, bare, bare[1:])]
    return {
        "conditions": len(plan.conditions) + lung, "distinct": len(plan.jobs) + lung, "passes": passes,
        "study_s": float(np.median(runs)), "bare_s": float(np.median(bare)),
        "ratio": float(np.median(ratios)), "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images (default 32)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="study runs per study (default 3)")
    args = parser.parse_args(argv)
    from robustkit._tf import tf

    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = load_model(_build(folder), batch_size=args.batch_size)
        data = _data(folder, args.n, args.seed)
        print(f"InceptionV3 {SIZE}x{SIZE}x3, {model.model.count_params():,} parameters, batch {model.batch_size}, "
              f"{len(data)} phantom images, {device}, TensorFlow {tf.__version__}")
        rows = [(name, _measure(name, overrides, model, data, args.seed, args.repeats)) for name, overrides in RUNS]
    print(f"\n{'study':<13}{'conditions (distinct)':>22}{'passes':>8}{'study s':>9}{'bare s':>8}  ratio (per run)")
    worst = 0.0
    for name, r in rows:
        each = ", ".join(f"{v:.3f}" for v in r["ratios"])
        print(f"{name:<13}{r['conditions']:>16} ({r['distinct']:>2}){r['passes']:>8}{r['study_s']:>9.2f}"
              f"{r['bare_s']:>8.2f}  {r['ratio']:.3f} ({each})")
        worst = max(worst, r["ratio"])
    print(f"\nratio = study wall time / the same number of bare compiled forward passes on batches of the same "
          f"size, median over runs; target <= 1.15: {'met' if worst <= 1.15 else 'NOT met'} (worst {worst:.3f}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
