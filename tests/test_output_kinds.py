"""Output kinds (issue #19, items 1-2): a sigmoid head is audited as a sigmoid head.

Known answers against ``model.predict`` and images read with PIL; detection of each kind and
the overrides; the softmax path unchanged; the attack loss of a sigmoid head (binary
cross-entropy, checked against numpy); the sigmoid temperature recovered on synthetic logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.special import expit

from robustkit.errors import ConfigError, ModelError
from robustkit.metrics import calibration as CM
from robustkit.metrics import outputs as OUT
from robustkit.metrics.temperature import fit_temperature
from robustkit.model import attacks as A
from robustkit.model.adapter import ModelAdapter, load_model
from robustkit.results import load_results
from robustkit.runner import audit
from tests.conftest import CLASSES, SIZE


def _head_model(head: str, *, seed: int = 0, size: int = SIZE):
    """Toy CNN trunk + one of several heads; the bias spreads the outputs away from 0.5."""
    from robustkit._tf import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, strides=4, activation="relu", name="conv")(inp))
    act = {"dense_sigmoid": "sigmoid", "dense_softmax": "softmax"}.get(head)
    dense = keras.layers.Dense(len(CLASSES), activation=act, name="head",
                               bias_initializer=keras.initializers.Constant([0.8, -0.5, 0.1]))
    z = dense(h)
    if head == "activation_sigmoid":
        z = keras.layers.Activation("sigmoid")(z)
    elif head == "softmax_layer":
        z = keras.layers.Softmax()(z)
    elif head == "lambda_sigmoid":  # no recognisable last layer: the probe decides
        z = keras.layers.Lambda(lambda t: keras.ops.sigmoid(t))(z)
    return keras.Model(inp, z, name=f"toy_{head}")


def _images(n: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, 1)).astype(np.float32)


def _pil_images(root: Path, ids: np.ndarray) -> np.ndarray:
    """The images of ``ids`` read with PIL from the class folders (independent of robustkit's loader)."""
    files = {}
    for f in root.glob("*/*.png"):
        if f.parent.name in CLASSES:
            rel = f.relative_to(root)
            files.update({rel.as_posix(): f, rel.with_suffix("").as_posix(): f, f.stem: f, f.name: f})
    return np.stack([np.asarray(Image.open(files[str(i)]), dtype=np.float32)[..., None] / 255.0 for i in ids])


# ---------------------------------------------------------------- the stored probabilities


@pytest.fixture(scope="module")
def sigmoid_audit(toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("sigmoid") / "sigmoid.keras"
    model = _head_model("dense_sigmoid")
    model.save(path)
    out = tmp_path_factory.mktemp("sigmoid_audit")
    audit(path, toy_data, studies=["clean", "calibration"], profile="quick", out=out, seed=0, report=True)
    return model, load_results(out), out


def test_sigmoid_model_stored_probabilities_equal_model_predict(sigmoid_audit, toy_data: Path) -> None:
    model, result, _ = sigmoid_audit
    rec = result.records("clean")
    ids = np.asarray(result.ids)[rec["index"]]
    expected = model.predict(_pil_images(toy_data, ids), verbose=0)
    assert not np.allclose(expected.sum(axis=1), 1.0, atol=1e-2)  # a softmax would be told apart
    np.testing.assert_allclose(rec["probs"], expected, rtol=1e-6, atol=1e-7)
    assert rec["probs"].dtype == np.float32
    np.testing.assert_array_equal(rec["pred"], expected.argmax(axis=1))
    np.testing.assert_allclose(expit(rec["logits"].astype(np.float64)), expected, rtol=1e-6, atol=1e-7)
    cal = result.records("calibration")
    np.testing.assert_allclose(cal["confidence"], expected[_positions(rec, cal)].max(axis=1), rtol=1e-6, atol=1e-7)


def _positions(rec: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> np.ndarray:
    """Rows of ``rec`` holding the samples of ``other`` (both index into the audit's ids)."""
    where = {int(i): r for r, i in enumerate(rec["index"])}
    return np.array([where[int(i)] for i in other["index"]])


def test_sigmoid_audit_states_the_kind_in_results_report_and_exports(sigmoid_audit) -> None:
    _, result, out = sigmoid_audit
    assert result.model["output_kind"] == "sigmoid"
    assert "sigmoid" in result.model["output_kind_reason"] and "--output multilabel" in result.model["output_kind_reason"]
    assert "pre-activation" in result.model["logits_source"]
    export = json.loads((out / "temperature.json").read_text())
    assert export["output_kind"] == "sigmoid" and "sigmoid(logits / temperature)" in export["usage"]
    assert export["fitted_by"] == "one-vs-rest binary NLL"
    data = result.studies["calibration"].data
    assert "arg-max and its sigmoid value" in data["probability_form"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Output kind" in html and "sigmoid (" in html


def test_sigmoid_calibration_numbers_match_an_independent_computation(sigmoid_audit) -> None:
    from sklearn.metrics import log_loss

    _, result, _ = sigmoid_audit
    clean, cal = result.records("clean"), result.records("calibration")
    z = clean["logits"][_positions(clean, cal)].astype(np.float64)
    y = result.labels[cal["index"]]
    fit_rows, ev = cal["split"] == 0, cal["split"] == 1
    t = fit_temperature(z[fit_rows], y[fit_rows], "sigmoid").temperature
    assert result.metric("calibration.temperature") == pytest.approx(t, rel=1e-9)
    p = expit(z[ev])  # one-vs-rest binary NLL of the model's own sigmoid outputs, summed over outputs
    nll = sum(log_loss((y[ev] == k).astype(int), p[:, k], labels=[0, 1]) for k in range(3))
    assert result.metric("calibration.nll") == pytest.approx(nll, rel=1e-5)
    assert result.metric("calibration.ece") == pytest.approx(CM.ece(p, y[ev], n_bins=15), rel=1e-5)


def test_softmax_audit_path_is_unchanged(toy_model: Path) -> None:
    adapter = load_model(toy_model)
    x = _images()
    z = adapter.logits(x).astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    old = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)  # the formula the adapter used before
    np.testing.assert_array_equal(adapter.probs(x), old)
    np.testing.assert_array_equal(OUT.probabilities(z, "softmax"), CM.softmax(z))
    np.testing.assert_array_equal(OUT.probabilities(z, "logits", 2.0), CM.softmax(z, 2.0))
    assert adapter.describe()["output_kind"] == "softmax"
    for kind in ("softmax", "logits"):
        np.testing.assert_array_equal(OUT.sample_nll(z, np.array([0, 1, 2, 0, 1, 2]), kind, 1.5),
                                      CM.sample_nll(z, np.array([0, 1, 2, 0, 1, 2]), 1.5))


# ---------------------------------------------------------------- detection and overrides


@pytest.mark.parametrize(
    ("head", "kind", "source"),
    [
        ("dense_softmax", "softmax", "pre-activation"),
        ("softmax_layer", "softmax", "input of the final Softmax"),
        ("dense_sigmoid", "sigmoid", "pre-activation"),
        ("activation_sigmoid", "sigmoid", "input of the final Activation"),
        ("dense_linear", "logits", "taken as logits"),
        ("lambda_sigmoid", "sigmoid", "logit of the output probabilities"),
    ],
)
def test_each_kind_is_detected_and_its_probabilities_are_the_models_outputs(head: str, kind: str, source: str) -> None:
    model = _head_model(head)
    adapter = ModelAdapter(model, class_names=list(CLASSES))
    assert adapter.output_kind == kind and source in adapter.logits_source
    assert adapter.describe()["output_kind"] == kind and adapter.describe()["output_kind_reason"]
    x = _images()
    expected = model.predict(x, verbose=0)
    if kind == "logits":
        expected = CM.softmax(expected)
    tol = 1e-5 if head == "lambda_sigmoid" else 1e-6  # that one goes through logit(p), clipped at 1e-7
    np.testing.assert_allclose(adapter.probs(x), expected, rtol=tol, atol=tol)


def test_the_output_option_and_the_sidecar_override_detection() -> None:
    model = _head_model("dense_sigmoid")
    multi = ModelAdapter(model, output="multilabel")
    assert multi.output_kind == "multilabel"
    assert "--output" in multi.output_kind_reason and "detected: sigmoid" in multi.output_kind_reason
    x = _images()
    np.testing.assert_allclose(multi.probs(x), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    as_softmax = ModelAdapter(model, meta={"output": "softmax"})  # the user says: score it as a softmax
    assert as_softmax.output_kind == "softmax" and ".meta.json" in as_softmax.output_kind_reason
    np.testing.assert_allclose(as_softmax.probs(x).sum(axis=1), 1.0, atol=1e-6)
    assert ModelAdapter(model, output="sigmoid", meta={"output": "softmax"}).output_kind == "sigmoid"


def test_bad_output_kinds_are_refused_in_one_line(tmp_path: Path, toy_model: Path, toy_multilabel: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from robustkit.cli import main

    model = _head_model("dense_sigmoid")
    with pytest.raises(ConfigError, match=r"'output' parameter must be one of 'softmax'.*Got 'probit'"):
        ModelAdapter(model, output="probit")
    with pytest.raises(ModelError, match=r"'output' in its .meta.json .*got 'probit'"):
        ModelAdapter(model, meta={"output": "probit"})
    # a multi-label manifest for a softmax model: refused, naming --output
    with pytest.raises(ConfigError, match=r"expected single-label data for a softmax model .*--output multilabel"):
        audit(toy_model, toy_multilabel, studies=["clean"])
    code = main(["audit", "--model", str(toy_model), "--data", str(toy_multilabel), "--out", str(tmp_path / "o"),
                 "--studies", "clean", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pass --output multilabel" in err[0], err
    # --output sigmoid on multi-label data says it is single-label
    code = main(["audit", "--model", str(toy_model), "--data", str(toy_multilabel), "--out", str(tmp_path / "o"),
                 "--studies", "clean", "--quiet", "--output", "sigmoid"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "for --output sigmoid (one class per image)" in err[0], err


# ---------------------------------------------------------------- attacks and temperature


def test_attacks_on_a_sigmoid_head_raise_its_binary_cross_entropy() -> None:
    adapter = ModelAdapter(_head_model("dense_sigmoid", seed=3), batch_size=4)
    x = _images(8, seed=2)
    y = adapter.logits(x).argmax(axis=1)  # every sample starts correctly classified

    def bce(z: np.ndarray, labels: np.ndarray) -> np.ndarray:  # numpy: sum_k BCE(onehot_k, sigmoid(z_k))
        onehot = np.eye(3)[labels]
        p = np.clip(expit(z.astype(np.float64)), 1e-12, 1 - 1e-12)
        return -np.sum(onehot * np.log(p) + (1 - onehot) * np.log(1 - p), axis=1)

    clean = bce(adapter.logits(x), y)
    for eps in (0.5 / 255, 8 / 255):
        res = A.LinfPGD(steps=5, random_start=False, loss="ce")(adapter, x, y, epsilons=eps)
        np.testing.assert_allclose(res.loss_trace[:, 0], clean, rtol=1e-4)  # the BCE, not the softmax CE
        assert np.all(bce(res.logits, y) > clean)
        assert np.all(res.loss_trace.max(axis=1) > clean + 1e-4)
        last = ~res.success  # an unbroken sample returns its last iterate, whose loss ends the trace
        np.testing.assert_allclose(res.loss_trace[last, -1], bce(res.logits[last], y[last]), rtol=1e-4)
    small = A.LinfPGD(steps=5, random_start=False)(adapter, x, y, epsilons=0.5 / 255)
    assert (~small.success).any()  # the trace check above ran on some samples
    assert A.loss_description("ce", adapter.output_kind).startswith("binary cross-entropy")
    assert A.loss_description("ce", "softmax") == "softmax cross-entropy of the label"
    g = A.loss_gradient(adapter, x, y)
    step = 1e-2  # the first step follows the BCE gradient: a small step along sign(g) raises it
    assert np.all(bce(adapter.logits(np.clip(x + step * np.sign(g), 0, 1)), y) > clean)


def _calibrated_sigmoid_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose sigmoids are the true class probabilities: p ~ Dirichlet, z = logit(p), y ~ p."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(3, 0.7), size=n)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1).clip(0, 2)
    return np.log(p) - np.log1p(-p), y


@pytest.mark.parametrize("true_t", [2.0, 0.6])
def test_sigmoid_temperature_is_recovered_on_synthetic_logits(true_t: float) -> None:
    z, y = _calibrated_sigmoid_logits(40000, seed=7)
    fit = fit_temperature(z * true_t, y, "sigmoid")
    assert fit.temperature == pytest.approx(true_t, rel=0.04)
    assert abs(fit.grad_log_t) < 1e-6 and not fit.at_bound and fit.nll_after < fit.nll_before
    eps = 1e-4  # grad_log_t is the derivative of the mean one-vs-rest binary NLL in log T
    up = OUT.sample_nll(z * true_t, y, "sigmoid", fit.temperature * np.exp(eps)).mean()
    down = OUT.sample_nll(z * true_t, y, "sigmoid", fit.temperature * np.exp(-eps)).mean()
    assert (up - down) / (2 * eps) == pytest.approx(fit.grad_log_t, abs=1e-6)
    softmax_t = fit_temperature(z * true_t, y, "softmax").temperature  # a different objective
    assert abs(softmax_t - fit.temperature) > 1e-3


def test_sigmoid_nll_matches_scikit_learn_log_loss_per_output() -> None:
    from sklearn.metrics import log_loss

    z, y = _calibrated_sigmoid_logits(500, seed=3)
    p = OUT.probabilities(z, "multilabel", 1.3)
    expected = sum(log_loss((y == k).astype(int), p[:, k], labels=[0, 1]) for k in range(3))
    assert OUT.sample_nll(z, y, "sigmoid", 1.3).mean() == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-z / 1.3)), rtol=1e-12)
