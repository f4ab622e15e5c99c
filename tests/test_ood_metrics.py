"""OOD scores and detection metrics against scikit-learn, scipy and direct loops; analytic toys."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from robustkit.errors import ConfigError
from robustkit.metrics import ood as O


def _toy(rng: np.random.Generator, *, n: int = 300, d: int = 8, k: int = 3):
    """Features of K unit Gaussian classes 4 apart, the linear head ``z = 4 f_k``, and three
    draws: reference (with labels), ID test, and a second ID-distributed set."""
    centres = 4.0 * np.eye(k, d)
    y = rng.integers(0, k, n)

    def draw() -> np.ndarray:
        return centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))

    f_ref = centres[y] + rng.standard_normal((n, d))
    return f_ref, y, draw(), draw(), centres.T.copy(), np.zeros(k)


def _all_scores(f_ref, y, f, kernel, bias) -> dict[str, np.ndarray]:
    z_ref, z = f_ref @ kernel + bias, f @ kernel + bias
    means, prec = O.fit_gaussian(f_ref, y, kernel.shape[1])
    vim = O.fit_vim(f_ref, z_ref, kernel, bias, dim=3)
    return {
        "msp": O.msp_score(z), "max_logit": O.max_logit_score(z), "energy": O.energy_score(z),
        "mahalanobis": O.mahalanobis_score(f, means, prec), "knn": O.knn_score(f, f_ref, 5),
        "vim": O.vim_score(f, z, vim), "react": O.react_score(f, O.react_clip(f_ref, 90), kernel, bias),
    }


def test_far_toy_every_score_separates_and_shared_toy_sits_at_one_half() -> None:
    rng = np.random.default_rng(0)
    # far: OOD features sit 40 units out on a direction no class and no logit uses
    f_ref, y, f_id, f_same, kernel, bias = _toy(rng)
    f_far = 40.0 * np.eye(8)[7] + 0.3 * rng.standard_normal((300, 8))
    ids, far = _all_scores(f_ref, y, f_id, kernel, bias), _all_scores(f_ref, y, f_far, kernel, bias)
    for name in ids:
        assert O.ood_metrics(ids[name], far[name])["auroc"] > 0.99, name
    # shared: OOD drawn from the ID distribution itself -> the 99% interval of the AUROC holds 0.5
    same = _all_scores(f_ref, y, f_same, kernel, bias)
    for name in ids:
        lo, hi = O.ood_intervals(ids[name], same[name], n_boot=300, seed=1, level=0.99)["auroc"]
        assert lo <= 0.5 <= hi and hi - lo < 0.2, (name, lo, hi)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detection_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    id_s = np.round(rng.normal(1.0, 1.0, 200), 1)  # rounded: ties must be handled like sklearn
    ood_s = np.round(rng.normal(0.0, 1.0, 150), 1)
    y = np.r_[np.ones(200), np.zeros(150)]
    s = np.r_[id_s, ood_s]
    m = O.ood_metrics(id_s, ood_s)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)
    fpr_o, tpr_o, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    assert m["fpr95_openood"] == pytest.approx(fpr_o[np.searchsorted(tpr_o, 0.95)], abs=1e-12)
    t = O.threshold_at_tpr(id_s)
    assert np.mean(id_s >= t) >= 0.95 and np.mean(id_s > t) < 0.95
    assert m["fpr95"] == pytest.approx(np.mean(ood_s >= t), abs=1e-12)


def test_mahalanobis_and_knn_match_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    f_ref = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 5))
    y = np.repeat(np.arange(3), 20)
    f = rng.standard_normal((25, 5))
    means, prec = O.fit_gaussian(f_ref, y, 3, shrinkage=0.0)
    cov = sum(np.cov(f_ref[y == k].T, bias=True) * 20 for k in range(3)) / 60
    direct = np.array([min(float((x - f_ref[y == k].mean(0)) @ np.linalg.inv(cov) @ (x - f_ref[y == k].mean(0)))
                           for k in range(3)) for x in f])
    np.testing.assert_allclose(-O.mahalanobis_score(f, means, prec), direct, rtol=1e-8)
    _, shrunk = O.fit_gaussian(f_ref, y, 3, shrinkage=0.3)
    target = 0.7 * cov + 0.3 * np.trace(cov) / 5 * np.eye(5)
    np.testing.assert_allclose(shrunk, np.linalg.inv(target), rtol=1e-8)
    dist = np.sort(cdist(f, f_ref, metric="cosine"), axis=1)
    for k in (1, 4, 60):
        np.testing.assert_allclose(-O.knn_score(f, f_ref, k, chunk=7), dist[:, k - 1], atol=1e-10)


def test_vim_and_react_reduce_to_energy_when_nothing_is_removed() -> None:
    rng = np.random.default_rng(4)
    f_ref, f = np.abs(rng.standard_normal((80, 6))), np.abs(rng.standard_normal((10, 6)))
    kernel, bias = rng.standard_normal((6, 3)), rng.standard_normal(3)
    z = f @ kernel + bias
    np.testing.assert_allclose(O.react_score(f, np.inf, kernel, bias), O.energy_score(z), rtol=1e-10)
    fit = O.fit_vim(f_ref, f_ref @ kernel + bias, kernel, bias, dim=5)
    # the origin u solves kernel^T u = -bias: the logits of u are zero
    np.testing.assert_allclose(fit.origin @ kernel + bias, 0.0, atol=1e-8)
    # the principal subspace is the top-5 eigenvectors of the centred second moment; the residual is the rest
    c_ref = f_ref - fit.origin
    w, v = np.linalg.eigh(c_ref.T @ c_ref)
    rest = v[:, np.argsort(-w)[5:]]
    resid = np.linalg.norm((f - fit.origin) @ rest, axis=1)
    np.testing.assert_allclose(O.vim_score(f, z, fit), O.energy_score(z) - fit.alpha * resid, rtol=1e-10)


def test_a_reference_set_without_a_class_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^The 'reference labels' parameter must be .*class\(es\) \[2\].*$"):
        O.fit_gaussian(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 3)
    with pytest.raises(ConfigError, match="'k' parameter of knn_score"):
        O.knn_score(np.zeros((2, 2)), np.ones((3, 2)), 4)


def test_intervals_equal_a_slow_loop_over_the_same_resamples() -> None:
    from robustkit.metrics.resampling import weighted_bootstrap_interval

    rng = np.random.default_rng(5)
    id_s, ood_s = np.round(rng.normal(1, 1, 40), 1), np.round(rng.normal(0, 1, 25), 1)
    y = np.r_[np.ones(40, bool), np.zeros(25, bool)]
    s = np.r_[id_s, ood_s]
    keys = list(O.DETECTION_METRICS)

    def slow(idx: np.ndarray) -> np.ndarray:
        yy, ss = y[idx], s[idx]
        fpr, tpr, _ = roc_curve(yy, ss, drop_intermediate=False)
        fpr_o, tpr_o, _ = roc_curve(~yy, -ss, drop_intermediate=False)
        return np.array([roc_auc_score(yy, ss), average_precision_score(yy, ss), average_precision_score(~yy, -ss),
                         fpr[np.searchsorted(tpr, 0.95)], fpr_o[np.searchsorted(tpr_o, 0.95)]])

    def slow_counts(w: np.ndarray) -> np.ndarray:  # each row of counts as the rows it draws
        return np.stack([slow(np.repeat(np.arange(len(s)), row.astype(int))) for row in w])

    lo, hi = weighted_bootstrap_interval(slow_counts, len(s), n_boot=60, seed=9, strata=y)
    fast = O.ood_intervals(id_s, ood_s, n_boot=60, seed=9)
    for k, a, b in zip(keys, lo, hi):
        assert fast[k] == pytest.approx([a, b], abs=1e-12), k
