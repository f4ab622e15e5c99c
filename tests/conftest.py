"""Shared fixtures: a tiny folder dataset and a tiny trained Keras classifier.

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


def build_toy_model(*, size: int = SIZE, channels: int = 1, seed: int = 0):
    """A small functional CNN ending in a softmax Dense layer (pixel space in [0, 1])."""
    from robustkit._tf import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv1")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv2")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(len(CLASSES), activation="softmax", name="predictions")(x)
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
def toy_arrays(toy_model: Path, toy_data: Path):
    """The toy model as an adapter, the toy images ``(N, H, W, 1)`` and labels ``(N,)``."""
    from robustkit.data.dataset import load_dataset
    from robustkit.model.adapter import load_model

    adapter = load_model(toy_model)
    data = load_dataset(toy_data)
    h, w, c = adapter.input_shape
    return adapter, data.load_images(np.arange(len(data)), size=(h, w), channels=c), np.asarray(data.labels)
