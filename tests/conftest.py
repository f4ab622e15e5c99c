"""Shared fixtures: a tiny folder dataset and a tiny trained Keras classifier (and their
multi-label twins: a manifest of co-occurring findings and a sigmoid-head CNN).

Everything is small (32 px, a few dozen images, a two-layer CNN) so that the suite runs in
minutes on two CPU cores; one test module exercises the real InceptionV3 architecture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ("COVID-19", "NORMAL", "Viral Pneumonia")
SIZE = 32


def _pattern(label: int, rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A toy image per class: COVID-19 bright lower corners, Viral Pneumonia a central bar."""
    img = 0.3 + 0.05 * rng.standard_normal((size, size))
    mask = np.zeros((size, size), dtype=bool)
    q = size // 4
    if label == 0:
        mask[-q - 2 : -2, 2 : 2 + q] = True
        mask[-q - 2 : -2, -q - 2 : -2] = True
    elif label == 2:
        mask[q : size - q, size // 2 - 3 : size // 2 + 3] = True
    img[mask] += 0.5
    return np.clip(img, 0, 1), mask


def write_toy_dataset(root: Path, *, per_class: int = 12, seed: int = 0, size: int = SIZE) -> Path:
    """Folder-per-class grayscale PNGs with a masks/ tree."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / "masks" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, mask = _pattern(k, rng, size)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name / f"{name}_{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / name / f"{name}_{i:03d}.png")
    return root


def build_toy_model(*, size: int = SIZE, channels: int = 1, seed: int = 0, outputs: int = len(CLASSES),
                    activation: str = "softmax", head: str = "predictions"):
    """A small functional CNN ending in a Dense layer ``head`` of ``outputs`` units (softmax by
    default; pixel space in [0, 1])."""
    from robustkit._tf import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv1")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv2")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(outputs, activation=activation, name=head)(x)
    return keras.Model(inp, out, name="toy_cnn")


def train_toy_model(data_root: Path, out: Path, *, epochs: int = 30, seed: int = 0) -> Path:
    """Fit the toy CNN on the toy dataset and save it with robustkit's sidecar metadata."""
    from robustkit._tf import keras

    xs, ys = [], []
    for k, name in enumerate(CLASSES):
        for f in sorted((data_root / name).glob("*.png")):
            xs.append(np.asarray(Image.open(f), dtype=np.float32)[..., None] / 255.0)
            ys.append(k)
    model = build_toy_model(seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(np.stack(xs), np.array(ys), epochs=epochs, batch_size=12, verbose=0, shuffle=False)
    model.save(out)
    meta = {"class_names": list(CLASSES), "input_size": SIZE, "channels": 1, "arch": "toy_cnn"}
    out.with_name(out.name[: -len(out.suffix)] + ".meta.json").write_text(json.dumps(meta))
    return out


FINDINGS = ("Consolidation", "Nodule", "Opacity")


def _finding_masks(size: int = SIZE) -> dict[str, np.ndarray]:
    """Where each toy finding is drawn: Opacity the lower corners, Consolidation a central bar,
    Nodule a square at the top."""
    q = size // 4
    masks = {name: np.zeros((size, size), dtype=bool) for name in FINDINGS}
    masks["Opacity"][-q - 2 : -2, 2 : 2 + q] = True
    masks["Opacity"][-q - 2 : -2, -q - 2 : -2] = True
    masks["Consolidation"][q : size - q, size // 2 - 3 : size // 2 + 3] = True
    masks["Nodule"][2 : 2 + q // 2 + 2, 2 : 2 + q // 2 + 2] = True
    return masks


def write_toy_multilabel(root: Path, *, n: int = 48, seed: int = 0, size: int = SIZE) -> Path:
    """A multi-label manifest (``path,label,mask.<finding>...,site``): each finding present with
    probability 0.4 independently ("No Finding" when none), a mask per present finding."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in FINDINGS:
        (root / "masks" / name).mkdir(parents=True, exist_ok=True)
    drawn = _finding_masks(size)
    lines = ["path,label," + ",".join(f"mask.{f}" for f in FINDINGS) + ",site"]
    for i in range(n):
        present = [f for f in FINDINGS if rng.random() < 0.4]
        img = 0.3 + 0.05 * rng.standard_normal((size, size))
        cells = []
        for f in FINDINGS:
            if f in present:
                img[drawn[f]] += 0.5
                Image.fromarray(drawn[f].astype(np.uint8) * 255).save(root / "masks" / f / f"img_{i:03d}.png")
                cells.append(f"masks/{f}/img_{i:03d}.png")
            else:
                cells.append("")
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"img_{i:03d}.png")
        label = "|".join(present) or "No Finding"
        lines.append(f"images/img_{i:03d}.png,{label}," + ",".join(cells) + f",{'AB'[i % 2]}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def train_toy_multilabel(manifest: Path, out: Path, *, epochs: int = 40, seed: int = 0) -> Path:
    """A small CNN with a sigmoid head fitted by binary cross-entropy on the toy findings,
    saved with a sidecar saying ``"output": "multilabel"``."""
    from robustkit._tf import keras
    from robustkit.data.loader import load_dataset

    data = load_dataset(manifest)
    x = data.load_images(range(len(data)), size=(SIZE, SIZE), channels=1)
    model = build_toy_model(seed=seed, outputs=len(FINDINGS), activation="sigmoid", head="findings")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(x, data.targets.astype(np.float32), epochs=epochs, batch_size=12, verbose=0, shuffle=False)
    model.save(out)
    meta = {"class_names": list(FINDINGS), "input_size": SIZE, "channels": 1, "arch": "toy_cnn",
            "output": "multilabel"}
    out.with_name(out.name[: -len(out.suffix)] + ".meta.json").write_text(json.dumps(meta))
    return out


def strip_volatile(obj: object) -> object:
    """A results JSON without timings ("seconds") and dates ("created"), recursively."""
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in ("seconds", "created")}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory: pytest.TempPathFactory, toy_data: Path) -> Path:
    return train_toy_model(toy_data, tmp_path_factory.mktemp("model") / "toy.keras")


@pytest.fixture(scope="session")
def toy_multilabel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-label manifest of 48 toy images with three findings and per-finding masks."""
    return write_toy_multilabel(tmp_path_factory.mktemp("toyml") / "data")


@pytest.fixture(scope="session")
def toy_multilabel_model(tmp_path_factory: pytest.TempPathFactory, toy_multilabel: Path) -> Path:
    """The toy sigmoid-head CNN trained on :func:`toy_multilabel`'s images."""
    return train_toy_multilabel(toy_multilabel, tmp_path_factory.mktemp("mlmodel") / "toyml.keras")


@pytest.fixture(scope="session")
def toy_arrays(toy_model: Path, toy_data: Path):
    """The toy model as an adapter, the toy images ``(N, H, W, 1)`` and labels ``(N,)``."""
    from robustkit.data.loader import load_dataset
    from robustkit.model.adapter import load_model

    adapter = load_model(toy_model)
    data = load_dataset(toy_data)
    h, w, c = adapter.input_shape
    return adapter, data.load_images(np.arange(len(data)), size=(h, w), channels=c), np.asarray(data.labels)
