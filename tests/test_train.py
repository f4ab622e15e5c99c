"""Tests of robustkit.model.training: the model factory, the training loop and what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustkit.errors import ConfigError
from robustkit.model.training import ARCHITECTURES, DEMO_RECIPE, TrainResult, build_model, train

CLASSES = ("COVID-19", "NORMAL", "Viral Pneumonia")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 8 grayscale 32-px PNGs; the class is a bright bar at a class-specific row."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(8):
            img = rng.integers(0, 80, size=(32, 32), dtype=np.uint8)
            img[4 + 10 * k : 8 + 10 * k, :] = 220
            Image.fromarray(img).save(root / name / f"{name}_{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("run") / "model.keras"
    return train(tiny_data, out, arch="small_cnn", input_size=32, epochs=3, batch_size=8, seed=3, quiet=True)


@pytest.mark.slow
@pytest.mark.inception
def test_inception_v3_has_the_original_parameter_count() -> None:
    model = build_model("inception_v3", input_size=75)
    assert model.count_params() == 22_360_611
    assert model.input_shape == (None, 75, 75, 3)
    assert model.output_shape == (None, 3)
    assert model.get_layer("predictions").activation.__name__ == "softmax"
    assert model.get_layer("head_dense_1").units == 256


@pytest.mark.slow
@pytest.mark.inception
def test_inception_v3_grayscale_input_is_repeated_to_rgb_inside_the_model() -> None:
    model = build_model("inception_v3", input_size=75, channels=1, num_classes=2)
    assert model.count_params() == 22_360_611 - 129  # Dense 128 -> 2 instead of 3
    gray = np.random.default_rng(0).random((2, 75, 75, 1), dtype=np.float32)
    probs = model.predict(gray, verbose=0)
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    from robustkit._tf import keras

    rgb = keras.Model(model.inputs, model.get_layer("gray_to_rgb").output)(gray)  # each channel is the image
    np.testing.assert_array_equal(np.asarray(rgb), np.repeat(gray, 3, axis=-1))


def test_small_cnn_maps_pixels_to_probabilities() -> None:
    model = build_model("small_cnn", input_size=32, num_classes=4)
    probs = model.predict(np.zeros((3, 32, 32, 3), np.float32), verbose=0)
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_builds_the_same_weights() -> None:
    a = build_model("small_cnn", input_size=16, seed=5).get_weights()
    b = build_model("small_cnn", input_size=16, seed=5).get_weights()
    c = build_model("small_cnn", input_size=16, seed=6).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_weights_from_a_file_are_loaded(tmp_path: Path) -> None:
    source = build_model("small_cnn", input_size=16, seed=1)
    path = tmp_path / "w.weights.h5"
    source.save_weights(path)
    loaded = build_model("small_cnn", input_size=16, seed=2, weights=str(path))
    assert all(np.array_equal(x, y) for x, y in zip(source.get_weights(), loaded.get_weights()))


def test_imagenet_weights_without_cache_raise_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="--weights none") as info:
        build_model("inception_v3", input_size=75, weights="imagenet")
    assert "--weights PATH" in str(info.value)
    assert "offline" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"arch": "resnet"}, "arch"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"weights": "no/such/file.h5"}, "weights"),
    ],
)
def test_bad_arguments_raise_config_errors(tiny_data: Path, tmp_path: Path, kwargs: dict, name: str) -> None:
    args = {"arch": "small_cnn", "input_size": 32, "epochs": 1, "quiet": True, **kwargs}
    with pytest.raises(ConfigError, match=repr(name)):
        train(tiny_data, tmp_path / "m.keras", **args)


def test_build_model_rejects_unknown_arch_and_tiny_inception() -> None:
    with pytest.raises(ConfigError, match="'arch'"):
        build_model("vgg")
    with pytest.raises(ConfigError, match="'input_size'"):
        build_model("inception_v3", input_size=64)


def test_training_writes_checkpoint_history_plot_and_meta(tiny_run: TrainResult) -> None:
    assert tiny_run.checkpoint.name == "model.keras" and tiny_run.checkpoint.is_file()
    assert tiny_run.history_json.name == "model.history.json"
    assert tiny_run.plot.name == "model.history.png"
    assert tiny_run.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads(tiny_run.history_json.read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1, 2, 3]
    for row in history["epochs"]:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"} <= set(row)
    assert history["class_names"] == list(CLASSES) == tiny_run.class_names
    assert history["seed"] == 3
    assert history["recipe"]["deviations"]
    meta = json.loads(tiny_run.checkpoint.with_name("model.meta.json").read_text())
    assert meta["class_names"] == list(CLASSES)
    assert (meta["input_size"], meta["channels"], meta["arch"], meta["input_range"]) == (32, 3, "small_cnn", [0, 1])


def test_best_checkpoint_is_the_epoch_of_lowest_validation_loss(tiny_run: TrainResult, tiny_data: Path) -> None:
    import keras

    from robustkit.data.loader import load_dataset

    history = json.loads(tiny_run.history_json.read_text())
    val_losses = [row["val_loss"] for row in history["epochs"]]
    assert tiny_run.best_epoch == int(np.argmin(val_losses)) + 1 == history["best_epoch"]
    data = load_dataset(tiny_data)
    val, fit = data.split(0.2, seed=3)  # val_fraction of every class validates, the rest trains
    assert (history["n_val"], history["n_train"]) == (len(val), len(fit)) and len(fit) > len(val)
    x = val.load_images(np.arange(len(val)), size=(32, 32), channels=3)
    model = keras.models.load_model(tiny_run.checkpoint)
    probs = model.predict(x, verbose=0)
    nll = float(np.mean(-np.log(probs[np.arange(len(val)), val.labels])))
    assert nll == pytest.approx(tiny_run.best_val_loss, rel=1e-4, abs=1e-5)
    assert float(np.mean(probs.argmax(1) == val.labels)) == pytest.approx(tiny_run.best_val_accuracy)


def test_same_seed_gives_the_same_history(tiny_data: Path, tmp_path: Path, tiny_run: TrainResult) -> None:
    again = train(tiny_data, tmp_path / "again.keras", arch="small_cnn", input_size=32, epochs=3,
                  batch_size=8, seed=3, quiet=True)
    first = json.loads(tiny_run.history_json.read_text())["epochs"]
    second = json.loads(again.history_json.read_text())["epochs"]
    keys = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
    assert [[r[k] for k in keys] for r in first] == [[r[k] for k in keys] for r in second]
    assert again.best_val_loss == tiny_run.best_val_loss


def test_demo_recipe_names_a_known_architecture() -> None:
    assert DEMO_RECIPE["arch"] in ARCHITECTURES
    assert DEMO_RECIPE["input_size"] >= 75
