"""The smoothing study's consistency check: an L2 attack on the smoothed model must not find a
point closer than the certified radius where PREDICT calls otherwise.

On a linear classifier under Gaussian noise the smoothed classifier is known in closed form:
``pA(x) = Phi(|w.x + b| / (s ||w||))``, and its decision boundary is the base model's
hyperplane, so no call can change within ``D = |w.x + b| / ||w||``. A correct certificate has
``R <= D``; a radius inflated five times goes past ``D``, and the check must catch it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

from robustkit._tf import keras
from robustkit.data.loader import load_dataset
from robustkit.metrics import smoothing as smoothing_metrics
from robustkit.model.adapter import ModelAdapter
from robustkit.model.smoothed import DRAWS_PER_KEY, smoothed_l2_pgd
from robustkit.studies.base import AuditContext
from robustkit.studies.smoothing import SmoothingStudy, _block_keys
from robustkit.task import Task

SIGMA = 0.25
RNG = np.random.default_rng(4)
W = RNG.standard_normal(16)
W /= np.linalg.norm(W)
B = -0.5 * W.sum()  # the boundary passes through the flat grey image
CHECK = {"max_samples": None, "sigmas": [SIGMA], "n0": 16, "n": 400, "alpha": 0.001, "check_samples": 8,
         "check_steps": 8, "check_draws": 16, "radii": [0.0, 0.25]}


def _linear() -> ModelAdapter:
    """f(x) = class "b" iff w . x + b > 0 on (4, 4, 1) images (a softmax over logits [0, w.x + b])."""
    inp = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(2, activation="softmax")
    out = dense(keras.layers.Flatten()(inp))
    dense.set_weights([np.column_stack([np.zeros(16), W]).astype(np.float32), np.array([0.0, B], np.float32)])
    return ModelAdapter(keras.Model(inp, out), class_names=["a", "b"], batch_size=64)


@pytest.fixture(scope="module")
def linear_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 4x4 images at signed distances 0.35 ... 0.6 from the boundary, labelled by their side."""
    root = tmp_path_factory.mktemp("linear")
    for i, d in enumerate((0.35, -0.4, 0.45, -0.5, 0.55, -0.6, 0.5, -0.45)):
        img = np.clip(0.5 + d * W.reshape(4, 4), 0.02, 0.98)
        folder = root / ("b" if d > 0 else "a")
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _margins(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The true L2 distance of each image to the boundary (the smoothed classifier's too)."""
    x = data.load_images(np.arange(len(data)), size=(4, 4), channels=1).reshape(len(data), -1).astype(np.float64)
    return np.abs(x @ W + B)


def _run(data_root: Path, *, batch_size: int | None = None):  # type: ignore[no-untyped-def]
    model = _linear()
    data = load_dataset(data_root).with_class_order(["a", "b"])
    study = SmoothingStudy.configure("standard", CHECK)
    result = study.execute(model, data, AuditContext(seed=0, task=Task(names=("a", "b"))), batch_size=batch_size)
    return result, data.subset(result.records["index"])


def _check(result):  # type: ignore[no-untyped-def]
    return next(c for c in result.checks if c.name == "certificates hold under attack")


def test_a_correct_study_has_no_contradiction_and_attacks_to_the_edge_of_the_ball(linear_data: Path) -> None:
    result, data = _run(linear_data)
    rec, distance = result.records, _margins(data)
    radius = rec["radius"][:, 0]
    certified = rec["label"][:, 0] >= 0
    assert certified.sum() >= 6 and np.all(radius <= distance)  # the certificates are right here
    assert result.metrics["checked.0.25"] == certified.sum()  # every certified image was checked (8 chosen)
    assert result.metrics["contradictions.0.25"] == 0 and not rec["contradicted"].any()
    assert _check(result).status == "pass" and "No contradiction on" in _check(result).detail
    # the linear model's loss gradient is along w everywhere, so the attack ends on the ball's surface
    np.testing.assert_allclose(rec["check_distance"][certified, 0, 0], 0.999 * radius[certified], rtol=1e-3)
    assert np.all(rec["check_output"][~certified] == -1)
    assert result.data["check"]["gradient_passes"] == certified.sum() * 8 * 17


def test_an_inflated_radius_is_contradicted_and_fails_loudly(linear_data: Path, monkeypatch, tmp_path: Path) -> None:
    real = smoothing_metrics.certified_radius
    monkeypatch.setattr(smoothing_metrics, "certified_radius", lambda p, s: 5 * real(p, s))
    result, data = _run(linear_data)
    rec, distance = result.records, _margins(data)
    contradicted = rec["contradicted"][:, 0].astype(bool)
    assert result.metrics["contradictions.0.25"] == contradicted.sum() >= 4
    assert np.all(rec["radius"][contradicted, 0] > distance[contradicted])  # only where R passes the boundary
    check = _check(result)
    assert check.status == "fail" and "contradicts certificates" in check.detail
    assert result.status == "ok"  # the numbers stand as measured; the failed check says they are wrong
    html = _report(result, data, tmp_path)
    assert "Do attacks contradict the certificates?" in html and "contradicts certificates" in html
    assert "s = 0.25: 8" in html  # the images checked, as the view states them


def _report(result, data, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    from robustkit.report import render_report
    from robustkit.results import AuditResult

    model = _linear()
    audit = AuditResult(model=model.describe(), dataset={"fingerprint": "x"}, config={}, environment={},
                        ids=np.asarray(data.ids), labels=np.asarray(data.labels), class_names=["a", "b"],
                        studies={"smoothing": result}, task=Task(names=("a", "b")).describe())
    render_report(audit, tmp_path / "r.html")
    return (tmp_path / "r.html").read_text()


def test_the_attack_lowers_the_smoothed_pA_toward_the_closed_form_optimum() -> None:
    """For a linear model the best L2 move of length r lowers the margin by r ||w||:
    pA(x') = Phi((D - r) / s). The smoothed attack reaches it; so does PGD on the base model."""
    model = _linear()
    x = np.clip(0.5 + 0.5 * W.reshape(4, 4, 1), 0, 1).astype(np.float32)
    d = float(x.reshape(-1) @ W + B)
    keys = _block_keys(AuditContext(seed=1), "smoothing", SIGMA, "x", "attack", 10 * DRAWS_PER_KEY).reshape(10, 1, 2)
    for sigma, draws, k in ((SIGMA, 8, keys), (0.0, 1, np.zeros((10, 1, 2), np.int64))):
        adv = smoothed_l2_pgd(model, x, output=1, present=True, radius=0.3, sigma=sigma, keys=k, draws=draws)
        assert np.linalg.norm(adv - x) <= 0.3 + 1e-5 and adv.min() >= 0 and adv.max() <= 1
        p_adv = norm.cdf(float(adv.reshape(-1) @ W + B) / SIGMA)
        assert p_adv < norm.cdf(d / SIGMA) - 0.05
        assert p_adv == pytest.approx(norm.cdf((d - 0.3) / SIGMA), abs=0.01)


def test_the_check_is_the_same_at_any_batch_size(linear_data: Path) -> None:
    one, _ = _run(linear_data, batch_size=1)
    many, _ = _run(linear_data, batch_size=5)
    for name, arr in one.records.items():
        np.testing.assert_allclose(many.records[name], arr, rtol=1e-5, atol=1e-6, err_msg=name)
    assert one.metrics == many.metrics


def test_quick_leaves_the_check_out_and_says_so(linear_data: Path) -> None:
    model = _linear()
    data = load_dataset(linear_data).with_class_order(["a", "b"])
    result = SmoothingStudy.configure("quick", {"n0": 8, "n": 32}).execute(
        model, data, AuditContext(seed=0, task=Task(names=("a", "b"))))
    assert result.metrics["checked.0.25"] == 0 and _check(result).status == "warn"
    assert "check_samples = 0" in _check(result).detail


def _multilabel(model_path: Path, data_path: Path):  # type: ignore[no-untyped-def]
    from robustkit.model.adapter import load_model

    model = load_model(model_path, batch_size=16)
    model.thresholds, model.threshold_source = np.array([0.3, 0.5, 0.7]), "given (a test)"
    data = load_dataset(data_path).with_class_order(list(model.class_names))
    task = Task.from_results(model.describe(), model.class_names)
    return SmoothingStudy.configure("quick", {"max_samples": 6, "sigmas": [0.12], "n0": 8, "n": 64, "alpha": 0.01,
                                             "check_samples": 3, "check_steps": 4, "check_draws": 4}).execute(
        model, data, AuditContext(seed=0, task=task))


def test_a_multilabel_study_checks_the_call_that_bounds_the_radius(toy_multilabel_model: Path,
                                                                   toy_multilabel: Path) -> None:
    result = _multilabel(toy_multilabel_model, toy_multilabel)
    rec = result.records
    checked = rec["check_output"][:, 0] >= 0
    assert 0 < checked.sum() <= 3 and result.metrics["checked.0.12"] == checked.sum()
    for i in np.flatnonzero(checked):
        radius = np.where(rec["label"][i, 0] >= 0, rec["radius"][i, 0], np.inf)
        k = rec["check_output"][i, 0]
        assert k == radius.argmin() and rec["check_present"][i, 0] == bool(rec["label"][i, 0, k])
        assert rec["check_radius"][i, 0] == pytest.approx(radius[k])
    assert result.metrics["contradictions.0.12"] == 0


def test_a_multilabel_radius_inflated_far_past_the_boundary_is_contradicted(toy_multilabel_model: Path,
                                                                            toy_multilabel: Path, monkeypatch) -> None:
    """Each call is a binary smoothed classifier attacked through its threshold (sigmoid(z - logit t))."""
    real = smoothing_metrics.certified_radius
    monkeypatch.setattr(smoothing_metrics, "certified_radius", lambda p, s: 50 * real(p, s))
    result = _multilabel(toy_multilabel_model, toy_multilabel)
    assert result.metrics["contradictions.0.12"] >= 1 and _check(result).status == "fail"
