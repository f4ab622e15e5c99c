"""Bring your own model, end to end: a DenseNet121 trained outside robustkit, audited with and
without its declared setup, and the input probe's cost.

The model is what a vendor hands over: ``keras.applications.DenseNet121`` (weights=None)
trained on phantom images preprocessed with ``keras.applications.densenet.preprocess_input``
outside the model (torch mode), its outputs in an order of its own (not the folders'
alphabetical one), saved as ``.keras`` with no sidecar. Prints, in one run:

  1. ``robustkit audit`` with ``--preprocess torch --model-classes ...``: exit code, clean
     accuracy, and the accuracy computed independently with Keras + PIL + the same
     ``preprocess_input`` (they must be equal);
  2. ``robustkit audit`` with no flags: exit code and the one-line error that names the flags;
  3. the probe's time (one forward pass per preset on the probe images) against the audit's.

Usage (from the repository root; about 5 minutes on 2 CPU cores):
    python benchmarks/byo_densenet.py [--size 64] [--per-class 60] [--epochs 12] [--work DIR]
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

VENDOR_ORDER = ("NORMAL", "Viral Pneumonia", "COVID-19")


def _images(root: Path, size: int) -> tuple[np.ndarray, list[str]]:
    """Every PNG under the phantom's class folders, as a Keras user reads them (PIL, RGB, resized)."""
    xs, names = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name in VENDOR_ORDER):
        for f in sorted(folder.glob("*.png")):
            img = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
            xs.append(np.asarray(img, dtype=np.float32))
            names.append(folder.name)
    return np.stack(xs), names


def _robustkit(*args: str) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "robustkit", *args], capture_output=True, text=True)
    return run.returncode, run.stderr, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="byo-"))
    train, test = work / "train", work / "test"
    for out, seed in ((train, 1), (test, 2)):
        if not out.exists():
            code, err, _ = _robustkit("phantom", "--out", str(out), "--per-class", str(a.per_class),
                                      "--size", str(a.size), "--seed", str(seed))
            assert code == 0, err

    from keras.applications import densenet

    from robustkit._tf import keras

    ckpt = work / "densenet121.keras"
    if not ckpt.exists():
        keras.utils.set_random_seed(0)
        x, names = _images(train, a.size)
        y = np.array([VENDOR_ORDER.index(n) for n in names])
        model = keras.applications.DenseNet121(weights=None, input_shape=(a.size, a.size, 3), classes=3)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        t0 = time.perf_counter()
        model.fit(densenet.preprocess_input(x.copy()), y, epochs=a.epochs, batch_size=16, verbose=0, shuffle=True)
        print(f"trained DenseNet121 at {a.size} px for {a.epochs} epochs in {time.perf_counter() - t0:.0f} s")
        model.save(ckpt)  # no sidecar: robustkit knows nothing of its preprocessing or class order

    x, names = _images(test, a.size)
    probs = keras.saving.load_model(ckpt).predict(densenet.preprocess_input(x.copy()), verbose=0)
    keras_accuracy = float(np.mean(np.array(VENDOR_ORDER)[probs.argmax(axis=1)] == np.array(names)))

    declared = ["--preprocess", "torch", "--model-classes", ",".join(VENDOR_ORDER)]
    base = ["audit", "--model", str(ckpt), "--data", str(test), "--studies", "clean", "-q", "--fresh"]
    code, err, seconds = _robustkit(*base, "--out", str(work / "declared"), *declared)
    saved = json.loads((work / "declared" / "results.json").read_text()) if code == 0 else {}
    accuracy = saved.get("studies", {}).get("clean", {}).get("metrics", {}).get("accuracy")
    probe = saved.get("model", {}).get("input_probe", {})
    print(f"1. robustkit audit {' '.join(declared)}: exit {code}, clean accuracy {accuracy}, "
          f"Keras + PIL + densenet.preprocess_input {keras_accuracy:.4f} ({len(names)} images)")
    for row in probe.get("rows", []):
        print(f"   probe {row['setup']:<9} {row['score']:.3f}  {row['flags']}")
    print(f"   probe: {probe.get('n')} images, {probe.get('seconds', float('nan')):.2f} s of the audit's {seconds:.1f} s; "
          f"verdict {probe.get('verdict')}")
    code2, err2, seconds2 = _robustkit(*base, "--out", str(work / "undeclared"))
    line = next((ln for ln in err2.splitlines() if ln.startswith("robustkit: error:")), err2.strip()[-300:])
    print(f"2. robustkit audit (no flags): exit {code2} after {seconds2:.1f} s, results.json written: "
          f"{(work / 'undeclared' / 'results.json').exists()}\n   {line}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
