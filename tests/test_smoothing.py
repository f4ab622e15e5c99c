"""Randomized smoothing (Cohen et al. 2019): CERTIFY on a model whose answer is known, against a
plain transcription of the reference ``core.py`` on the same draws, and the study's plumbing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import beta, binom, binomtest, norm

from robustkit._tf import keras, tf
from robustkit.config import AuditConfig
from robustkit.data.loader import load_dataset
from robustkit.metrics.smoothing import (
    ABSTAIN,
    certify,
    clopper_pearson_lower,
    predict,
    radius_ceiling,
)
from robustkit.model.adapter import ModelAdapter, load_model
from robustkit.results import AuditResult
from robustkit.runner import plan_studies
from robustkit.studies.base import AuditContext
from robustkit.studies.smoothing import DRAWS_PER_KEY, SmoothingStudy, _block_keys, noise_counts
from robustkit.task import Task

SIGMA = 0.25


def _linear(w: np.ndarray, b: float) -> ModelAdapter:
    """f(x) = class 1 iff w . x + b > 0, on (4, 4, 1) images (a softmax over logits [0, w.x + b])."""
    inp = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(2, activation="softmax")
    out = dense(keras.layers.Flatten()(inp))
    dense.set_weights([np.column_stack([np.zeros(16), w]).astype(np.float32), np.array([0.0, b], np.float32)])
    return ModelAdapter(keras.Model(inp, out), class_names=["a", "b"], batch_size=64)


def test_certify_on_a_linear_model_matches_the_closed_form() -> None:
    """pA = Phi(margin / (s ||w||)): the count is a draw of Binomial(n, pA), the bound is the
    Clopper-Pearson bound of that count, and the radius never exceeds the true distance to
    the decision boundary, margin / ||w||, and comes close to it."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(16)
    x = np.full((4, 4, 1), 0.5, np.float32)
    p_true = 0.9
    margin = SIGMA * np.linalg.norm(w) * norm.ppf(p_true)
    model = _linear(w, float(margin - w.sum() * 0.5))
    task = Task(names=("a", "b"))
    ctx = AuditContext(seed=3)
    n0, n, alpha = 32, 4000, 0.001
    c0 = noise_counts(model, x, _block_keys(ctx, "smoothing", SIGMA, "x", "selection", n0), n0, SIGMA, task)
    c = noise_counts(model, x, _block_keys(ctx, "smoothing", SIGMA, "x", "estimation", n), n, SIGMA, task)
    assert c0.sum() == n0 and c.sum() == n
    k = int(c[1])
    assert binom.cdf(k, n, p_true) > 1e-4 and binom.sf(k - 1, n, p_true) > 1e-4  # k is a plausible draw
    cert = certify(c0[None], c[None], sigma=SIGMA, alpha=alpha)
    assert cert.label[0] == 1 and cert.count[0] == k
    assert cert.p_lower[0] == pytest.approx(beta.ppf(alpha, k, n - k + 1))
    assert cert.p_lower[0] <= p_true <= k / n + 4 * np.sqrt(p_true * (1 - p_true) / n)
    true_radius = margin / np.linalg.norm(w)
    assert cert.radius[0] == pytest.approx(SIGMA * norm.ppf(cert.p_lower[0]))
    assert 0.85 * true_radius < cert.radius[0] <= true_radius


def test_the_noise_is_gaussian_with_the_configured_sigma() -> None:
    """The draws of one block: mean 0, standard deviation s (the keys give a standard normal)."""
    ctx = AuditContext(seed=0)
    keys = _block_keys(ctx, "smoothing", SIGMA, "x", "estimation", 64)
    noise = np.concatenate([tf.random.stateless_normal((DRAWS_PER_KEY, 8, 8, 1), seed=k).numpy() for k in keys])
    assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(1.0, abs=0.02)
    other = _block_keys(ctx, "smoothing", SIGMA, "y", "estimation", 64)
    assert not np.array_equal(keys, other) and len(np.unique(keys, axis=0)) == len(keys)


# ---------------------------------------------------------------- the reference, transcribed


def _reference_lower_bound(k: int, n: int, alpha: float) -> float:
    """proportion_confint(k, n, alpha=2 * alpha, method="beta")[0], by root-finding on the binomial tail."""
    return 0.0 if k == 0 else brentq(lambda p: binom.sf(k - 1, n, p) - alpha, 1e-12, 1 - 1e-12, xtol=1e-14)


def _reference_certify(counts0: np.ndarray, counts: np.ndarray, n: int, sigma: float, alpha: float):
    """``Smooth.certify`` of locuslab/smoothing ``code/core.py``, line by line."""
    c_hat = counts0.argmax().item()
    n_a = counts[c_hat].item()
    p_bar = _reference_lower_bound(n_a, n, alpha)
    if p_bar < 0.5:
        return -1, 0.0
    return c_hat, sigma * norm.ppf(p_bar)


def _reference_predict(counts: np.ndarray, alpha: float) -> int:
    """``Smooth.predict`` (``binom_test`` is now ``binomtest``)."""
    top2 = counts.argsort()[::-1][:2]
    count1, count2 = counts[top2[0]], counts[top2[1]]
    if binomtest(int(count1), int(count1 + count2), p=0.5).pvalue > alpha:
        return -1
    return int(top2[0])


def _slow_counts(model, x, ctx, sid: str, stream: str, n: int, sigma: float) -> np.ndarray:
    """The same draws one at a time: draw j is row j mod 32 of its block's stateless normal."""
    keys = _block_keys(ctx, "smoothing", sigma, sid, stream, n)
    counts = np.zeros(model.num_classes, np.int64)
    for j in range(n):
        e = tf.random.stateless_normal((DRAWS_PER_KEY, *x.shape), seed=keys[j // DRAWS_PER_KEY]).numpy()[j % DRAWS_PER_KEY]
        counts[model.logits((x + sigma * e)[None]).argmax()] += 1
    return counts


def test_the_study_equals_the_reference_on_the_same_draws(toy_model: Path, toy_data: Path) -> None:
    model = load_model(toy_model, batch_size=16)
    data = load_dataset(toy_data).with_class_order(list(model.class_names))
    study = SmoothingStudy.configure("quick", {"max_samples": 3, "sigmas": [0.5], "n0": 6, "n": 40, "alpha": 0.05})
    ctx = AuditContext(seed=1, task=Task(names=tuple(model.class_names)))
    result = study.execute(model, data, ctx)
    rec = result.records
    sub = data.subset(rec["index"])
    xs = sub.load_images(np.arange(len(sub)), size=model.input_shape[:2], channels=model.input_shape[2])
    for i, sid in enumerate(sub.ids):
        c0 = _slow_counts(model, xs[i], ctx, str(sid), "selection", 6, 0.5)
        c = _slow_counts(model, xs[i], ctx, str(sid), "estimation", 40, 0.5)
        np.testing.assert_array_equal(rec["counts0"][i, 0], c0)
        np.testing.assert_array_equal(rec["counts"][i, 0], c)
        label, radius = _reference_certify(c0, c, 40, 0.5, 0.05)
        assert rec["label"][i, 0] == label and rec["radius"][i, 0] == pytest.approx(radius, abs=1e-9)
        assert rec["predicted"][i, 0] == _reference_predict(c, 0.05)


def test_draw_batch_does_not_change_the_counts(toy_model: Path, toy_data: Path) -> None:
    model = load_model(toy_model, batch_size=16)
    data = load_dataset(toy_data).with_class_order(list(model.class_names))
    ctx = AuditContext(seed=0, task=Task(names=tuple(model.class_names)))
    runs = [SmoothingStudy.configure("quick", {"max_samples": 4, "n0": 5, "n": 70, "draw_batch": b}).execute(
        model, data, ctx) for b in (1, 64, 200)]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0].records["counts"], other.records["counts"])
        np.testing.assert_array_equal(runs[0].records["counts0"], other.records["counts0"])
        assert runs[0].metrics == other.metrics


# ---------------------------------------------------------------- the pure functions


def test_lower_bound_and_ceiling_match_the_binomial_tail() -> None:
    for k, n in ((1, 10), (50, 100), (97, 100), (100, 100), (99_990, 100_000)):
        assert clopper_pearson_lower(np.array([k]), n, 0.001)[0] == pytest.approx(_reference_lower_bound(k, n, 0.001))
    assert clopper_pearson_lower(np.array([0]), 10, 0.001)[0] == 0.0
    assert radius_ceiling(100_000, sigma=0.25, alpha=0.001) == pytest.approx(0.25 * norm.ppf(0.001 ** 1e-5))
    assert radius_ceiling(100_000, sigma=1.0, alpha=0.001) == pytest.approx(3.8115, abs=1e-4)


def test_certify_abstains_below_one_half_and_binary_calls_certify_each_output() -> None:
    cert = certify(np.array([[5, 5], [0, 10]]), np.array([[55, 45], [2, 98]]), sigma=0.5, alpha=0.001)
    assert cert.label.tolist() == [ABSTAIN, 1] and cert.radius[0] == 0.0 and cert.radius[1] > 0
    # a multi-label image with two findings: (absent, present) counts per finding, one certificate each
    many = certify(np.array([[[9, 1], [0, 10]]]), np.array([[[99, 1], [50, 50]]]), sigma=0.5, alpha=0.001)
    assert many.label.tolist() == [[0, ABSTAIN]]
    assert predict(np.array([[50, 50, 0], [90, 2, 8]]), alpha=0.001).tolist() == [ABSTAIN, 0]


# ---------------------------------------------------------------- plan, report, compare


def test_quick_leaves_the_study_out_unless_named() -> None:
    names = lambda cfg: [s.name for s in plan_studies(cfg)]  # noqa: E731
    assert "smoothing" not in names(AuditConfig(profile="quick"))
    assert "smoothing" in names(AuditConfig(profile="standard"))
    assert names(AuditConfig(profile="quick", studies=("smoothing",))) == ["clean", "smoothing"]


def _audit(result, model, data) -> AuditResult:
    task = Task(names=tuple(model.class_names), critical=model.class_names[0])
    return AuditResult(model=model.describe(), dataset={"fingerprint": "x"}, config={}, environment={},
                       ids=np.asarray(data.ids), labels=np.asarray(data.labels), class_names=list(model.class_names),
                       studies={"smoothing": result}, task=task.describe())


def test_report_draws_the_curve_and_compare_pairs_certified_correct(toy_model: Path, toy_data: Path,
                                                                    tmp_path: Path) -> None:
    from robustkit.compare import paired_deltas
    from robustkit.gate import gate
    from robustkit.report import render_report

    model = load_model(toy_model, batch_size=16)
    data = load_dataset(toy_data).with_class_order(list(model.class_names))
    study = SmoothingStudy.configure("quick", {"max_samples": None, "sigmas": [0.5], "n0": 4, "n": 24})
    runs = [study.execute(model, data, AuditContext(seed=seed, task=Task(names=tuple(model.class_names))))
            for seed in (0, 7)]
    base, cand = (_audit(r, model, data) for r in runs)
    (delta,) = paired_deltas(base, cand, ["smoothing.certified_accuracy.0.5.0"], correction="none")
    a, b = (r.records["correct"][:, 0].astype(bool) for r in runs)
    assert a.mean() == runs[0].metrics["certified_accuracy.0.5.0"]
    assert delta.test == "mcnemar-exact" and delta.discordant == (int((a & ~b).sum()), int((~a & b).sum()))
    assert delta.delta == pytest.approx(b.mean() - a.mean())
    report = gate(cand, {"rule": [{"metric": "smoothing.certified_accuracy.0.5.*", "min": 0.0},
                                  {"metric": "smoothing.certified_accuracy.0.5.0", "max_drop": 1.0}]}, baseline=base)
    assert report.exit_code == 0 and len(report.rules[0].outcomes) == len(study.config.radii)
    assert report.rules[1].outcomes[0].value == pytest.approx(b.mean())
    render_report(base, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "Certified accuracy against L2 radius" in html and "Radius ceiling" in html and "<svg" in html


# ---------------------------------------------------------------- training for it


def test_noise_augmentation_adds_gaussian_noise_of_the_given_sigma() -> None:
    from robustkit.model.training import _train_dataset

    x = np.full((64, 16, 16, 1), 0.5, np.float32)
    (xb, _), = _train_dataset(x, np.zeros(64, np.int64), batch_size=64, seed=0, augment=False, noise_sigma=0.2)
    diff = xb.numpy() - x
    assert abs(diff.mean()) < 0.01 and diff.std() == pytest.approx(0.2, abs=0.01)
    (clean, _), = _train_dataset(x, np.zeros(64, np.int64), batch_size=64, seed=0, augment=False)
    np.testing.assert_array_equal(clean.numpy(), x)


def test_train_with_noise_records_it_and_the_audit_states_it(toy_data: Path, tmp_path: Path, capsys) -> None:
    import json

    from robustkit.cli import main

    code = main(["train", "--data", str(toy_data), "--out", str(tmp_path / "m.keras"), "--arch", "small_cnn",
                 "--input-size", "32", "--epochs", "1", "--batch-size", "16", "--noise-sigma", "0.25", "-q"])
    assert code == 0
    meta = json.loads((tmp_path / "m.meta.json").read_text())
    assert meta["noise_sigma"] == 0.25
    model = load_model(tmp_path / "m.keras")
    assert model.describe()["training_noise_sigma"] == 0.25
    data = load_dataset(toy_data).with_class_order(list(model.class_names))
    result = SmoothingStudy.configure("quick", {"max_samples": 3, "n0": 4, "n": 8}).execute(
        model, data, AuditContext(task=Task(names=tuple(model.class_names)), seed=0))
    assert result.data["training_noise_sigma"] == 0.25
    assert "trained with Gaussian noise augmentation, sigma 0.25" in result.checks[0].detail
    capsys.readouterr()
    assert main(["train", "--data", str(toy_data), "--out", str(tmp_path / "n.keras"), "--arch", "small_cnn",
                 "--noise-sigma", "-1", "-q"]) == 2
    assert "noise_sigma" in capsys.readouterr().err


def test_multilabel_report_reads_each_finding_as_a_binary_smoothed_classifier(toy_multilabel_model: Path,
                                                                               toy_multilabel: Path,
                                                                               tmp_path: Path) -> None:
    from robustkit.report import render_report

    model = load_model(toy_multilabel_model, batch_size=16)
    model.thresholds, model.threshold_source = np.array([0.3, 0.5, 0.7]), "given (a test)"
    data = load_dataset(toy_multilabel).with_class_order(list(model.class_names))
    task = Task.from_results(model.describe(), model.class_names)
    result = SmoothingStudy.configure("quick", {"max_samples": 6, "n0": 4, "n": 16}).execute(
        model, data, AuditContext(seed=0, task=task))
    rec, sub = result.records, data.subset(result.records["index"])
    assert rec["label"].shape == (len(sub), 1, 3) and rec["counts"].max() <= 16
    right = (rec["label"][:, 0] == sub.targets) & (rec["radius"][:, 0] >= 0.0)
    assert result.metrics["certified_accuracy.0.25.0"] == pytest.approx(right.all(axis=1).mean())
    name = model.class_names[0]
    present = sub.targets[:, 0]
    if present.any():
        assert result.metrics[f"certified_rate.0.25.0.present.{name}"] == pytest.approx(right[present, 0].mean())
    audit = AuditResult(model=model.describe(), dataset={"fingerprint": "x"}, config={}, environment={},
                        ids=np.asarray(data.ids), labels=np.asarray(data.labels), class_names=list(model.class_names),
                        studies={"smoothing": result}, task=task.describe(), targets=data.targets)
    render_report(audit, tmp_path / "r.html")
    assert "its own smoothed yes/no classifier" in (tmp_path / "r.html").read_text()
