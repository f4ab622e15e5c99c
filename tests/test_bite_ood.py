"""Issue #28, round two: OOD and slice numbers pinned to independent computations.

ViM against a plain-numpy transcription of Wang et al. 2022 (eigen-decomposition of the
centred covariance, not the SVD the module uses), the slice test's p-value against scipy's
two-sided Fisher test, the OOD study's reduce on synthetic records (AUROC against
scikit-learn, the Mahalanobis shrinkage option against a direct inverse, ViM run backwards).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import fisher_exact
from sklearn.metrics import roc_auc_score

from robustkit.data.dataset import Sample
from robustkit.data.ood_sets import ArrayDataset
from robustkit.errors import ConfigError
from robustkit.metrics import ood as O
from robustkit.metrics.classification import bootstrap_indices
from robustkit.metrics.resampling import bootstrap_weights
from robustkit.metrics.slices import cramers_v, enumerate_slices, slice_metrics, slice_test
from robustkit.results import StudyResult
from robustkit.studies.base import AuditContext
from robustkit.studies.ood import OODStudy
from robustkit.studies.ood_reduce import SCORES, _recommend, reduce_ood
from robustkit.task import Task


# ---------------------------------------------------------------- slices: Fisher two-sided
@pytest.mark.parametrize("table", [(18, 2, 30, 20), (6, 6, 30, 10), (9, 1, 45, 45), (10, 10, 40, 20)])
def test_slice_test_p_value_is_fishers_two_sided(table: tuple[int, int, int, int]) -> None:
    a, b, c, d = table  # slice right/wrong, complement right/wrong
    correct = np.r_[np.ones(a), np.zeros(b), np.ones(c), np.zeros(d)].astype(bool)
    mask = np.r_[np.ones(a + b), np.zeros(c + d)].astype(bool)
    order = np.random.default_rng(sum(table)).permutation(len(mask))  # the order must not matter
    gap, p = slice_test(correct[order], mask[order])
    assert gap == pytest.approx(a / (a + b) - c / (c + d), abs=1e-12)
    two = fisher_exact([[a, b], [c, d]], alternative="two-sided").pvalue
    for alt in ("less", "greater"):  # tables where either one-sided test differs from the two-sided one
        assert abs(two - fisher_exact([[a, b], [c, d]], alternative=alt).pvalue) > 1e-3
    assert p == pytest.approx(two, rel=1e-12)


def test_enumerated_slices_are_those_with_enough_samples_on_both_sides() -> None:
    rng = np.random.default_rng(5)
    site = np.repeat(np.array(["A", "B", "C"]), [150, 25, 5])  # "C": too small a slice
    view = rng.choice(np.array(["AP", "PA"]), len(site), p=[0.95, 0.05])  # "AP": too small a complement
    labels = {"site": site, "view": view}
    candidates = {f"{col}={v}": labels[col] == v for col in labels for v in np.unique(labels[col])}
    candidates.update({f"site={a}&view={v}": (site == a) & (view == v) for a in np.unique(site) for v in np.unique(view)})
    expected = {name for name, m in candidates.items() if m.sum() >= 20 and (~m).sum() >= 20}
    assert any(m.sum() >= 20 and (~m).sum() < 20 for m in candidates.values())  # the complement rule matters here
    assert {s.name for s in enumerate_slices(labels, depth=2, min_size=20)} == expected


@pytest.mark.parametrize("shape", [(2, 4), (3, 5)])
def test_cramers_v_of_a_rectangular_table_equals_scipy(shape: tuple[int, int]) -> None:
    from scipy.stats.contingency import association

    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, shape[0], 400)
    b = (a + rng.integers(0, 2, 400) * rng.integers(0, shape[1], 400)) % shape[1]  # dependent on a
    table = np.zeros(shape, dtype=np.int64)
    np.add.at(table, (a, b), 1)
    assert cramers_v(a, b) == pytest.approx(association(table, method="cramer", correction=False), rel=1e-9)


def test_slice_intervals_are_the_two_sided_percentiles_of_a_slow_bootstrap() -> None:
    rng = np.random.default_rng(6)
    y, pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    pred[:150] = y[:150]  # right on half the images, a third of the rest
    conf, mask = rng.uniform(0.4, 1.0, 300), rng.random(300) < 0.5
    _, intervals = slice_metrics(y, pred, conf, mask, positive=0, n_boot=400, seed=3, level=0.9)
    idx = np.flatnonzero(mask)
    # the same resamples of all 300 samples (counts per sample), the slice's drawn samples turned
    # back into index lists and scored one by one: the slice's size varies between resamples
    resamples = [np.repeat(idx, row[idx].astype(int)) for block in bootstrap_weights(300, 400, seed=3)
                 for row in block]
    assert len({len(r) for r in resamples}) > 1 and np.mean([len(r) for r in resamples]) == pytest.approx(
        len(idx), rel=0.02)
    accuracy = [np.mean(y[r] == pred[r]) for r in resamples]
    assert intervals["accuracy"] == pytest.approx(np.quantile(accuracy, [0.05, 0.95]).tolist())
    # and within Monte Carlo error of the older index bootstrap's interval (the slice's samples alone)
    older = [np.mean(y[idx][r] == pred[idx][r]) for r in bootstrap_indices(len(idx), 400, seed=3)]
    assert np.allclose(intervals["accuracy"], np.quantile(older, [0.05, 0.95]), atol=0.03)


# ---------------------------------------------------------------- ViM: the paper's definition
def _vim_reference(f_ref: np.ndarray, z_ref: np.ndarray, f: np.ndarray, z: np.ndarray, w: np.ndarray,
                   b: np.ndarray, dim: int) -> tuple[float, np.ndarray]:
    """Wang et al. 2022 (and their code): logits ``z = W f + b`` with ``W`` ``(K, D)``; origin
    ``u = -pinv(W) b``; the principal space is spanned by the eigenvectors of the ``dim``
    largest eigenvalues of the covariance of ``f - u`` (centred at the origin ``u``); the
    virtual logit is the norm of ``f - u`` in the remaining eigenvectors times ``alpha``,
    ``alpha = mean max logit / mean residual norm`` over the reference (training) set, and
    the score is ``logsumexp(z) - virtual logit``."""
    u = -np.linalg.pinv(w) @ b
    centred = f_ref - u
    values, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
    null_space = vectors[:, np.argsort(-values)[dim:]]
    alpha = z_ref.max(axis=1).mean() / np.linalg.norm(centred @ null_space, axis=1).mean()
    return float(alpha), logsumexp(z, axis=1) - alpha * np.linalg.norm((f - u) @ null_space, axis=1)


def _head(rng: np.random.Generator, d: int = 8, k: int = 3, shift: float = 0.0):
    scale = np.linspace(3.0, 0.5, d)  # distinct eigenvalues: a well-defined principal space
    f_ref = rng.standard_normal((80, d)) * scale + 1.0
    f = rng.standard_normal((40, d)) * scale * 1.5 + 1.0
    kernel, bias = rng.standard_normal((d, k)), rng.standard_normal(k) + shift
    return f_ref, f, kernel, bias


@pytest.mark.parametrize("dim", [None, 2, 5])
def test_vim_alpha_and_score_equal_the_papers_definition(dim: int | None) -> None:
    rng = np.random.default_rng(dim or 0)
    f_ref, f, kernel, bias = _head(rng, shift=4.0)
    z_ref, z = f_ref @ kernel + bias, f @ kernel + bias
    fit = O.fit_vim(f_ref, z_ref, kernel, bias, dim=dim)
    alpha, score = _vim_reference(f_ref, z_ref, f, z, kernel.T, bias, dim or 4)  # default: D // 2
    assert fit.dim == (dim or 4)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert np.log(np.exp(z_ref).sum(axis=1)).mean() > z_ref.max(axis=1).mean() + 0.05  # lse != max here
    np.testing.assert_allclose(O.vim_score(f, z, fit), score, rtol=1e-9, atol=1e-9)


def test_vim_with_joint_energy_replaces_only_the_energy() -> None:
    f_ref, f, kernel, bias = _head(np.random.default_rng(3), shift=2.0)
    z_ref, z = f_ref @ kernel + bias, f @ kernel + bias
    fit = O.fit_vim(f_ref, z_ref, kernel, bias, dim=3)
    _, score = _vim_reference(f_ref, z_ref, f, z, kernel.T, bias, 3)
    joint = np.log1p(np.exp(z)).sum(axis=1)
    np.testing.assert_allclose(O.vim_score(f, z, fit, O.joint_energy), score - logsumexp(z, axis=1) + joint,
                               rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- the study's reduce on synthetic records
def _reduce(f_ref, y_ref, f_id, f_ood, kernel, bias, **config) -> StudyResult:
    """:func:`reduce_ood` over records of a linear head: reference and one far set ``ct``."""
    study = OODStudy.configure("quick", {"sets": ("ct",), "n_gallery": 0, "n_bootstrap": 10, **config})
    n_ref, n_ood = len(f_ref), len(f_ood)
    samples = [Sample(f"reference/{i:05d}", Path(f"r{i}"), 0) for i in range(n_ref)]
    samples += [Sample(f"ct/{i:05d}", Path(f"c{i}"), 1) for i in range(n_ood)]
    study._extra = ArrayDataset(["reference", "ct"], samples, {})
    study._ref_pos, study._ref_labels, study._ref_targets = None, y_ref, None
    study.sets_info = [{"name": "reference", "kind": "reference", "n": n_ref, "provenance": "synthetic"},
                       {"name": "ct", "kind": "far", "n": n_ood, "provenance": "synthetic"}]
    study.reference_note = "synthetic"
    head = np.r_[kernel, bias[None, :]].ravel()
    f_extra = np.r_[f_ref, f_ood]
    records = {"logits": f_id @ kernel + bias, "features": f_id, "head": np.tile(head, (len(f_id), 1)),
               "extra/logits": f_extra @ kernel + bias, "extra/features": f_extra,
               "extra/head": np.tile(head, (len(f_extra), 1))}
    data = SimpleNamespace(class_names=["a", "b", "c"])
    task = Task(names=tuple(data.class_names), critical=data.class_names[0])  # the confident rate's class
    return reduce_ood(study, records, data, AuditContext(seed=0, model_info={"output_kind": "softmax"}, task=task))


def _toy(rng: np.random.Generator, shift: float):
    centres = 3.0 * np.eye(3, 6)
    y_ref = np.arange(60) % 3
    f_ref = centres[y_ref] + rng.standard_normal((60, 6))
    f_id = centres[np.arange(30) % 3] + rng.standard_normal((30, 6))
    f_ood = rng.standard_normal((20, 6)) * 1.5 + 2.0 * np.eye(6)[5]
    return f_ref, y_ref, f_id, f_ood, centres.T.copy(), np.full(3, shift)


def test_reduce_auroc_and_threshold_match_independent_computations() -> None:
    f_ref, y_ref, f_id, f_ood, kernel, bias = _toy(np.random.default_rng(0), shift=1.0)
    res = _reduce(f_ref, y_ref, f_id, f_ood, kernel, bias)
    z_id, z_ood = f_id @ kernel + bias, f_ood @ kernel + bias
    energy_id, energy_ood = logsumexp(z_id, axis=1), logsumexp(z_ood, axis=1)
    np.testing.assert_allclose(res.records["score_energy"], energy_id, rtol=1e-5)
    y = np.r_[np.ones(30), np.zeros(20)]
    assert res.metrics["auroc.energy.ct"] == pytest.approx(roc_auc_score(y, np.r_[energy_id, energy_ood]))
    assert res.metrics["auroc.max_logit.far"] == pytest.approx(
        roc_auc_score(y, np.r_[z_id.max(axis=1), z_ood.max(axis=1)]))
    rec = res.data["recommended"]
    scores = np.sort(res.records[f"score_{rec}"].astype(np.float64))[::-1]
    assert res.data["threshold"] == pytest.approx(scores[int(np.ceil(0.95 * 30)) - 1], rel=1e-6)  # keeps 29 of 30
    p = np.exp(z_id - logsumexp(z_id, axis=1, keepdims=True))
    assert res.metrics["confident_critical_rate.id"] == pytest.approx(np.mean(p[:, 0] >= 0.5))
    assert res.data["vim_alpha"] > 0 and "ViM direction" not in {c.name for c in res.checks}


@pytest.mark.parametrize("shrinkage", [0.01, 0.5])
def test_mahalanobis_shrinkage_is_an_option_with_a_direct_inverse(shrinkage: float) -> None:
    f_ref, y_ref, f_id, f_ood, kernel, bias = _toy(np.random.default_rng(1), shift=1.0)
    res = _reduce(f_ref, y_ref, f_id, f_ood, kernel, bias, mahalanobis_shrinkage=shrinkage)
    means = np.stack([f_ref[y_ref == k].mean(axis=0) for k in range(3)])
    s = np.cov((f_ref - means[y_ref]).T, bias=True)
    shrunk = (1 - shrinkage) * s + shrinkage * np.trace(s) / 6 * np.eye(6)
    d2 = [[(x - m) @ np.linalg.solve(shrunk, x - m) for m in means] for x in f_id]
    np.testing.assert_allclose(res.records["score_mahalanobis"], -np.min(d2, axis=1), rtol=1e-5)


def test_mahalanobis_shrinkage_default_and_bounds() -> None:
    assert OODStudy.configure("standard").config.mahalanobis_shrinkage == 0.01
    with pytest.raises(ConfigError, match="mahalanobis_shrinkage"):
        OODStudy.configure("quick", {"mahalanobis_shrinkage": 1.5})


def test_negative_reference_logits_run_vim_backwards_with_a_warning() -> None:
    f_ref, y_ref, f_id, f_ood, kernel, bias = _toy(np.random.default_rng(2), shift=-20.0)
    res = _reduce(f_ref, y_ref, f_id, f_ood, kernel, bias)
    z_ref = f_ref @ kernel + bias
    assert z_ref.max(axis=1).mean() < 0
    alpha, _ = _vim_reference(f_ref, z_ref, f_id, f_id @ kernel + bias, kernel.T, bias, 3)
    assert res.data["vim_alpha"] == pytest.approx(alpha, rel=1e-9) and alpha < 0
    check = [c for c in res.checks if c.name == "ViM direction"]
    assert len(check) == 1 and check[0].status == "warn" and f"{alpha:.4g}" in check[0].detail
    assert res.data["recommended"] != "vim"


@pytest.mark.parametrize("alpha", [-2.0, 0.0, 0.5])
def test_recommendation_takes_vim_only_when_its_alpha_is_positive(alpha: float) -> None:
    result = StudyResult(name="ood")
    for i, sc in enumerate(SCORES):  # ViM has the best AUROC; ReAct the second best
        result.metrics[f"auroc.{sc}.near"] = 0.99 if sc == "vim" else 0.6 + 0.01 * i
    fit = O.ViMFit(origin=np.zeros(2), principal_basis=np.eye(2)[:, :1], alpha=alpha, dim=1)
    assert _recommend(result, ["near"], fit) == ("vim" if alpha > 0 else "react")
    assert _recommend(result, ["near"], None) == "react"
