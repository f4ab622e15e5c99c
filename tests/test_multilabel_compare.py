"""compare and gate of multi-label audits, per finding: DeLong against a slow kernel
reference, per-finding DeLong / McNemar in compare equal to direct computations on the
records, gate rules on clean.auroc.<finding> (names with spaces and glob characters), and
the one-line refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import average_precision_score, roc_auc_score

from robustkit import cli
from robustkit.compare import compare
from robustkit.errors import ConfigError
from robustkit.gate import gate
from robustkit.metrics import multilabel as ML
from robustkit.metrics.paired import holm
from robustkit.report.compare_render import comparison_html
from robustkit.results import SCHEMA_VERSION, AuditResult, StudyResult, load_results, save_results
from tests.test_compare import make_audit

FINDINGS = ["Pleural Effusion", "Nodule", "Opacity [left]"]
DIRECTIONS = {"auroc": "higher", "auprc": "higher", "sensitivity": "higher", "specificity": "higher",
              "n_samples": "none", "n_thresholded": "none"}


# ---------------------------------------------------------------- references and builders


def slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """DeLong (1988) from the kernel psi(x, y) = 1 if x > y, 1/2 if x == y, 0 else: an
    O(m n) loop over every positive-negative pair. Returns (auc_a, auc_b, se, p)."""

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else 0.5 if x == z else 0.0

    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    m, n = len(pos), len(neg)
    v10, v01 = np.zeros((2, m)), np.zeros((2, n))
    for r, s in enumerate((a, b)):
        for i, p in enumerate(pos):
            v10[r, i] = sum(psi(s[p], s[q]) for q in neg) / n
        for j, q in enumerate(neg):
            v01[r, j] = sum(psi(s[p], s[q]) for p in pos) / m
    auc = v10.mean(axis=1)
    s10 = [[sum((v10[r, i] - auc[r]) * (v10[t, i] - auc[t]) for i in range(m)) / (m - 1) for t in (0, 1)] for r in (0, 1)]
    s01 = [[sum((v01[r, j] - auc[r]) * (v01[t, j] - auc[t]) for j in range(n)) / (n - 1) for t in (0, 1)] for r in (0, 1)]
    var = (s10[0][0] + s10[1][1] - 2 * s10[0][1]) / m + (s01[0][0] + s01[1][1] - 2 * s01[0][1]) / n
    se = math.sqrt(var)
    return float(auc[0]), float(auc[1]), se, float(2 * norm.sf(abs(auc[1] - auc[0]) / se))


def ml_audit(probs: np.ndarray, targets: np.ndarray, *, name: str = "m", findings: list[str] = FINDINGS,
             thresholds: dict[str, float] | None = None, fingerprint: str = "sha256:mldata") -> AuditResult:
    """A multi-label audit with given thresholds (every image thresholded), metrics computed by
    the clean study's own function (``finding_summary``)."""
    n = len(probs)
    th = thresholds or {f: 0.5 for f in findings}
    t = np.array([th[f] for f in findings])
    called = probs >= t[None, :]
    metrics = ML.finding_summary(targets, probs, t).flat(findings)
    metrics.update(n_samples=float(n), n_thresholded=float(n))
    clean = StudyResult(
        name="clean", metrics=metrics, directions=dict(DIRECTIONS),
        records={"probs": probs.astype(np.float32), "called": called, "correct": called == targets,
                 "index": np.arange(n)},
        data={"correct_metrics": [], "multilabel": True},
        config={"n_bootstrap": 100},
    )
    return AuditResult(
        model={"name": name, "fingerprint": f"sha256:{name}", "output_kind": "multilabel",
               "thresholds": th, "threshold_source": "given (--threshold 0.5)"},
        dataset={"fingerprint": fingerprint}, config={"seed": 0, "studies": {"clean": {"n_bootstrap": 100}}},
        environment={}, ids=np.asarray([f"img_{i:03d}" for i in range(n)]),
        labels=np.where(targets.any(axis=1), targets.argmax(axis=1), len(findings)), class_names=list(findings),
        studies={"clean": clean}, schema_version=SCHEMA_VERSION, created="2024-01-01T00:00:00+00:00", targets=targets,
    )


def toy_targets(n: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, len(FINDINGS))) < 0.4


def scores(targets: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Probabilities that rank the targets better the smaller ``noise`` is."""
    rng = np.random.default_rng(seed)
    return 1.0 / (1.0 + np.exp(-(2.0 * targets - 1.0 + noise * rng.standard_normal(targets.shape))))


@pytest.fixture()
def ml_dirs(tmp_path) -> dict[str, Path]:
    """A good model, the same model, and a much noisier one, on the same 120 images."""
    t = toy_targets()
    good = scores(t, 0.6, 1)
    return {
        "base": save_results(ml_audit(good, t, name="base"), tmp_path / "base"),
        "same": save_results(ml_audit(good, t, name="same"), tmp_path / "same"),
        "bad": save_results(ml_audit(scores(t, 2.5, 2), t, name="bad"), tmp_path / "bad"),
    }


def _delta(cmp, metric):
    return next(d for d in cmp.candidates[0].deltas if d.metric == metric)


# ---------------------------------------------------------------- DeLong


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_the_slow_kernel_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(40) < 0.4
    a = np.round(y + rng.normal(0, 0.8, 40), 1)  # rounded: ties within and across classes
    b = np.round(y + rng.normal(0, 1.2, 40), 1)
    got = ML.delong_paired(y, a, b)
    auc_a, auc_b, se, p = slow_delong(y, a, b)
    assert got.auc_a == pytest.approx(auc_a, abs=1e-12) and got.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert got.se == pytest.approx(se, rel=1e-9) and got.p_value == pytest.approx(p, rel=1e-9)


def test_delong_of_identical_models_is_one() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(50) < 0.5
    s = y + rng.normal(0, 1, 50)
    res = ML.delong_paired(y, s, s.copy())
    assert res.delta == 0.0 and res.p_value == 1.0


# ---------------------------------------------------------------- compare on fixture audits


@pytest.fixture(scope="module")
def fixture_audits(toy_multilabel, toy_multilabel_model, tmp_path_factory) -> tuple[AuditResult, AuditResult]:
    """The toy multi-label model and a weaker one (one epoch, another seed), audited (clean and
    perturbation)."""
    from robustkit.runner import audit
    from tests.conftest import train_toy_multilabel

    root = tmp_path_factory.mktemp("mlcompare")
    weak = train_toy_multilabel(toy_multilabel, root / "weak.keras", epochs=1, seed=1)
    opts = {"studies": ["clean", "perturbation"], "quiet": True, "report": False,
            "config": {"clean": {"n_bootstrap": 10},
                       "perturbation": {"n_bootstrap": 10, "transforms": ["jpeg", "rotation"], "severities": [1, 5]}}}
    audit(str(toy_multilabel_model), toy_multilabel, out=root / "a", **opts)
    audit(str(weak), toy_multilabel, out=root / "b", **opts)
    return load_results(root / "a"), load_results(root / "b")


@pytest.mark.slow
def test_fixture_compare_is_delong_and_mcnemar_per_finding(fixture_audits) -> None:
    a, b = fixture_audits
    cmp = compare([a, b], n_boot=200)
    ra, rb = a.records("clean"), b.records("clean")
    row_b = {s: i for i, s in enumerate(np.asarray(b.ids).astype(str)[rb["index"]])}
    order = np.asarray([row_b[s] for s in np.asarray(a.ids).astype(str)[ra["index"]]])
    targets = a.targets[ra["index"]]
    thresholded = ~ML.threshold_split(np.asarray(a.ids).astype(str)[ra["index"]])
    assert str(a.model["threshold_source"]).startswith("chosen") and thresholded.sum() == a.metric("clean.n_thresholded")
    for k, f in enumerate(a.class_names):
        kb = list(b.class_names).index(f)
        d = _delta(cmp, f"clean.auroc.{f}")
        ref = ML.delong_paired(targets[:, k], ra["probs"][:, k], rb["probs"][order, kb])
        assert d.test == "delong" and d.p_value == pytest.approx(ref.p_value, rel=1e-12)
        assert d.delta == pytest.approx(ref.delta, abs=1e-9)
        for root, present in (("sensitivity", True), ("specificity", False)):
            d = _delta(cmp, f"clean.{root}.{f}")
            keep = thresholded & (targets[:, k] == present)
            ca, cb = ra["called"][keep, k] == present, rb["called"][order][keep, kb] == present
            b_, c_ = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
            assert d.test == "mcnemar-exact" and d.discordant == (b_, c_)
            assert d.p_value == pytest.approx(binomtest(b_, b_ + c_, 0.5).pvalue if b_ + c_ else 1.0, rel=1e-9)
        assert _delta(cmp, f"clean.auprc.{f}").test == "paired-bootstrap"
    for m in ("auroc.macro", "auroc.micro", "auprc.micro", "sensitivity.macro"):
        assert _delta(cmp, f"clean.{m}").test == "paired-bootstrap"
    pa, pb = ra["probs"].astype(np.float64), rb["probs"][order].astype(np.float64)
    for m, stat in (("auroc.macro", lambda p: np.mean([roc_auc_score(targets[:, k], p[:, k]) for k in range(3)])),
                    ("auroc.micro", lambda p: roc_auc_score(targets.ravel(), p.ravel())),
                    ("auprc.micro", lambda p: average_precision_score(targets.ravel(), p.ravel()))):
        assert _delta(cmp, f"clean.{m}").delta == pytest.approx(stat(pb) - stat(pa), abs=1e-6), m
    tested = [d for d in cmp.candidates[0].deltas if d.p_value is not None]
    for d, p in zip(tested, holm([d.p_value for d in tested])):
        assert d.p_adjusted == pytest.approx(p)
    assert any(d.verdict == "regression" for d in tested)  # one epoch is worse
    html = comparison_html(cmp)
    assert "Per finding" in html and ">delong<" in html and "DeLong" in html


@pytest.mark.slow
def test_fixture_compare_tests_each_finding_under_each_condition(fixture_audits) -> None:
    """Perturbation: ``auroc.<finding>.<condition>`` by DeLong on the probabilities under that
    condition; the macro AUROC and the drops by the paired bootstrap, reproducing the stored values."""
    a, b = fixture_audits
    cmp = compare([a, b], n_boot=100)
    ra, rb = a.records("perturbation"), b.records("perturbation")
    row_b = {s: i for i, s in enumerate(np.asarray(b.ids).astype(str)[rb["index"]])}
    order = np.asarray([row_b[s] for s in np.asarray(a.ids).astype(str)[ra["index"]]])
    targets = a.targets[ra["index"]]
    conditions = a.studies["perturbation"].data["conditions"]
    assert conditions == ["jpeg.1", "jpeg.5", "rotation.1", "rotation.5"]
    for c, cond in enumerate(conditions):
        for k, f in enumerate(a.class_names):
            d = _delta(cmp, f"perturbation.auroc.{f}.{cond}")
            ref = ML.delong_paired(targets[:, k], ra["probs"][:, c, k], rb["probs"][order, c, k])
            assert d.test == "delong" and d.p_value == pytest.approx(ref.p_value, rel=1e-12)
            assert d.delta == pytest.approx(ref.delta, abs=1e-9)
        for m in (f"auroc.macro.{cond}", f"auroc_drop.macro.{cond}", f"auroc_drop.{a.class_names[0]}.{cond}"):
            d = _delta(cmp, f"perturbation.{m}")
            assert d.test == "paired-bootstrap" and d.p_value is not None and 0.0 <= d.p_value <= 1.0
            assert d.baseline == pytest.approx(a.metric(f"perturbation.{m}"))
        macro_a = np.mean([roc_auc_score(targets[:, k], ra["probs"][:, c, k]) for k in range(3)])
        macro_b = np.mean([roc_auc_score(targets[:, k], rb["probs"][order, c, k]) for k in range(3)])
        assert _delta(cmp, f"perturbation.auroc.macro.{cond}").delta == pytest.approx(macro_b - macro_a, abs=1e-6)


# ---------------------------------------------------------------- compare on built audits


def test_identical_models_are_unchanged_with_delong_p_one(ml_dirs) -> None:
    cmp = compare([ml_dirs["base"], ml_dirs["same"]], n_boot=100, allow_config_mismatch=True)
    for f in FINDINGS:
        d = _delta(cmp, f"clean.auroc.{f}")
        assert d.test == "delong" and d.p_value == 1.0 and d.verdict == "unchanged"
        assert _delta(cmp, f"clean.sensitivity.{f}").discordant == (0, 0)


def test_given_thresholds_mcnemar_counts_every_image(ml_dirs) -> None:
    a, b = load_results(ml_dirs["base"]), load_results(ml_dirs["bad"])
    cmp = compare([a, b], n_boot=100)
    ca, cb = a.records("clean")["called"], b.records("clean")["called"]
    for k, f in enumerate(FINDINGS):
        absent = ~a.targets[:, k]
        d = _delta(cmp, f"clean.specificity.{f}")
        assert d.discordant == (int(np.sum(~ca[absent, k] & cb[absent, k])), int(np.sum(ca[absent, k] & ~cb[absent, k])))
    assert _delta(cmp, "clean.auroc.macro").verdict == "regression"


def _auroc_rows(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC ``(B,)`` of each row of ``(B, n)`` targets and tie-free scores: Mann-Whitney's
    ``(rank sum of the positives - m (m + 1) / 2) / (m n)``."""
    ranks = np.argsort(np.argsort(p, axis=1), axis=1) + 1.0
    m = t.sum(axis=1)
    return ((ranks * t).sum(axis=1) - m * (m + 1) / 2) / (m * (t.shape[1] - m))


def _ap_rows(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision ``(B,)`` of each row (tie-free scores): the mean over the positives of
    the precision among the scores at least as high as theirs."""
    order = np.argsort(-p, axis=1)
    hit = np.take_along_axis(t, order, axis=1).astype(np.float64)
    precision = np.cumsum(hit, axis=1) / np.arange(1, t.shape[1] + 1)
    return (precision * hit).sum(axis=1) / hit.sum(axis=1)


def _macro(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.mean([_auroc_rows(t[:, :, k], p[:, :, k]) for k in range(t.shape[2])], axis=0)


#: metric -> (its value from scikit-learn, the same statistic per resample ``(B, n, K)`` -> ``(B,)``)
PAIRED_STATS = {
    "clean.auroc.macro": (lambda t, p: np.mean([roc_auc_score(t[:, k], p[:, k]) for k in range(t.shape[1])]), _macro),
    "clean.auroc.micro": (lambda t, p: roc_auc_score(t.ravel(), p.ravel()),
                          lambda t, p: _auroc_rows(t.reshape(len(t), -1), p.reshape(len(p), -1))),
    "clean.auprc.Nodule": (lambda t, p: average_precision_score(t[:, 1], p[:, 1]),
                           lambda t, p: _ap_rows(t[:, :, 1], p[:, :, 1])),
}


def _independent_bootstrap(metric: str, a: np.ndarray, b: np.ndarray, t: np.ndarray, *, n_boot: int,
                           seed: int) -> tuple[float, float]:
    """``(delta, p)`` of the metric of ``b`` minus that of ``a``: images resampled with
    replacement (an image keeps its findings and both models' outputs), the two-sided normal
    p-value of the observed difference over the resamples' standard deviation."""
    point, rows = PAIRED_STATS[metric]
    assert len(np.unique(a)) == a.size and len(np.unique(b)) == b.size  # tie-free scores
    i = np.random.default_rng(seed).integers(0, len(t), (n_boot, len(t)))
    diffs = rows(t[i], b[i]) - rows(t[i], a[i])
    delta = float(point(t, b) - point(t, a))
    return delta, float(2 * norm.sf(abs(delta) / np.std(diffs, ddof=1)))


@pytest.fixture(scope="module")
def moderate(tmp_path_factory: pytest.TempPathFactory):
    """A model and a moderately worse one on the same images, and their comparison."""
    t = toy_targets()
    a, b = scores(t, 0.6, 1), scores(t, 0.9, 3)
    root = tmp_path_factory.mktemp("moderate")
    cmp = compare([save_results(ml_audit(a, t, name="a"), root / "a"),
                   save_results(ml_audit(b, t, name="b"), root / "b")], n_boot=3000)
    return cmp, a, b, t


@pytest.mark.parametrize("metric", sorted(PAIRED_STATS))
def test_paired_bootstrap_rows_match_an_independent_bootstrap(metric: str, moderate) -> None:
    """The row's delta equals scikit-learn's difference and its p-value an independent paired
    bootstrap's (other resamples: equal within Monte Carlo noise)."""
    cmp, a, b, t = moderate
    d = _delta(cmp, metric)
    delta, p = _independent_bootstrap(metric, a, b, t, n_boot=3000, seed=7)
    assert d.test == "paired-bootstrap" and d.delta == pytest.approx(delta, abs=1e-9)
    assert 1e-4 < p < 0.2, "choose models whose difference is neither certain nor absent"
    # the z scores |delta| / se agree within the Monte Carlo noise of two 3000-resample se's (about 2 %)
    assert norm.isf(d.p_value / 2) == pytest.approx(norm.isf(p / 2), rel=0.08)


def test_paired_bootstrap_p_is_one_for_identical_audits_and_small_for_a_much_worse_one(ml_dirs) -> None:
    same = compare([ml_dirs["base"], ml_dirs["same"]], n_boot=200, allow_config_mismatch=True)
    worse = compare([ml_dirs["base"], ml_dirs["bad"]], n_boot=200)
    for metric in PAIRED_STATS:
        assert _delta(same, metric).test == "paired-bootstrap" and _delta(same, metric).p_value == 1.0
        assert _delta(same, metric).verdict == "unchanged"
        d = _delta(worse, metric)
        assert d.test == "paired-bootstrap" and d.delta < 0 and d.p_value < 1e-3 and d.verdict == "regression"


# ---------------------------------------------------------------- gate


def test_gate_rule_on_a_finding_with_a_space(ml_dirs) -> None:
    auc = load_results(ml_dirs["bad"]).metric("clean.auroc.Pleural Effusion")
    rule = {"metric": "clean.auroc.Pleural Effusion", "judge": "point"}
    assert gate(ml_dirs["bad"], {"rule": [{**rule, "min": auc - 0.01}]}).exit_code == 0
    report = gate(ml_dirs["bad"], {"rule": [{**rule, "min": auc + 0.01}]})
    assert report.exit_code == 1 and "clean.auroc.Pleural Effusion" in report.rules[0].reason


def test_gate_matches_a_name_with_glob_characters_exactly(ml_dirs) -> None:
    report = gate(ml_dirs["base"], {"rule": [{"metric": "clean.sensitivity.Opacity [left]", "min": 0.0, "judge": "point"}]})
    assert [m.metric for m in report.rules[0].outcomes] == ["clean.sensitivity.Opacity [left]"]


def test_gate_max_drop_against_a_baseline_uses_delong(ml_dirs) -> None:
    rule = {"metric": "clean.auroc.*", "max_drop": 0.02}
    bad = gate(ml_dirs["bad"], {"rule": [rule]}, baseline=ml_dirs["base"], n_boot=100)
    assert bad.exit_code == 1 and "delong" in bad.rules[0].reason
    same = gate(ml_dirs["same"], {"rule": [rule]}, baseline=ml_dirs["base"], n_boot=100, allow_config_mismatch=True)
    assert same.exit_code == 0


def test_gate_unknown_finding_names_the_metric_and_close_names(ml_dirs) -> None:
    with pytest.raises(ConfigError) as err:
        gate(ml_dirs["base"], {"rule": [{"metric": "clean.auroc.Pleural Efusion", "min": 0.5}]})
    msg = str(err.value)
    assert "\n" not in msg and "'clean.auroc.Pleural Efusion'" in msg and "close names: 'clean.auroc.Pleural Effusion'" in msg


# ---------------------------------------------------------------- refusals


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def _swap(audit: AuditResult, **changes) -> AuditResult:
    from dataclasses import replace

    return replace(audit, **changes)


@pytest.mark.parametrize("case", ["single", "findings", "images", "targets", "threshold"])
def test_refusals_are_one_line_exit_2(case, ml_dirs, tmp_path, capsys) -> None:
    base = load_results(ml_dirs["base"])
    t = base.targets
    if case == "single":
        other = make_audit(np.ones(120, dtype=bool), fingerprint="sha256:mldata")
        expected = "expected two multi-label audits or two single-label ones, got a multilabel baseline and a softmax"
    elif case == "findings":
        names = ["Pleural Effusion", "Nodule", "Mass"]
        other = ml_audit(scores(t, 1.0, 5), t, name="o", findings=names, thresholds=dict.fromkeys(names, 0.5))
        expected = "expected the same findings, got ['Opacity [left]'] only in the baseline and ['Mass'] only in the candidate"
    elif case == "images":
        other = _swap(ml_audit(scores(t, 1.0, 5), t, name="o"), ids=np.asarray([f"x_{i}" for i in range(120)]))
        expected = "expected the same sample ids"
    elif case == "targets":
        flipped = t.copy()
        flipped[:2, 0] = ~flipped[:2, 0]
        other = ml_audit(scores(t, 1.0, 5), flipped, name="o")
        expected = "expected the same findings per image, got 2 image(s) whose findings differ, e.g. ['img_000', 'img_001']"
    else:
        other = ml_audit(scores(t, 1.0, 5), t, name="o")
        other.model["thresholds"] = {**other.model["thresholds"], "Nodule": 1.5}
        expected = "The 'model.thresholds.Nodule' parameter of the results.json of 'o' must be a number in (0, 1). Got 1.5 instead."
    other_dir = save_results(other, tmp_path / "o")
    rc, err = _cli(["compare", str(ml_dirs["base"]), str(other_dir), "--out", str(tmp_path / "cmp")], capsys)
    assert rc == 2 and "\n" not in err and expected in err, err
    if case != "single":
        policy = tmp_path / "p.toml"
        policy.write_text('[[rule]]\nmetric = "clean.auroc.Nodule"\nmax_drop = 0.01\n')
        rc, err = _cli(["gate", str(other_dir), "--policy", str(policy), "--baseline", str(ml_dirs["base"])], capsys)
        assert rc == 2 and "\n" not in err, err

