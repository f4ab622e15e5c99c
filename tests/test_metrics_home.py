"""One home per metric: compare and the report recompute ECE with the calibration module's
own binning, so compare's statistic equals the study's metric (issue #12, item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from robustkit.compare import compare
from robustkit.metrics import calibration as CM
from robustkit.metrics.paired import PairedRecords
from robustkit.metrics.paired_statistics import find_statistic
from robustkit.report.compare_render import _reliability_points
from robustkit.results import SCHEMA_VERSION, AuditResult, StudyResult

EDGE_CONF = np.array([0.55, 0.6, 0.85, 0.8, 0.75, 0.9])
EDGE_CORRECT = np.array([1, 0, 0, 1, 1, 1])


def slow_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Independent reference: a loop over bins ``(e_b, e_{b+1}]`` (edges ``linspace(0, 1, B + 1)``, 0 in the first)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        inb = [i for i in range(len(conf)) if (b == 0 and conf[i] == 0.0) or (edges[b] < conf[i] <= edges[b + 1])]
        if inb:
            total += len(inb) / len(conf) * abs(float(np.mean(correct[inb])) - float(np.mean(conf[inb])))
    return total


def _probs(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-class probabilities whose top-label confidence is ``conf`` (>= 0.5) and whose
    argmax is right exactly where ``correct``."""
    p = np.stack([conf, 1.0 - conf], axis=1)
    return p, np.where(np.asarray(correct) == 1, 0, 1)


def _paired_stat(conf: np.ndarray, correct: np.ndarray, n_bins: int, split: np.ndarray | None = None):
    records = {"confidence": conf, "correct": np.asarray(correct, dtype=bool)[:, None]}
    if split is not None:
        records["split"] = split
    pr = PairedRecords(records, config={"n_bins": n_bins}, labels=np.asarray(["a"] * len(conf)),
                       ece={"ece": ("confidence", "correct")}, subset=("split", 1) if split is not None else None)
    stat = find_statistic("calibration.ece", pr)
    assert stat is not None
    return stat


def test_bin_edge_case_of_the_issue() -> None:
    """0.6 sits on an inner edge: the study puts it in (0.5, 0.6]; compare used to put it in [0.6, 0.7)."""
    p, y = _probs(EDGE_CONF, EDGE_CORRECT)
    study = CM.ece(p, y, n_bins=10)
    assert study == pytest.approx(0.225, abs=1e-12)
    assert slow_ece(EDGE_CONF, EDGE_CORRECT, 10) == pytest.approx(0.225, abs=1e-12)
    got = _paired_stat(EDGE_CONF, EDGE_CORRECT, 10)(np.arange(6)[None, :])[0]
    assert got == pytest.approx(study, abs=1e-12)
    assert abs(got - 0.3416666) > 0.1  # the old left-closed recomputation


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n_bins", [1, 7, 10, 15])
def test_paired_ece_equals_study_metric_on_random_cases(seed: int, n_bins: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40 + seed * 7
    conf = 0.5 + 0.5 * rng.random(n) + 1e-9
    on_edge = rng.random(n) < 0.3  # many confidences exactly on a bin edge
    edges = np.array([k / n_bins for k in range(n_bins + 1)])
    edges = edges[edges > 0.5]  # above 0.5: the two-class argmax is never a tie
    conf = np.where(on_edge, rng.choice(edges, n), conf)
    correct = (rng.random(n) < conf).astype(int)
    split = (rng.random(n) < 0.5).astype(np.int8)
    keep = split == 1
    p, y = _probs(conf, correct)
    study = CM.ece(p[keep], y[keep], n_bins=n_bins)
    assert study == pytest.approx(slow_ece(conf[keep], correct[keep], n_bins), abs=1e-12)
    got = _paired_stat(conf, correct, n_bins, split)(np.arange(n)[None, :])[0]
    assert got == pytest.approx(study, abs=1e-12)


def test_bootstrap_rows_reuse_the_point_binning() -> None:
    """Each resample's value is the point metric on that resample (equal-width bins do not move)."""
    rng = np.random.default_rng(3)
    conf = np.round(0.5 + 0.5 * rng.random(50), 1)  # on edges
    correct = (rng.random(50) < 0.7).astype(int)
    rows = rng.integers(0, 50, size=(20, 50))
    got = _paired_stat(conf, correct, 10)(rows)
    p, y = _probs(conf, correct)
    want = [CM.ece(p[r], y[r], n_bins=10) for r in rows]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_ece_stages_match_point_metric_for_equal_mass() -> None:
    rng = np.random.default_rng(5)
    conf = 0.5 + 0.5 * rng.random(33)
    correct = (rng.random(33) < 0.8).astype(int)
    p, y = _probs(conf, correct)
    bins, gap = CM.ece_update(conf, correct, n_bins=6, binning="equal_mass")
    got = CM.ece_compute(bins, gap, np.arange(33)[None, :], n_bins=6)[0]
    assert got == pytest.approx(CM.ece_equal_mass(p, y, n_bins=6), abs=1e-12)
    assert np.isnan(CM.ece_compute(bins, gap, np.arange(33)[None, :], n_bins=6, keep=np.zeros(33, bool))[0])


def _calibration_audit(conf: np.ndarray, correct: np.ndarray, name: str) -> AuditResult:
    n = len(conf)
    p, y = _probs(conf, correct)
    split = np.ones(n, dtype=np.int8)
    study = StudyResult(
        name="calibration",
        metrics={"ece": CM.ece(p, y, n_bins=10)},
        directions={"ece": "lower"},
        records={"confidence": conf, "correct": np.asarray(correct, bool)[:, None], "split": split,
                 "index": np.arange(n)},
        config={"n_bins": 10},
    )
    return AuditResult(
        model={"name": name, "fingerprint": f"sha256:{name}"}, dataset={"fingerprint": "sha256:d"},
        config={"seed": 0, "studies": {"calibration": {"n_bins": 10}}}, environment={},
        ids=np.asarray([f"s{i}" for i in range(n)]), labels=np.zeros(n, dtype=np.int64), class_names=["a", "b"],
        studies={"calibration": study}, schema_version=SCHEMA_VERSION, created="2024-01-01T00:00:00+00:00",
    )


def test_compare_tests_the_edge_case_instead_of_not_testable() -> None:
    conf = np.tile(EDGE_CONF, 10)
    base = _calibration_audit(conf, np.tile(EDGE_CORRECT, 10), "v1")
    cand = _calibration_audit(np.clip(conf + 0.05, 0, 1), np.tile(EDGE_CORRECT, 10), "v2")
    d = compare([base, cand], n_boot=50).candidates[0].deltas[0]
    assert d.metric == "calibration.ece"
    assert d.test == "paired-bootstrap" and d.verdict != "not testable"


def test_compare_figure_draws_the_study_bins() -> None:
    rng = np.random.default_rng(2)
    conf = np.round(0.4 + 0.6 * rng.random(60), 1)
    correct = rng.random(60) < conf
    split = (np.arange(60) % 2).astype(np.int8)
    x, y = _reliability_points({"confidence": conf, "correct": correct[:, None], "split": split}, 10)
    k = split == 1
    bins = CM.reliability_bins(conf[k], correct[k], n_bins=10)
    assert x == [c for c, n in zip(bins["confidence"], bins["count"]) if n]
    assert y == [a for a, n in zip(bins["accuracy"], bins["count"]) if n]
    edge = 0.6  # lands in (0.5, 0.6] as in the study's metric
    first = CM.equal_width_bins(np.array([edge]), 10)[0]
    assert first == 5


# ---------------------------------------------------------------- the stratified split


def _slow_split(y: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Reference: the calibration study's former private copy of the split, as a plain loop."""
    rng = np.random.default_rng(seed)
    first: list[int] = []
    second: list[int] = []
    for k in sorted(set(y.tolist())):
        group = rng.permutation([i for i in range(len(y)) if y[i] == k])
        n = int(np.floor(fraction * len(group) + 0.5))
        if len(group) >= 2:
            n = min(max(n, 1), len(group) - 1)
        first += group[:n].tolist()
        second += group[n:].tolist()
    return sorted(first), sorted(second)


@pytest.mark.parametrize("seed", range(5))
def test_stratified_split_one_home(seed: int) -> None:
    from robustkit.data.dataset import stratified_split

    rng = np.random.default_rng(100 + seed)
    y = rng.integers(0, 4, size=37)
    y[:2] = 5  # a class of two: one sample each side
    first, second = stratified_split(y, 0.3, rng=np.random.default_rng(seed))
    assert (first.tolist(), second.tolist()) == _slow_split(y, 0.3, seed)
    assert sorted(first.tolist() + second.tolist()) == list(range(37))
    assert (y[first] == 5).sum() == 1 and (y[second] == 5).sum() == 1


def test_dataset_split_is_the_same_split(tmp_path) -> None:
    from conftest import write_toy_dataset

    from robustkit.data.dataset import stratified_split
    from robustkit.data.loader import load_dataset

    ds = load_dataset(write_toy_dataset(tmp_path / "d", per_class=5))
    a, b = ds.split(0.4, seed=3)
    first, second = stratified_split(ds.labels, 0.4, rng=np.random.default_rng(3))
    assert list(a.ids) == [ds.ids[i] for i in first] and list(b.ids) == [ds.ids[i] for i in second]
