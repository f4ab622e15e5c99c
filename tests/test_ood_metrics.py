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


@pytest.mark.parametrize("k", [1, 7, 30])
def test_knn_windows_give_the_brute_force_on_tight_clusters_duplicates_and_ties(k: int) -> None:
    rng = np.random.default_rng(11)
    # a bank of tight clusters stored cluster by cluster (neighbours sit in narrow windows of
    # the projection, the probe of a block may miss them), exact duplicates and a zero row
    centres = rng.standard_normal((6, 12)) + 2.0
    bank = np.repeat(centres, 500, axis=0) * (1 + 1e-3 * rng.standard_normal((3000, 12)))
    bank[2000:2100] = bank[:100]
    bank[5] = 0.0
    queries = np.r_[bank[:40], np.repeat(centres, 20, axis=0) * (1 + 1e-3 * rng.standard_normal((120, 12))),
                    rng.standard_normal((40, 12)), np.zeros((1, 12))]
    b = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    brute = -np.sort(1.0 - q @ b.T, axis=1)[:, k - 1]  # the earlier implementation: every pair, then a sort
    for chunk in (5, 128):
        np.testing.assert_allclose(O.knn_score(queries, bank, k, chunk=chunk), brute, rtol=0, atol=1e-12)


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


def _slow_metrics(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The five detection metrics of labelled scores by scikit-learn (ID positive)."""
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    fpr_o, tpr_o, _ = roc_curve(~y, -s, drop_intermediate=False)
    return np.array([roc_auc_score(y, s), average_precision_score(y, s), average_precision_score(~y, -s),
                     fpr[np.searchsorted(tpr, 0.95)], fpr_o[np.searchsorted(tpr_o, 0.95)]])


def test_intervals_equal_a_slow_loop_over_the_same_resamples() -> None:
    from robustkit.metrics.resampling import weighted_bootstrap_interval

    rng = np.random.default_rng(5)
    id_s, ood_s = np.round(rng.normal(1, 1, 40), 1), np.round(rng.normal(0, 1, 25), 1)
    y = np.r_[np.ones(40, bool), np.zeros(25, bool)]
    s = np.r_[id_s, ood_s]
    keys = list(O.DETECTION_METRICS)

    def slow_counts(w: np.ndarray) -> np.ndarray:  # each row of counts as the rows it draws
        return np.stack([_slow_metrics(y[idx], s[idx]) for idx in (np.repeat(np.arange(len(s)), row.astype(int))
                                                                    for row in w)])

    lo, hi = weighted_bootstrap_interval(slow_counts, len(s), n_boot=60, seed=9, strata=y)
    fast = O.ood_intervals(id_s, ood_s, n_boot=60, seed=9)
    for k, a, b in zip(keys, lo, hi):
        assert fast[k] == pytest.approx([a, b], abs=1e-12), k


def _scores_and_sets(rng: np.random.Generator, n_id: int, sizes: dict[str, int]):
    """Two scores of ``n_id`` ID images and of each OOD set (rounded: ties across and within groups)."""
    ids = {"a": np.round(rng.normal(1, 1, n_id), 1), "b": np.round(rng.normal(0.5, 2, n_id), 1)}
    sets = {name: {"a": np.round(rng.normal(0, 1, n), 1), "b": np.round(rng.normal(0, 2, n), 1)}
            for name, n in sizes.items()}
    return ids, sets


def test_shared_intervals_equal_the_metrics_of_the_same_resamples_one_by_one() -> None:
    from robustkit.metrics.resampling import bootstrap_weights, percentile_interval

    ids, sets = _scores_and_sets(np.random.default_rng(7), 40, {"near": 25, "far": 3})
    seeds = {"near": 11, "far": 12}
    got = O.detection_intervals(ids, sets, n_boot=70, id_seed=10, set_seeds=seeds)  # two blocks: 64 + 6
    # the same counts, turned back into index lists, and every resample scored one by one
    # (ood_metrics: the sorted-rows kernel, checked against scikit-learn above)
    w_id = np.concatenate(list(bootstrap_weights(40, 70, seed=10)))
    for name, by_score in sets.items():
        w_set = np.concatenate(list(bootstrap_weights(len(by_score["a"]), 70, seed=seeds[name])))
        for sc in ids:
            values = np.stack([list(O.ood_metrics(ids[sc][np.repeat(np.arange(40), a.astype(int))],
                                                  by_score[sc][np.repeat(np.arange(len(b)), b.astype(int))]).values())
                               for a, b in zip(w_id, w_set)])
            lo, hi = percentile_interval(values)
            for k, a, b in zip(O.DETECTION_METRICS, lo, hi):
                assert got[(sc, name)][k] == pytest.approx([a, b], abs=1e-12), (sc, name, k)


def test_shared_intervals_within_monte_carlo_error_of_one_resampling_per_pair() -> None:
    ids, sets = _scores_and_sets(np.random.default_rng(8), 300, {"near": 150})
    shared = O.detection_intervals(ids, sets, n_boot=400, id_seed=1, set_seeds={"near": 2})
    for sc in ids:
        per_pair = O.ood_intervals(ids[sc], sets["near"][sc], n_boot=400, seed=3)
        for k in O.DETECTION_METRICS:
            (lo, hi), (a, b) = per_pair[k], shared[(sc, "near")][k]
            # a 2.5% quantile of 400 resamples moves by about 0.035 of the interval's width
            # between two draws (0.05 for a difference): 5 of those
            assert abs(a - lo) <= 0.25 * (hi - lo) and abs(b - hi) <= 0.25 * (hi - lo), (sc, k, (lo, hi), (a, b))
            assert shared[(sc, "near")][k] != per_pair[k]  # other draws of the same bootstrap
