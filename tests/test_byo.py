"""A model from elsewhere: declared preprocessing and class order, the input probe, inspect.

The model here is the toy CNN with three input channels, trained on images preprocessed with
keras.applications' ``caffe`` mode outside the model and with its outputs in an order of its
own, saved without robustkit's sidecar: the setting of a checkpoint a vendor hands over.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, SIZE

from robustkit.errors import ConfigError, ModelError
from robustkit.model.preprocess import PRESETS, resolve_preprocess

VENDOR_ORDER = ("Viral Pneumonia", "COVID-19", "NORMAL")  # not the data's (alphabetical) order


def _keras_preprocess(x01: np.ndarray, mode: str) -> np.ndarray:
    from keras.applications import imagenet_utils

    return imagenet_utils.preprocess_input(np.asarray(x01 * 255.0, dtype=np.float32).copy(), mode=mode)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_presets_equal_keras_applications_preprocess_input(mode: str) -> None:
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.float32) / np.float32(255)
    ours = resolve_preprocess(preset=mode, channels=3).apply(x)
    np.testing.assert_allclose(ours, _keras_preprocess(x, mode), rtol=0, atol=2e-6 * (255 if mode == "caffe" else 1))


def test_plain_presets_and_custom_normalisation_are_the_formula() -> None:
    x = np.linspace(0, 1, 2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)
    assert np.array_equal(resolve_preprocess(preset="unit").apply(x), x)
    assert np.array_equal(resolve_preprocess(preset="255").apply(x), x * 255.0)
    assert np.array_equal(resolve_preprocess(preset="symmetric").apply(x), x * 2.0 - 1.0)  # the older name of tf
    custom = resolve_preprocess(preset="255", mean="10,20,30", std="2,4,5")
    np.testing.assert_allclose(custom.apply(x), (x * 255 - np.array([10, 20, 30])) / np.array([2, 4, 5]), rtol=1e-6)
    assert custom.preset == "custom" and "--input-mean 10,20,30" in custom.flags()
    bgr = resolve_preprocess(preset="unit", order="bgr").apply(x)
    assert np.array_equal(bgr, x[..., ::-1])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"preset": "torch", "channels": 1}, "expected a three-channel model"),
    ({"preset": "tf", "mean": "0.5"}, "expected them with --preprocess unit or 255"),
    ({"preset": "unit", "mean": "1,2"}, "one number or three"),
    ({"preset": "unit", "std": "0,1,1"}, "expected positive values"),
    ({"preset": "caffe", "order": "rgb"}, "expected bgr with --preprocess caffe"),
    ({"preset": "unit", "order": "gray"}, "expected a one-channel model"),
    ({"preset": "imagenet"}, "expected one of unit, 255, tf, torch, caffe"),
])
def test_bad_preprocessing_options_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_preprocess(**{"channels": 3, **kwargs})


def test_sidecar_keys_declare_the_preprocessing() -> None:
    p = resolve_preprocess(channels=3, meta={"preprocess": "caffe"})
    assert p.preset == "caffe" and p.channels == "bgr" and not p.assumed and "meta.json" in p.source
    assert resolve_preprocess(channels=3, meta={"input_scale": "symmetric"}).preset == "tf"
    assert not resolve_preprocess(channels=3, meta={"input_range": [0, 1]}).assumed  # robustkit train's sidecar
    assert resolve_preprocess(channels=3, meta={}).assumed
    assert set(p.table()) == {"preprocess", "channel_order"} and set(PRESETS) >= {"unit", "255", "tf", "torch", "caffe"}


# ---------------------------------------------------------------- the vendor's model


def _images(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    xs, ys = [], []
    for k, name in enumerate(CLASSES):
        for f in sorted((root / name).glob("*.png")):
            xs.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0)
            ys.append(k)
    return np.stack(xs), np.array(ys)


@pytest.fixture(scope="module")
def vendor_model(tmp_path_factory: pytest.TempPathFactory, toy_data: Path) -> Path:
    """The toy CNN (three channels) fitted on caffe-preprocessed images, outputs in VENDOR_ORDER, no sidecar."""
    from conftest import build_toy_model

    from robustkit._tf import keras

    x, y = _images(toy_data)
    vendor_y = np.array([VENDOR_ORDER.index(CLASSES[k]) for k in y])
    model = build_toy_model(channels=3, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(_keras_preprocess(x, "caffe"), vendor_y, epochs=30, batch_size=12, verbose=0, shuffle=False)
    path = tmp_path_factory.mktemp("vendor") / "vendor.keras"
    model.save(path)
    return path


def _audit(capsys: pytest.CaptureFixture[str], model: Path, data: Path, out: Path, *flags: str) -> tuple[int, str]:
    from robustkit.cli import main

    code = main(["audit", "--model", str(model), "--data", str(data), "--out", str(out), "--studies", "clean",
                 "--set", "clean.n_bootstrap=20", "-q", *flags])
    return code, capsys.readouterr().err


def test_declared_setup_audits_and_equals_keras_with_the_same_preprocessing(
        capsys: pytest.CaptureFixture[str], vendor_model: Path, toy_data: Path, tmp_path: Path) -> None:
    from robustkit._tf import keras

    code, err = _audit(capsys, vendor_model, toy_data, tmp_path / "a", "--preprocess", "caffe",
                       "--model-classes", ",".join(VENDOR_ORDER))
    assert code == 0, err
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    x, y = _images(toy_data)
    keras_probs = keras.saving.load_model(vendor_model).predict(_keras_preprocess(x, "caffe"), verbose=0)
    expected = np.mean(np.array(VENDOR_ORDER)[keras_probs.argmax(axis=1)] == np.array(CLASSES)[y])
    assert saved["studies"]["clean"]["metrics"]["accuracy"] == pytest.approx(expected)
    assert expected > 0.9  # the vendor's model is good when read right
    m = saved["model"]
    assert m["preprocess"]["preset"] == "caffe" and m["class_names"] == list(VENDOR_ORDER)
    assert m["assumptions"] == [] and m["input_probe"]["verdict"] == "ok"
    setup = next(c for c in saved["studies"]["clean"]["checks"] if c["name"] == "model setup")
    assert setup["status"] == "pass"
    report = (tmp_path / "a" / "report.html").read_text()
    assert "Input probe" in report and "(x[..., ::-1] * 255 - [103.939, 116.779, 123.68])" in report


def test_undeclared_setup_stops_before_any_study_and_names_the_flags(
        capsys: pytest.CaptureFixture[str], vendor_model: Path, toy_data: Path, tmp_path: Path) -> None:
    code, err = _audit(capsys, vendor_model, toy_data, tmp_path / "b")
    lines = [ln for ln in err.splitlines() if ln.startswith("robustkit: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "caffe" in lines[0].split(";")[0] and "--preprocess unit" not in lines[0] and "--model-classes 'Viral Pneumonia,COVID-19,NORMAL'" in lines[0]
    assert not (tmp_path / "b" / "results.json").exists()  # stopped before any study


def test_right_preprocessing_wrong_order_names_the_order(
        capsys: pytest.CaptureFixture[str], vendor_model: Path, toy_data: Path, tmp_path: Path) -> None:
    code, err = _audit(capsys, vendor_model, toy_data, tmp_path / "c", "--preprocess", "caffe")
    assert code == 2 and "--model-classes 'Viral Pneumonia,COVID-19,NORMAL'" in err and "--preprocess" not in err.split(
        "expects")[1].split(";")[0]


def test_no_input_probe_audits_and_states_the_assumptions(
        capsys: pytest.CaptureFixture[str], vendor_model: Path, toy_data: Path, tmp_path: Path) -> None:
    code, err = _audit(capsys, vendor_model, toy_data, tmp_path / "d", "--no-input-probe")
    assert code == 0, err
    saved = json.loads((tmp_path / "d" / "results.json").read_text())
    assumptions = saved["model"]["assumptions"]
    assert any("preprocessing assumed" in a for a in assumptions)
    assert any("class order assumed from the data's class names" in a for a in assumptions)
    setup = next(c for c in saved["studies"]["clean"]["checks"] if c["name"] == "model setup")
    assert setup["status"] == "warn" and "assumed" in setup["detail"]
    assert saved["model"]["input_probe"] == {"skipped": "--no-input-probe (input_probe = false)"}
    from robustkit.card import build_card
    from robustkit.results import load_results

    card = build_card(load_results(tmp_path / "d"))
    assert any("assumed" in line for line in card.model["setup"])


def test_config_model_table_declares_the_same_setup(vendor_model: Path, toy_data: Path) -> None:
    from robustkit import audit

    cfg = {"studies": ["clean"], "clean": {"n_bootstrap": 20},
           "model": {"preprocess": "caffe", "model_classes": list(VENDOR_ORDER)}}
    result = audit(vendor_model, toy_data, config=cfg)
    assert result.model["preprocess"]["preset"] == "caffe" and result.model["input_probe"]["verdict"] == "ok"
    with pytest.raises(ConfigError, match="Unknown key 'classes' in \\[model\\]"):
        audit(vendor_model, toy_data, config={"model": {"classes": ["a"]}})


def test_probe_finds_the_order_by_assignment_not_by_permutations() -> None:
    """A model whose outputs are a known permutation of the labels: the probe's assignment
    recovers it on a 5-class problem (120 orders) from one confusion matrix."""
    from robustkit._tf import keras
    from robustkit.model.adapter import ModelAdapter
    from robustkit.model.probe import run_probe

    k, n = 5, 60
    perm = np.array([3, 0, 4, 1, 2])  # output j answers class perm[j]
    inp = keras.Input((1, k, 1))
    out = keras.layers.Dense(k, activation="softmax", use_bias=False, name="head")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    w = np.zeros((k, k), np.float32)
    w[perm, np.arange(k)] = 10.0  # pixel perm[j] drives output j
    model.get_layer("head").set_weights([w])
    y = np.arange(n) % k
    x = np.zeros((n, 1, k, 1), np.float32)
    x[np.arange(n), 0, y, 0] = 1.0
    adapter = ModelAdapter(model, class_names=[f"c{i}" for i in range(k)], input_scale="unit")
    table = run_probe(adapter, x, y)
    declared = table["rows"][0]
    assert declared["setup"] == "declared" and declared["score"] == pytest.approx(np.mean(perm[np.arange(k)] == np.arange(k)))
    assert declared["order"] == [f"c{i}" for i in perm] and declared["score_in_order"] == 1.0
    assert table["verdict"] == "stop" and "--model-classes c3,c0,c4,c1,c2" in table["message"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_untrained_models_do_not_stop_the_audit(seed: int, toy_data: Path) -> None:
    """Some order always fits an untrained model's outputs a little; the rule's "good" clause
    keeps that from reading as a wrong setup (no false stop)."""
    from conftest import build_toy_model

    from robustkit.data.loader import load_dataset
    from robustkit.model.adapter import ModelAdapter
    from robustkit.runner import align_classes, input_probe_table

    adapter = ModelAdapter(build_toy_model(seed=seed), input_scale="unit")
    data = align_classes(adapter, load_dataset(toy_data))
    assert input_probe_table(adapter, data, seed=seed)["verdict"] != "stop"


def test_multilabel_probe_finds_swapped_findings(toy_multilabel: Path, toy_multilabel_model: Path) -> None:
    from robustkit.data.loader import load_dataset
    from robustkit.model.adapter import load_model
    from robustkit.runner import input_probe_table

    adapter = load_model(toy_multilabel_model)
    names = list(adapter.class_names)
    data = load_dataset(toy_multilabel).with_class_order(names)
    good = input_probe_table(adapter, data, seed=0)
    assert good["metric"] == "macro AUROC" and good["verdict"] == "ok" and good["rows"][0]["score"] > 0.9
    swapped = load_model(toy_multilabel_model, class_names=[names[1], names[0], names[2]])
    table = input_probe_table(swapped, data.with_class_order(list(swapped.class_names)), seed=0)
    assert table["rows"][0]["order"] == names and table["verdict"] == "stop", table


# ---------------------------------------------------------------- inspect, input size, reload


def test_inspect_text_and_json(capsys: pytest.CaptureFixture[str], vendor_model: Path, toy_data: Path) -> None:
    from robustkit.cli import main

    assert main(["inspect", str(vendor_model), "--data", str(toy_data)]) == 0
    text = capsys.readouterr().out
    assert "input            32 x 32 x 3" in text and "Grad-CAM layer   max_pooling2d" in text  # the pooled map after conv2 (Keras numbers the name)
    assert "none inside the model" in text and "--preprocess caffe" in text and "stop" in text
    assert main(["inspect", str(vendor_model), "--json", "--preprocess", "caffe", "--model-classes",
                 ",".join(VENDOR_ORDER), "--data", str(toy_data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_probe"]["verdict"] == "ok" and report["final_layer"]["activation"] == "softmax"
    assert report["output"]["kind"] == "softmax" and report["needs_trust_model"] == []


def test_inspect_finds_rescaling_and_lambda_layers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from robustkit._tf import keras
    from robustkit.cli import main

    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inp)
    x = keras.layers.Lambda(lambda t: t * 1.0, name="identity_code")(x)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path / "lam.keras"
    keras.Model(inp, out).save(path)
    assert main(["inspect", str(path)]) == 2  # not loaded without --trust-model
    text = capsys.readouterr().out
    assert "needed for identity_code (Lambda)" in text and "not loaded" in text
    assert main(["inspect", str(path), "--trust-model", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preprocessing_layers"][0] == {"name": "rescale", "class": "Rescaling", "scale": pytest.approx(1 / 255, rel=1e-6),
                                                 "offset": 0.0}
    assert "--preprocess 255" in report["preprocessing_hint"]


@pytest.mark.parametrize(("scale", "offset", "flag"), [(1 / 255, 0.0, "--preprocess 255"),
                                                       (1 / 127.5, -1.0, "--preprocess 255"),
                                                       (2.0, -1.0, "--preprocess unit")])
def test_inspect_reads_what_a_rescaling_layer_implies(scale: float, offset: float, flag: str) -> None:
    from robustkit.inspection import _hint

    assert flag in _hint([{"name": "r", "class": "Rescaling", "scale": scale, "offset": offset}])


def test_undefined_input_size_needs_input_size(tmp_path: Path, toy_data: Path) -> None:
    from robustkit import audit
    from robustkit._tf import keras
    from robustkit.model.adapter import load_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    path = tmp_path / "any.keras"
    model.save(path)
    with pytest.raises(ModelError, match="pass --input-size H,W"):
        load_model(path)
    adapter = load_model(path, input_size=(SIZE, 40))
    assert adapter.input_shape == (SIZE, 40, 1) and adapter.model.get_layer("conv") is not None
    x = np.random.default_rng(0).random((2, SIZE, 40, 1), dtype=np.float32)
    np.testing.assert_allclose(adapter.probs(x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    result = audit(path, toy_data, studies=["clean"], input_size=(SIZE, 40), config={"clean": {"n_bootstrap": 20}},
                   input_probe=False)
    assert result.model["input_shape"] == [SIZE, 40, 1] and result.model["input_size_given"] == [SIZE, 40]


def test_load_spec_rebuilds_the_same_adapter(vendor_model: Path) -> None:
    """What a Ray worker loads: the same preprocessing, classes and logits."""
    from robustkit.model.adapter import load_model

    adapter = load_model(vendor_model, preprocess="caffe", class_names=list(VENDOR_ORDER))
    again = load_model(**adapter.load_spec(trust=False))
    x = np.random.default_rng(1).random((3, SIZE, SIZE, 3), dtype=np.float32)
    assert again.preprocess == adapter.preprocess and again.class_names == list(VENDOR_ORDER)
    np.testing.assert_array_equal(again.logits(x), adapter.logits(x))


def test_load_options_beside_a_loaded_adapter_are_refused(vendor_model: Path, toy_data: Path) -> None:
    """They would be silently ignored: the adapter is already read."""
    from robustkit import audit
    from robustkit.model.adapter import load_model

    with pytest.raises(ConfigError, match="preprocess, model_classes: expected them when auditing a checkpoint"):
        audit(load_model(vendor_model), toy_data, studies=["clean"], preprocess="caffe",
              model_classes=list(VENDOR_ORDER))
