"""compare: exact McNemar and paired bootstrap against independent computations, refusals,
compare.json / compare.html, and no TensorFlow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from robustkit import cli
from robustkit.compare import compare, save_comparison
from robustkit.errors import ConfigError, RobustkitError
from robustkit.metrics.paired import holm, mcnemar_exact, paired_bootstrap
from robustkit.report.compare_render import render_comparison
from robustkit.results import SCHEMA_VERSION, AuditResult, StudyResult, save_results

CLASSES = ["COVID-19", "NORMAL", "Viral Pneumonia"]
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
CONDITIONS = ("blur", "jpeg")
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- builders


def slow_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Reference ECE: a loop over equal-width bins ``(lo, hi]``, 0 in the first (the study's convention)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        inb = [i for i in range(len(conf)) if lo < conf[i] <= hi or (b == 0 and conf[i] == 0.0)]
        if inb:
            total += len(inb) / len(conf) * abs(np.mean(correct[inb]) - np.mean(conf[inb]))
    return total


def make_audit(
    correct: np.ndarray,
    *,
    name: str = "model",
    seed: int = 0,
    fingerprint: str = "sha256:data",
    config: dict | None = None,
    schema: str = SCHEMA_VERSION,
    shuffle: bool = False,
    shift: np.ndarray | None = None,
    conf_shift: float = 0.0,
) -> AuditResult:
    """An audit of len(correct) samples with known per-sample correctness.

    Studies: clean (correct column, pred), perturbation (accuracy.<t>.<s> columns, where
    ``shift`` flips extra samples to wrong), calibration (confidence/correct/split, ece).
    ``shuffle`` stores the samples in another order (pairing must go by id).
    """
    n = len(correct)
    rng = np.random.default_rng(seed)
    ids = np.asarray([f"img_{i:03d}" for i in range(n)])
    labels = np.arange(n) % 3
    order = np.random.default_rng(99).permutation(n) if shuffle else np.arange(n)
    ids, labels, correct = ids[order], labels[order], np.asarray(correct, dtype=bool)[order]
    pred = np.where(correct, labels, (labels + 1) % 3)
    clean = StudyResult(
        name="clean",
        metrics={"accuracy": float(correct.mean()), "n_samples": float(n)},
        directions={"accuracy": "higher", "sensitivity": "higher", "precision": "higher", "n_samples": "none"},
        records={"correct": correct[:, None], "pred": pred.astype(np.int16), "index": np.arange(n)},
        data={"correct_metrics": ["accuracy"]},
        config={"n_bootstrap": 100},
    )
    for k, c in enumerate(CLASSES):
        clean.metrics[f"sensitivity.{c}"] = float(correct[labels == k].mean())
        clean.metrics[f"precision.{c}"] = float((pred[pred == k] == labels[pred == k]).mean())
    cols, names = [], []
    extra = np.zeros(n, dtype=bool) if shift is None else np.asarray(shift, dtype=bool)[order]
    for t in CONDITIONS:
        for s in (1, 2, 3):
            col = correct & ~((rng.random(n) < 0.1 * s) | extra)
            cols.append(col)
            names.append(f"accuracy.{t}.{s}")
    pert = StudyResult(
        name="perturbation",
        metrics={nm: float(c.mean()) for nm, c in zip(names, cols)},
        directions={"accuracy": "higher"},
        records={"correct": np.stack(cols, axis=1), "index": np.arange(n)},
        data={"correct_metrics": names},
    )
    conf = np.clip(np.where(correct, 0.8, 0.6) + rng.normal(0, 0.1, n) + conf_shift, 0.34, 1.0)
    split = (np.arange(n) % 2).astype(np.int8)
    keep = split == 1
    calib = StudyResult(
        name="calibration",
        metrics={"ece": slow_ece(conf[keep], correct[keep].astype(float), 10)},
        directions={"ece": "lower"},
        records={"confidence": conf, "correct": correct[:, None], "split": split, "index": np.arange(n)},
        config={"n_bins": 10},
    )
    cfg = config if config is not None else {"seed": 0, "studies": {"clean": {"n_bootstrap": 100}, "perturbation": {}, "calibration": {"n_bins": 10}}}
    return AuditResult(
        model={"name": name, "fingerprint": f"sha256:{name}"},
        dataset={"fingerprint": fingerprint},
        config=cfg, environment={}, ids=ids, labels=labels, class_names=list(CLASSES),
        studies={"clean": clean, "perturbation": pert, "calibration": calib},
        schema_version=schema, created="2024-01-01T00:00:00+00:00",
    )


def flipped(correct: np.ndarray, k: int, *, to: bool, seed: int = 1) -> np.ndarray:
    """A copy of ``correct`` with k samples whose value is ``not to`` set to ``to``."""
    out = correct.copy()
    pos = np.flatnonzero(out != to)
    out[np.random.default_rng(seed).choice(pos, size=k, replace=False)] = to
    return out


@pytest.fixture()
def base_correct() -> np.ndarray:
    return np.random.default_rng(0).random(300) < 0.85


def _delta(cmp, metric):
    return next(d for d in cmp.candidates[0].deltas if d.metric == metric)


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_matches_scipy_binomtest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    a = rng.random(n) < 0.8
    b = np.where(rng.random(n) < rng.uniform(0.02, 0.3), ~a, a)
    res = mcnemar_exact(a, b)
    nb, nc = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert (res.b, res.c) == (nb, nc)
    if nb + nc:
        assert res.p_value == pytest.approx(binomtest(min(nb, nc), nb + nc, 0.5).pvalue, rel=1e-9, abs=1e-15)
    else:
        assert res.p_value == 1.0


def test_mcnemar_no_discordant_pairs_is_one() -> None:
    x = np.array([True, False, True])
    assert mcnemar_exact(x, x).p_value == 1.0


def test_holm_matches_reference_loop() -> None:
    p = [0.01, 0.04, 0.03, 0.5, float("nan"), 0.001]
    finite = sorted((v, i) for i, v in enumerate(p) if v == v)
    ref = [float("nan")] * len(p)
    running = 0.0
    for rank, (v, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * v))
        ref[i] = running
    got = holm(p)
    assert np.allclose(got, ref, equal_nan=True)


def test_paired_bootstrap_identical_statistics() -> None:
    col = np.random.default_rng(0).random(50)

    def mean(idx):
        return col[idx].mean(axis=1)

    res = paired_bootstrap(mean, mean, 50, n_boot=200, seed=0)
    assert (res.delta, res.low, res.high, res.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_delta_and_interval_cover_the_shift() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 400)
    b = a + 0.5 + rng.normal(0, 0.1, 400)
    res = paired_bootstrap(lambda i: a[i].mean(axis=1), lambda i: b[i].mean(axis=1), 400, n_boot=500, seed=2)
    assert res.delta == pytest.approx(b.mean() - a.mean())
    assert res.low < res.delta < res.high and res.low > 0.4 and res.high < 0.6
    assert res.p_value < 1e-6


# ---------------------------------------------------------------- compare


def test_compare_pairs_by_id_and_matches_binomtest(base_correct) -> None:
    cand_correct = flipped(flipped(base_correct, 12, to=False), 4, to=True, seed=3)
    base = make_audit(base_correct, name="v1")
    cand = make_audit(cand_correct, name="v2", shuffle=True)
    d = _delta(compare([base, cand], correction="none"), "clean.accuracy")
    nb = int(np.sum(base_correct & ~cand_correct))
    nc = int(np.sum(~base_correct & cand_correct))
    assert d.test == "mcnemar-exact" and d.discordant == (nb, nc) and (nb, nc) == (12, 4)
    assert d.p_value == pytest.approx(binomtest(min(nb, nc), nb + nc, 0.5).pvalue)
    assert d.delta == pytest.approx(cand_correct.mean() - base_correct.mean())
    assert d.interval[0] <= d.delta <= d.interval[1]


def test_one_sample_difference_is_not_significant(base_correct) -> None:
    cmp = compare([make_audit(base_correct), make_audit(flipped(base_correct, 1, to=False))])
    d = _delta(cmp, "clean.accuracy")
    assert d.discordant == (1, 0) and d.p_value == 1.0
    assert d.significant is False and d.verdict == "unchanged"


def test_large_difference_is_a_significant_regression_and_improvement(base_correct) -> None:
    worse = flipped(base_correct, 60, to=False)
    cmp = compare([make_audit(base_correct), make_audit(worse), make_audit(base_correct | True)])
    d = next(x for x in cmp.candidates[0].deltas if x.metric == "clean.accuracy")
    assert d.significant and d.verdict == "regression" and d.p_adjusted < 1e-10
    assert "clean.accuracy" in [x.metric for x in cmp.candidates[0].regressions]
    up = next(x for x in cmp.candidates[1].deltas if x.metric == "clean.accuracy")
    assert up.verdict == "improvement"


def test_recall_is_mcnemar_on_the_class_subset(base_correct) -> None:
    worse = base_correct.copy()
    covid = np.flatnonzero((np.arange(300) % 3 == 0) & base_correct)[:30]
    worse[covid] = False
    d = _delta(compare([make_audit(base_correct), make_audit(worse)], correction="none"), "clean.sensitivity.COVID-19")
    assert d.test == "mcnemar-exact" and d.discordant == (30, 0)
    assert d.p_value == pytest.approx(binomtest(0, 30, 0.5).pvalue)
    assert d.verdict == "regression"


def test_recall_under_a_condition_is_mcnemar_on_that_column_and_class(base_correct) -> None:
    audits = [make_audit(base_correct), make_audit(base_correct, shift=np.arange(300) % 5 == 0)]
    for a in audits:
        pert, col = a.studies["perturbation"], a.studies["perturbation"].data["correct_metrics"].index
        for k, c in enumerate(CLASSES):
            name = pert.data["correct_metrics"][0]  # accuracy.<t>.1
            column = pert.records["correct"][:, col(name)]
            pert.metrics[f"sensitivity.{c}.{name.partition('.')[2]}"] = float(column[a.labels == k].mean())
    cond = audits[0].studies["perturbation"].data["correct_metrics"][0].partition(".")[2]
    d = _delta(compare(audits, correction="none"), f"perturbation.sensitivity.COVID-19.{cond}")
    a_col = audits[0].studies["perturbation"].records["correct"][:, 0]
    b_col = audits[1].studies["perturbation"].records["correct"][:, 0]
    covid = audits[0].labels == 0  # both audits store the samples in the same order here
    b, c = int(np.sum(a_col[covid] & ~b_col[covid])), int(np.sum(~a_col[covid] & b_col[covid]))
    assert d.test == "mcnemar-exact" and d.discordant == (b, c) and b > 0
    assert d.p_value == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue)


def test_other_metrics_get_a_paired_bootstrap_or_not_testable(base_correct) -> None:
    base = make_audit(base_correct)
    cand = make_audit(base_correct, conf_shift=-0.25)
    cmp = compare([base, cand], n_boot=300)
    ece = _delta(cmp, "calibration.ece")
    assert ece.test == "paired-bootstrap" and ece.interval is not None
    assert ece.verdict == "regression"  # under-confident: ECE up, lower is better
    prec = _delta(cmp, "clean.precision.NORMAL")
    assert prec.test == "paired-bootstrap" and prec.delta == 0.0 and prec.verdict == "unchanged"
    assert _delta(cmp, "clean.n_samples").verdict == "not testable"
    # a stored value the records do not reproduce is not tested
    cand.studies["calibration"].metrics["ece"] += 0.01
    d = _delta(compare([base, cand], n_boot=50), "calibration.ece")
    assert d.verdict == "not testable" and "recompute" in d.note and d.significant is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"fingerprint": "sha256:other"}, "fingerprint"),
        ({"schema": "1.1"}, "schema version 2.x, got '1.1'; re-audit"),
        ({"config": {"seed": 0, "studies": {"clean": {"n_bootstrap": 999}, "perturbation": {}, "calibration": {"n_bins": 10}}}},
         "studies.clean.n_bootstrap"),
        ({"config": {"seed": 7, "studies": {}}}, "seed"),
    ],
)
def test_refused_comparisons_name_what_differs(base_correct, change, expected) -> None:
    with pytest.raises(RobustkitError, match=re.escape(expected)):
        compare([make_audit(base_correct), make_audit(base_correct, **change)])


def test_refused_when_sample_ids_differ(base_correct) -> None:
    other = make_audit(base_correct)
    other.ids = np.asarray([f"x_{i}" for i in range(len(other.ids))])
    with pytest.raises(ConfigError, match="sample ids"):
        compare([make_audit(base_correct), other])


def test_config_mismatch_allowed_and_stated(base_correct, tmp_path) -> None:
    cfg = {"seed": 0, "studies": {"clean": {"n_bootstrap": 999}, "perturbation": {}, "calibration": {"n_bins": 10}}}
    cmp = compare([make_audit(base_correct), make_audit(base_correct, config=cfg)], allow_config_mismatch=True)
    assert cmp.candidates[0].config_mismatches == ["studies.clean.n_bootstrap (100 vs 999)"]
    html = render_comparison(cmp, tmp_path).read_text()
    assert "different seeds or study configs" in html and "studies.clean.n_bootstrap" in html


# ---------------------------------------------------------------- outputs


def _parser_with_commands(monkeypatch) -> None:
    """cli.py wires compare and gate itself (their handlers live there)."""
    have = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"compare", "gate"} <= set(have)


def test_cli_writes_compare_json_and_safe_html(base_correct, tmp_path, monkeypatch, capsys) -> None:
    _parser_with_commands(monkeypatch)
    a = save_results(make_audit(base_correct, name=HOSTILE), tmp_path / "v1")
    b = save_results(make_audit(flipped(base_correct, 60, to=False), shift=np.arange(300) < 40), tmp_path / HOSTILE.replace("/", "_"))
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b), "--out", str(out), "--n-boot", "100"]) == 0
    obj = json.loads((out / "compare.json").read_text())
    m = obj["candidates"][0]["metrics"]["clean.accuracy"]
    assert set(m) >= {"baseline", "candidate", "delta", "interval", "test", "p_value", "significant", "verdict"}
    assert m["verdict"] == "regression" and m["test"] == "mcnemar-exact"
    assert obj["baseline"]["model"]["fingerprint"].endswith(HOSTILE)
    html = (out / "compare.html").read_text()
    assert '<meta http-equiv="Content-Security-Policy"' in html
    assert "<script" not in html.lower() and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;" in html
    for attr in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert attr.startswith(("#", "data:")), attr
    assert 'class="verdict-regression"' in html and "<svg" in html
    assert "perturbation: mean accuracy" in html and "reliability diagram" in html
    assert "How to read this comparison" in html


def test_cli_compare_refusal_exits_2(base_correct, tmp_path, monkeypatch, capsys) -> None:
    _parser_with_commands(monkeypatch)
    a = save_results(make_audit(base_correct), tmp_path / "a")
    b = save_results(make_audit(base_correct, fingerprint="sha256:zzz"), tmp_path / "b")
    assert cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    assert "dataset fingerprints" in capsys.readouterr().err
    assert cli.main(["compare", str(a), "--out", str(tmp_path / "o")]) == 2


def test_save_comparison_round_trips_without_nan(base_correct, tmp_path) -> None:
    base = make_audit(base_correct)
    base.studies["clean"].metrics["n_samples"] = float("nan")
    path = save_comparison(compare([base, make_audit(base_correct)], n_boot=50), tmp_path)
    obj = json.loads(path.read_text())
    assert obj["candidates"][0]["metrics"]["clean.n_samples"]["baseline"] is None


def test_compare_and_gate_do_not_import_tensorflow(base_correct, tmp_path) -> None:
    a = save_results(make_audit(base_correct), tmp_path / "a")
    b = save_results(make_audit(flipped(base_correct, 5, to=False)), tmp_path / "b")
    code = (
        "import sys\n"
        "from robustkit.compare import compare, save_comparison\n"
        "from robustkit.gate import gate\n"
        "from robustkit.report.compare_render import render_comparison\n"
        f"c = compare([{str(a)!r}, {str(b)!r}], n_boot=50)\n"
        f"save_comparison(c, {str(tmp_path)!r}); render_comparison(c, {str(tmp_path)!r})\n"
        f"r = gate({str(b)!r}, {{'judge': 'point', 'rule': [{{'metric': 'clean.accuracy', 'min': 0.5, 'max_drop': 0.1}}]}}, baseline={str(a)!r})\n"
        "assert r.exit_code == 0\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_single_label_class_auroc_is_paired_by_delong_as_a_finding_is(base_correct) -> None:
    """One path for every task kind: ``clean.auroc.<class>`` of two softmax audits gets DeLong on
    the class against the rest (the O(mn) reference), ``clean.auroc.macro`` the paired bootstrap."""
    from robustkit.metrics.classification import roc_auc_ovr
    from tests.test_multilabel_compare import slow_delong

    rng = np.random.default_rng(3)
    audits = []
    for shift in (1.5, 0.4):  # the second model separates the classes less well
        a = make_audit(base_correct)
        y = np.asarray(a.labels)
        logits = rng.normal(size=(len(y), 3)) + shift * np.eye(3)[y]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        aucs = roc_auc_ovr(y, probs)
        a.studies["clean"].records["probs"] = probs
        a.studies["clean"].metrics.update({f"auroc.{c}": float(v) for c, v in zip(CLASSES, aucs)},
                                          **{"auroc.macro": float(np.mean(aucs))})
        a.studies["clean"].directions["auroc"] = "higher"
        audits.append((a, y, probs))
    cmp = compare([audits[0][0], audits[1][0]], correction="none", n_boot=200)
    for k, c in enumerate(CLASSES):
        d = _delta(cmp, f"clean.auroc.{c}")
        y = audits[0][1] == k
        _, _, _, p = slow_delong(y, audits[0][2][:, k], audits[1][2][:, k])
        assert d.test == "delong" and d.p_value == pytest.approx(p, rel=1e-6), c
    macro = _delta(cmp, "clean.auroc.macro")
    assert macro.test == "paired-bootstrap" and macro.delta < 0 and macro.p_value is not None
