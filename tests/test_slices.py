"""The slices study and its math: per-slice metrics against an independent groupby, BH q-values
against a direct computation, a planted bad slice flagged (and a same-distribution one not),
the site probe, per-slice McNemar in compare, the phantom's sites, and the one-line errors."""

from __future__ import annotations

import csv
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats.contingency import association
from sklearn.metrics import roc_auc_score

from robustkit.compare import compare, slice_deltas
from robustkit.data.dataset import Dataset, Sample
from robustkit.data.loader import load_dataset
from robustkit.data.phantom import CaseMeta, generate_phantom, render_case
from robustkit.errors import ConfigError, DataError, ModelError
from robustkit.metrics import slices as S
from robustkit.metrics.paired import holm
from robustkit.results import AuditResult
from robustkit.studies.base import AuditContext
from robustkit.studies.slices import SlicesStudy

CLASSES = ["COVID-19", "NORMAL", "Viral Pneumonia"]


# ---------------------------------------------------------------- pure math


def _bh_direct(p: list[float]) -> list[float]:
    """q_i = min over j with p_j >= p_i of m * p_j / rank_j (rank 1 = smallest), by brute force."""
    m = len(p)
    ranks = {j: 1 + sum(p[k] < p[j] or (p[k] == p[j] and k < j) for k in range(m)) for j in range(m)}
    return [min(1.0, min(m * p[j] / ranks[j] for j in range(m) if p[j] >= p[i])) for i in range(m)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bh_qvalues_equal_a_direct_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.r_[rng.uniform(size=12) ** 3, [0.5, 0.5]].tolist()  # ties included
    np.testing.assert_allclose(S.bh_qvalues(p), _bh_direct(p), rtol=1e-12)
    q = S.bh_qvalues([0.01, float("nan"), 0.04])  # NaN is not counted in m
    assert np.isnan(q[1]) and q[0] == pytest.approx(0.02) and q[2] == pytest.approx(0.04)


def _ece_loop(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inb = [i for i in range(len(conf)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if inb:
            total += len(inb) / len(conf) * abs(np.mean(hit[inb]) - np.mean(conf[inb]))
    return total


def test_slice_metrics_equal_an_independent_groupby() -> None:
    rng = np.random.default_rng(3)
    n = 240
    y, pred = rng.integers(0, 3, n), rng.integers(0, 3, n)
    conf = rng.uniform(0.34, 1.0, n)
    site = rng.choice(["A", "B", "C"], n)
    for value in ("A", "B", "C"):
        mask = site == value
        values, intervals = S.slice_metrics(y, pred, conf, mask, positive=0, n_bins=10, n_boot=200, seed=1)
        rows = [i for i in range(n) if site[i] == value]  # groupby by hand
        acc = sum(pred[i] == y[i] for i in rows) / len(rows)
        pos = [i for i in rows if y[i] == 0]
        neg = [i for i in rows if y[i] != 0]
        assert values["accuracy"] == pytest.approx(acc)
        assert values["sensitivity"] == pytest.approx(sum(pred[i] == 0 for i in pos) / len(pos))
        assert values["specificity"] == pytest.approx(sum(pred[i] != 0 for i in neg) / len(neg))
        assert values["ece"] == pytest.approx(_ece_loop(conf[rows], (pred == y)[rows].astype(float), 10))
        for k, (lo, hi) in intervals.items():
            assert lo <= values[k] <= hi


def test_discretize_and_enumerate_respect_bins_min_size_and_depth() -> None:
    age = np.arange(20, 80)
    labels = S.discretize(age, bin_width=10)
    assert labels[0] == "20-29" and labels[-1] == "70-79" and len(set(labels)) == 6
    assert S.discretize(np.array([1, 2, 1]), bin_width=10).tolist() == ["1", "2", "1"]  # few levels: kept
    sex = np.array(["F", "M"] * 30)
    found = S.enumerate_slices({"age": labels, "sex": sex}, depth=2, min_size=10)
    names = {s.name for s in found}
    assert "age=20-29" in names and "sex=F" in names and "age=20-29&sex=F" not in names  # 5 < 10
    assert all(s.mask.sum() >= 10 and (~s.mask).sum() >= 10 for s in found)
    assert not any("&" in s.name for s in S.enumerate_slices({"age": labels, "sex": sex}, depth=1, min_size=2))


def test_enumerate_slices_equals_a_loop_over_the_value_tuples() -> None:
    """Every conjunction of up to ``depth`` columns, in the order of the sorted value tuples, with
    its membership, against a loop over the samples (the enumeration codes the values once)."""
    rng = np.random.default_rng(4)
    labels = {"site": rng.choice(["B", "A", "C"], 300), "sex": rng.choice(["M", "F", "missing"], 300),
              "view": rng.choice(["PA", "AP"], 300, p=[0.9, 0.1])}
    want = []
    for k in (1, 2, 3):
        for group in combinations(sorted(labels), k):
            for combo in sorted({tuple(str(labels[c][i]) for c in group) for i in range(300)}):
                mask = np.array([all(labels[c][i] == v for c, v in zip(group, combo)) for i in range(300)])
                if 12 <= mask.sum() <= 300 - 12:
                    want.append(("&".join(f"{c}={v}" for c, v in zip(group, combo)), mask))
    got = S.enumerate_slices(labels, depth=3, min_size=12)
    assert [s.name for s in got] == [name for name, _ in want] and len(got) > 12
    assert all(np.array_equal(s.mask, mask) for s, (_, mask) in zip(got, want))


def test_cramers_v_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 300)
    b = np.where(rng.uniform(size=300) < 0.7, a, rng.integers(0, 3, 300))
    table = np.zeros((3, 3), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    assert S.cramers_v(a, b) == pytest.approx(association(table, method="cramer"))


def test_probe_reads_an_encoded_site_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    site = np.repeat(["A", "B", "C"], 60)
    noise = rng.standard_normal((180, 16))
    encoded = noise + 3.0 * np.eye(16)[np.searchsorted(["A", "B", "C"], site)]
    hi = S.site_probe(encoded, site, folds=5, seed=0, n_boot=200)
    assert hi["auroc"] > 0.95 and hi["low"] > 0.5
    # features without site information: AUROC near chance; the interval (over samples, not
    # over refits) holds 0.5 for most noise draws
    null = [S.site_probe(np.random.default_rng(s).standard_normal((180, 16)), site, folds=5, seed=0, n_boot=200)
            for s in range(6)]
    assert abs(np.mean([r["auroc"] for r in null]) - 0.5) < 0.05
    assert sum(r["low"] < 0.5 < r["high"] for r in null) >= 4
    assert np.isnan(S.site_probe(noise, np.array(["A"] * 180))["auroc"])


# ---------------------------------------------------------------- the study's reduce


def _dataset(n: int = 600, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    samples = [
        Sample(f"s{i:04d}", Path(f"s{i:04d}.png"), int(rng.integers(0, 3)),
               metadata=(("site", "ABC"[i % 3]), ("sex", "FM"[int(rng.integers(0, 2))]),
                         ("age", int(rng.integers(20, 90)))))
        for i in range(n)
    ]
    return Dataset(Path("."), CLASSES, samples)


def _logits(data: Dataset, wrong: dict[str, float], seed: int) -> np.ndarray:
    """Logits that are right except with probability wrong[site] (default 0.05)."""
    rng = np.random.default_rng(seed)
    y = data.labels
    site = data.metadata["site"]
    err = rng.uniform(size=len(y)) < np.array([wrong.get(s, 0.05) for s in site])
    pred = np.where(err, (y + 1) % 3, y)
    z = rng.normal(0, 0.3, (len(y), 3))
    z[np.arange(len(y)), pred] += 3.0
    return z.astype(np.float32)


def _reduce(data: Dataset, logits: np.ndarray, **cfg: object):
    study = SlicesStudy.configure("standard", {"n_bootstrap": 100, **cfg})
    ctx = AuditContext(seed=0, model_info={"output_kind": "softmax"})
    study.prepare(data, ctx)
    return study.finalize(study.reduce({"logits": logits}, data, ctx), np.arange(len(data)), 0.0)


def test_planted_bad_slice_is_flagged_and_table_matches_a_groupby() -> None:
    data = _dataset()
    res = _reduce(data, _logits(data, {"C": 0.45}, seed=1))
    correct = res.records["correct"][:, 0]
    meta = data.metadata
    for row in res.data["slices"]:
        mask = np.ones(len(data), bool)
        for col, val in row["conditions"]:
            mask &= S.discretize(meta[col], bin_width=10) == val
        assert row["n"] == mask.sum()
        assert row["accuracy"] == pytest.approx(correct[mask].mean())
        assert row["gap"] == pytest.approx(correct[mask].mean() - correct[~mask].mean())
        assert res.metrics[f"accuracy.{row['slice']}"] == pytest.approx(row["accuracy"])
    flagged = {r["slice"] for r in res.data["slices"] if r["flagged"]}
    assert "site=C" in flagged
    assert all("site=C" in f for f in flagged)  # same-distribution slices (sex, age, A, B) are not
    assert res.data["worst"]["slice"].startswith("site=C") or "site=C" in res.data["worst"]["slice"]
    assert res.metrics["n_flagged"] == len(flagged)
    gaps = [r["gap"] for r in res.data["slices"]]
    assert gaps == sorted(gaps)
    assert {c.name: c.status for c in res.checks}["slices"] == "warn"


def test_single_label_slices_score_every_class_auroc_as_sklearn_on_one_hot_targets() -> None:
    """Single-label is multi-label with one-hot targets: each slice's per-class AUROC is scikit-learn's
    one-vs-rest AUROC on the slice's images, the macro its mean; overall likewise."""
    data = _dataset(n=300, seed=3)
    logits = _logits(data, {"C": 0.3}, seed=3)
    res = _reduce(data, logits)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    y, meta = data.labels, data.metadata
    for k, cls in enumerate(CLASSES):
        assert res.metrics[f"auroc.{cls}"] == pytest.approx(roc_auc_score(y == k, probs[:, k]), abs=1e-6)
    for row in res.data["slices"]:
        mask = np.ones(len(data), bool)
        for col, val in row["conditions"]:
            mask &= S.discretize(meta[col], bin_width=10) == val
        want = [roc_auc_score(y[mask] == k, probs[mask, k]) for k in range(3)]
        for k, cls in enumerate(CLASSES):
            assert res.metrics[f"auroc.{row['slice']}.{cls}"] == pytest.approx(want[k], abs=1e-6)
        assert res.metrics[f"auroc.{row['slice']}.macro"] == pytest.approx(np.mean(want), abs=1e-6)
        assert f"auroc.{row['slice']}.macro" not in res.intervals  # intervals only where the test reads AUROC
    assert "worst.auroc" not in res.metrics and res.data["worst"]["accuracy"] == res.metrics["worst.accuracy"]


def test_no_flag_without_a_planted_slice() -> None:
    data = _dataset(seed=2)
    res = _reduce(data, _logits(data, {}, seed=2))
    assert res.metrics["n_flagged"] == 0


def test_bad_input_gives_one_line_errors() -> None:
    data = _dataset(60)
    with pytest.raises(ConfigError, match=r"^The 'columns' parameter of study 'slices' must be metadata columns.*Got 'scanner' instead\.$"):
        _reduce(data, _logits(data, {}, 0), columns=["scanner"])
    with pytest.raises(DataError, match=r"'slices'.*'site=Z'.*matches none"):
        _reduce(data, _logits(data, {}, 0), slices=["site=Z"])
    with pytest.raises(ConfigError, match=r"^The 'min_size' parameter of study 'slices' must be an int in \[2, inf\)\. Got 1 instead\.$"):
        SlicesStudy.configure("standard", {"min_size": 1})
    with pytest.raises(ConfigError, match="'slices'.*column=value"):
        SlicesStudy.configure("standard", {"slices": ["site"]})
    with pytest.raises(ConfigError, match="'probe_columns'"):
        _reduce(data, _logits(data, {}, 0), probe_columns=["scanner"])


# ---------------------------------------------------------------- compare


def _audit(data: Dataset, logits: np.ndarray) -> AuditResult:
    res = _reduce(data, logits, min_size=60)
    return AuditResult(model={}, dataset={}, config={"seed": 0, "studies": {"slices": res.config}}, environment={},
                       ids=data.ids, labels=data.labels, class_names=CLASSES, studies={"slices": res},
                       metadata=data.metadata)


def test_compare_tests_each_slice_with_mcnemar_and_holm() -> None:
    data = _dataset()
    base = _audit(data, _logits(data, {}, seed=1))
    cand = _audit(data, _logits(data, {"C": 0.5}, seed=1))  # same draws: only site C gets worse
    rows = slice_deltas(base, cand)
    by = {r["slice"]: r for r in rows}
    assert by["site=C"]["verdict"] == "regression" and by["site=A"]["verdict"] == "unchanged"
    for r in rows:
        b, c = r["discordant"]
        expected = binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
        assert r["p_value"] == pytest.approx(min(1.0, expected))
    np.testing.assert_allclose([r["p_holm"] for r in rows], holm([r["p_value"] for r in rows]))
    cmp = compare([base, cand], labels=["base", "cand"], n_boot=200)
    assert cmp.candidates[0].slices == rows
    delta = {d.metric: d for d in cmp.candidates[0].deltas}["slices.accuracy.site=C"]
    assert delta.test == "paired-bootstrap" and delta.verdict == "regression"


# ---------------------------------------------------------------- phantom sites


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_phantom_sites_balanced_and_confounded(tmp_path: Path) -> None:
    bal = generate_phantom(tmp_path / "bal", per_class=6, size=32, sites=3)
    con = generate_phantom(tmp_path / "con", per_class=20, size=32, sites=3, confounded=True)
    plain = generate_phantom(tmp_path / "plain", per_class=2, size=32)
    assert not (plain / "manifest.csv").exists() and not (plain / "COVID-19.metadata.csv").exists()
    rows = _read(bal / "manifest.csv")
    assert {r["site"] for r in rows} == {"A", "B", "C"} and {r["view"] for r in rows} <= {"PA", "AP"}
    for name in CLASSES:  # balanced: every class equally at every site
        sites = [r["site"] for r in rows if r["label"] == name]
        assert sorted(sites) == sorted(["A", "B", "C"] * 2)
    folder, manifest = load_dataset(bal), load_dataset(bal / "manifest.csv")
    assert sorted(folder.metadata["site"].tolist()) == sorted(manifest.metadata["site"].tolist())
    assert S.cramers_v(folder.labels, folder.metadata["site"]) == pytest.approx(0.0)
    confounded = load_dataset(con)
    assert S.cramers_v(confounded.labels, confounded.metadata["site"]) > 0.6


def test_phantom_site_changes_acquisition_and_ap_magnifies_the_heart() -> None:
    def case(site: int, view: str):
        return render_case(0, size=128, rng=np.random.default_rng([0, 0, 3]), meta=CaseMeta(site, 3, view, "F", 50))

    a, b, ap = case(0, "PA"), case(1, "PA"), case(0, "AP")
    assert np.array_equal(a.lungs, b.lungs) and not np.array_equal(a.image, b.image)  # same patient, other site
    assert ap.lungs.sum() < a.lungs.sum()  # the magnified heart covers more of the lungs


def test_phantom_sites_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'sites'"):
        generate_phantom(tmp_path / "x", per_class=1, size=32, sites=1, confounded=True)
    with pytest.raises(ConfigError, match="'sites'"):
        generate_phantom(tmp_path / "x", per_class=1, size=32, sites=9)


# ---------------------------------------------------------------- gate, report, features


def test_gate_rules_name_slices_and_the_report_draws_them() -> None:
    from robustkit.gate import gate
    from robustkit.report.render import report_html

    data = _dataset()
    base = _audit(data, _logits(data, {}, seed=1))
    cand = _audit(data, _logits(data, {"C": 0.5}, seed=1))
    policy = {"judge": "point", "rule": [{"metric": "slices.worst.accuracy", "min": 0.8},
                       {"metric": "slices.accuracy.site=B", "min": 0.8},
                       {"metric": "slices.accuracy.site=C", "max_drop": 0.05}]}
    assert gate(base, {"judge": "point", "rule": policy["rule"][:2]}).passed
    report = gate(cand, policy, baseline=base, n_boot=200)
    held = [o.passed for o in report.rules]
    assert held == [False, True, False]  # site C's accuracy fell below 0.8 and dropped significantly
    html = report_html(cand)
    assert "Accuracy per slice" in html and "site=C" in html and "Worst slice" in html


def test_features_are_the_input_of_the_final_dense_layer(toy_model: Path, toy_data: Path) -> None:
    from robustkit.model.adapter import load_model

    model = load_model(toy_model, batch_size=5)
    x = load_dataset(toy_data).load_images(np.arange(12), size=model.input_shape[:2], channels=1)
    f = model.features(x)
    dense = model.model.get_layer("predictions")
    kernel, bias = (np.asarray(w) for w in dense.get_weights())
    assert f.shape == (12, kernel.shape[0])
    np.testing.assert_allclose(f @ kernel + bias, model.logits(x), rtol=1e-4, atol=1e-4)  # the logits follow
    with pytest.raises(ModelError, match="a vector per image"):  # one home with the OOD study's features
        model.features(x, layer="conv1")
    with pytest.raises(ModelError, match="expected a layer of"):
        model.features(x, layer="nope")


def test_dependence_within_known_answers() -> None:
    y = np.repeat([0, 1, 2], 30)
    site = np.tile(np.repeat(["A", "B", "C"], 10), 3)  # every class at every site
    by_site = np.searchsorted(["A", "B", "C"], site)  # the prediction is the site's home class
    assert S.dependence_within(by_site, site, y) == pytest.approx(1.0)
    assert S.dependence_within(y, site, y) == pytest.approx(0.0)  # the prediction is the class
    rng = np.random.default_rng(0)
    mixed = np.where(rng.uniform(size=90) < 0.5, by_site, y)
    assert 0.0 < S.dependence_within(mixed, site, y) < 1.0


def test_shortcut_check_warns_on_a_model_that_reads_the_site() -> None:
    data = _dataset(300)
    site_home = np.searchsorted(["A", "B", "C"], data.metadata["site"])
    feats = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    study = SlicesStudy.configure("quick", {"n_bootstrap": 50, "probe_folds": 3})
    ctx = AuditContext(seed=0, model_info={"output_kind": "softmax"})
    checks = {}
    for name, pred in (("reads site", site_home), ("reads class", data.labels)):
        logits = np.eye(3, dtype=np.float32)[pred] * 4.0
        res = study.reduce({"logits": logits, "features": feats}, data, ctx)
        checks[name] = ({c.name: c.status for c in res.checks}["site shortcut"], res.metrics["dependence.site"])
    assert checks["reads site"] == ("warn", pytest.approx(1.0))
    assert checks["reads class"] == ("pass", pytest.approx(0.0))


def test_cli_phantom_sites_and_its_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustkit.cli import main

    assert main(["phantom", "-q", "--out", str(tmp_path / "p"), "--per-class", "4", "--size", "32",
                 "--sites", "2", "--confounded"]) == 0
    assert load_dataset(tmp_path / "p").metadata_columns == ["age", "sex", "site", "view"]
    capsys.readouterr()
    assert main(["phantom", "-q", "--out", str(tmp_path / "q"), "--per-class", "1", "--size", "32",
                 "--sites", "1", "--confounded"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustkit: error: The 'sites' parameter") and "\n" not in err
