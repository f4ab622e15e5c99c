"""ModelAdapter: loading, logits before the softmax, pixel-space scaling, gradients, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from robustkit._tf import keras
from robustkit.errors import ModelError
from robustkit.model.adapter import ModelAdapter, load_model, softmax
from tests.conftest import CLASSES, SIZE, build_toy_model


def _batch(n: int = 5, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, SIZE, SIZE, channels), dtype=np.float32)


def test_logits_are_the_pre_softmax_activations(toy_model: Path) -> None:
    adapter = load_model(toy_model)
    x = _batch()
    model = adapter.model
    trunk = keras.Model(model.inputs, model.get_layer("predictions").input)
    dense = model.get_layer("predictions")
    expected = trunk.predict(x, verbose=0) @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(adapter.logits(x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adapter.probs(x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    assert "Dense" in adapter.logits_source


def test_class_names_and_fingerprint_come_from_the_checkpoint(toy_model: Path) -> None:
    adapter = load_model(toy_model)
    assert adapter.class_names == list(CLASSES)
    assert adapter.input_shape == (SIZE, SIZE, 1)
    assert len(adapter.fingerprint) == 64 and adapter.describe()["parameters"] > 0


def test_softmax_activation_layer_and_sequential_models() -> None:
    seq = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(3),
                            keras.layers.Activation("softmax")])
    adapter = ModelAdapter(seq, class_names=list(CLASSES))
    x = _batch(channels=3)
    z = adapter.logits(x)
    np.testing.assert_allclose(softmax(z), seq.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    assert "Activation" in adapter.logits_source


def test_a_model_that_outputs_logits_is_used_as_is() -> None:
    inp = keras.Input((SIZE, SIZE, 1))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    adapter = ModelAdapter(model)
    x = _batch()
    np.testing.assert_allclose(adapter.logits(x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("scale", "mul", "add"), [("255", 255.0, 0.0), ("symmetric", 2.0, -1.0)])
def test_input_scale_is_applied_inside_the_graph(scale: str, mul: float, add: float) -> None:
    inp = keras.Input((SIZE, SIZE, 1))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    x = _batch()
    got = ModelAdapter(model, input_scale=scale).logits(x)
    np.testing.assert_allclose(got, model.predict(x * mul + add, verbose=0), rtol=1e-4, atol=1e-4)


def test_gradient_matches_finite_differences(toy_model: Path) -> None:
    adapter = load_model(toy_model)
    x = _batch(2, seed=3).astype(np.float64).astype(np.float32)
    target = np.array([0, 2])
    g = adapter.gradient(x, target)
    rng = np.random.default_rng(0)
    d = rng.standard_normal(x.shape).astype(np.float32)
    d /= np.linalg.norm(d.reshape(2, -1), axis=1)[:, None, None, None]
    h = 1e-2
    zp = adapter.logits(x + h * d)[np.arange(2), target]
    zm = adapter.logits(x - h * d)[np.arange(2), target]
    numeric = (zp - zm) / (2 * h)
    analytic = (g * d).reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(analytic, numeric, rtol=0.05, atol=1e-3)


def test_wrong_number_of_class_names_is_refused(toy_model: Path) -> None:
    with pytest.raises(ModelError, match="expected 3 distinct class names"):
        load_model(toy_model, class_names=["a", "b"])


def test_a_non_classifier_is_refused(tmp_path: Path) -> None:
    inp = keras.Input((SIZE, SIZE, 1))
    out = keras.layers.Conv2D(3, 3, padding="same")(inp)
    path = tmp_path / "segmenter.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(ModelError, match=r"segmenter\.keras: expected a classifier"):
        load_model(path)


def test_missing_and_unknown_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "nope.keras")
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\0" * 10)
    with pytest.raises(ModelError, match=r"weights\.bin: expected a Keras checkpoint"):
        load_model(bad)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match=r"corrupt\.keras: expected a loadable Keras model"):
        load_model(corrupt)


def test_lambda_layers_need_trust(tmp_path: Path) -> None:
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(ModelError, match="--trust-model"):
        load_model(path)
    assert load_model(path, trust=True).num_classes == 3


def test_keras2_era_h5_checkpoint_loads(tmp_path: Path) -> None:
    """A checkpoint written by Keras 2 (tf.keras, via the tf-keras package) as .h5 loads."""
    path = tmp_path / "detector.hdf5"
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import tf_keras as k
        k.utils.set_random_seed(0)
        m = k.Sequential([k.layers.InputLayer(input_shape=({SIZE}, {SIZE}, 3)),
                          k.layers.Conv2D(4, 3, activation="relu"),
                          k.layers.GlobalAveragePooling2D(),
                          k.layers.Dense(16, activation="relu"),
                          k.layers.Dropout(0.5),
                          k.layers.Dense(3, activation="softmax")])
        m.save(r"{path}")
        x = np.random.default_rng(0).random((4, {SIZE}, {SIZE}, 3), dtype=np.float32)
        np.save(r"{tmp_path / 'x.npy'}", x)
        np.save(r"{tmp_path / 'p.npy'}", m.predict(x, verbose=0))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    adapter = load_model(path, class_names=list(CLASSES))
    x = np.load(tmp_path / "x.npy")
    np.testing.assert_allclose(adapter.probs(x), np.load(tmp_path / "p.npy"), rtol=1e-4, atol=1e-6)
    assert "Dense" in adapter.logits_source


def test_untrained_toy_builder_is_deterministic() -> None:
    a = build_toy_model(seed=1).get_layer("predictions").kernel.numpy()
    b = build_toy_model(seed=1).get_layer("predictions").kernel.numpy()
    np.testing.assert_array_equal(a, b)
