"""Named mutations over the pure modules: does the test suite notice a deliberate fault?

Each mutation replaces one exact snippet of a source file (it must occur exactly once, so
a stale mutation is an error, not a silent "survived"; ``tests/test_mutation_list.py`` checks
that in the default test run), runs a fast test selection in a
scratch copy of the repository, and counts the mutant killed when the tests fail. The
working tree is never touched. Run on demand, not in the default CI run::

    .venv/bin/python .ci/mutation.py                  # the pure modules (a few minutes)
    .venv/bin/python .ci/mutation.py --group faults   # the faults of issue #13 (TensorFlow, slower)
    .venv/bin/python .ci/mutation.py -k gate          # mutations whose name contains "gate"
    .venv/bin/python .ci/mutation.py --list

mutmut 3 was tried first (pyproject's ``[tool.mutmut]`` over the same modules): it generates
thousands of mutants and re-runs a test selection per mutant, hours of CPU on a 2-core
machine; these named mutations are the faults that matter, a few seconds each.
Exit code 0 when every mutant is killed or listed in ``HARMLESS``, else 1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NEW = "tests/test_bite_pure.py"  # issue #13's tests; --without-new leaves them out (the "before" score)
GATE_TESTS = ("tests/test_gate.py", "tests/test_judge.py", NEW)
COMPARE_TESTS = ("tests/test_compare.py", "tests/test_metrics_home.py", "tests/test_gate.py", NEW)
CALIBRATION_TESTS = ("tests/test_metrics_home.py", "tests/test_compare.py", *(f"tests/test_calibration.py::{t}" for t in (
    "test_ece_and_mce_known_answer_with_confidence_one_an_edge_and_empty_bins", "test_ece_and_mce_match_a_slow_loop",
    "test_bin_assignment_of_zero_edges_and_one", "test_classwise_ece_matches_a_loop_with_zero_and_one_probabilities",
    "test_brier_and_nll_match_scikit_learn", "test_aurc_and_e_aurc_match_a_direct_computation",
    "test_coverage_at_risk_and_sensitivity_match_a_loop", "test_referral_keeps_the_most_confident",
    "test_wilson_interval_known_value")), NEW)
TRANSFORM_TESTS = ("tests/test_transforms.py", NEW)


@dataclass(frozen=True)
class Mutation:
    """One named fault: ``old`` (exactly once in ``path``) becomes ``new``."""

    name: str
    path: str
    old: str
    new: str
    group: str = "pure"
    tests: tuple[str, ...] = ()


_TESTS_OF = {"robustkit/gate.py": GATE_TESTS, "robustkit/judge.py": GATE_TESTS, "robustkit/policy.py": GATE_TESTS, "robustkit/compare.py": COMPARE_TESTS,
             "robustkit/metrics/paired.py": COMPARE_TESTS,
             "robustkit/metrics/paired_statistics.py": COMPARE_TESTS, "robustkit/metrics/calibration.py": CALIBRATION_TESTS,
             "robustkit/metrics/selective.py": CALIBRATION_TESTS,
             "robustkit/data/transforms.py": TRANSFORM_TESTS}


def _m(name: str, path: str, old: str, new: str, **kw: object) -> Mutation:
    kw.setdefault("tests", _TESTS_OF.get(path, ()))
    return Mutation(name, path, old, new, **kw)  # type: ignore[arg-type]


J, R = "robustkit/judge.py", "robustkit/metrics/resampling.py"
G, C, P, K, T = ("robustkit/gate.py", "robustkit/compare.py", "robustkit/metrics/paired.py",
                 "robustkit/metrics/calibration.py", "robustkit/data/transforms.py")
SEL = "robustkit/metrics/selective.py"
PS = "robustkit/metrics/paired_statistics.py"

MUTATIONS: tuple[Mutation, ...] = (
    # gate
    _m("gate: NaN metric passes", J, 'return "point", value, "FAIL", "the value is not a finite number"',
       'return "point", value, "PASS", "the value is not a finite number"'),
    _m("gate: min is strict", J, "holds = (lambda v: v >= threshold)", "holds = (lambda v: v > threshold)"),
    _m("gate: max ignored", J, 'else (lambda v: v <= threshold)', 'else (lambda v: v <= threshold + 1e9)'),
    _m("gate: drop direction inverted", J, 'drop = (-d.delta if d.direction == "higher" else d.delta)',
       'drop = (d.delta if d.direction == "higher" else -d.delta)'),
    _m("gate: lower-is-better drop ignored", J, 'drop = (-d.delta if d.direction == "higher" else d.delta)',
       "drop = (-d.delta)"),
    _m("gate: alpha fixed at 0.05", J, "    elif p < alpha:", "    elif p < 0.05:"),
    _m("gate: policy alpha dropped", "robustkit/policy.py", "float(alpha), source, judge)", "0.05, source, judge)"),
    _m("gate: untestable drop passes", J,
       'status, reason = "FAIL", f"{said}: dropped by more than {margin:g} and no paired test applies"',
       'status, reason = "PASS", f"{said}: dropped by more than {margin:g} and no paired test applies"'),
    _m("gate: no Holm over the rule", J, 'deltas = paired_deltas(base, audit, names, alpha=pol.alpha, correction="holm"',
       'deltas = paired_deltas(base, audit, names, alpha=pol.alpha, correction="none"'),
    _m("gate: a rule passes when any metric holds", J, 'return "FAIL" if "FAIL" in statuses else',
       'return "FAIL" if statuses == {"FAIL"} else'),
    # compare
    _m("compare: Holm ignored", C, 'p_adj = holm(p_raw) if correction == "holm" else p_raw', "p_adj = p_raw"),
    _m("compare: delta sign", C, "delta=vb - va", "delta=va - vb"),
    _m("compare: McNemar over all samples for a recall", PS, "mcnemar_exact(col_a[0][m], col_b[0][m])",
       "mcnemar_exact(col_a[0], col_b[0])"),
    _m("compare: interval level fixed", C, "level=1 - alpha)", "level=0.95)"),
    _m("compare: seed mismatch accepted", C, 'out = [] if a.get("seed") == b.get("seed") else',
       'out = [] if True else'),
    # paired statistics
    _m("paired: McNemar one-sided", P, "2.0 * binom.cdf(min(b, c), n, 0.5)", "binom.cdf(min(b, c), n, 0.5)"),
    _m("paired: McNemar chi-square", P, "p = float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))",
       "from scipy.stats import chi2; p = float(chi2.sf((b - c) ** 2 / n, 1))"),
    _m("paired: Holm becomes Bonferroni", P, "(m - np.arange(m)) * p[order]", "m * p[order]"),
    _m("paired: Holm not monotone", P, "np.maximum.accumulate((m - np.arange(m)) * p[order])",
       "(m - np.arange(m)) * p[order]"),
    _m("paired: bootstrap interval one-tailed level", R, "    alpha = (1.0 - level) / 2.0\n    low, high = np.quantile(ok",
       "    alpha = 1.0 - level\n    low, high = np.quantile(ok", tests=COMPARE_TESTS),
    _m("paired: bootstrap delta sign", R, "delta = float(np.asarray(second(ident))[0] - np.asarray(first(ident))[0])",
       "delta = float(np.asarray(first(ident))[0] - np.asarray(second(ident))[0])", tests=COMPARE_TESTS),
    _m("paired: bootstrap se with ddof 0", R, "np.std(diffs, ddof=1)", "np.std(diffs, ddof=0)", tests=COMPARE_TESTS),
    _m("paired: precision computed as recall", PS, "_masked_mean(pr.labels == cls, predicted)",
       "_masked_mean(predicted, pr.labels == cls)"),
    _m("paired: ECE subset is the fit half", PS, '("split", 1)', '("split", 0)'),
    _m("paired: resampling ignores the seed", R, "np.random.default_rng(seed).integers(0, max(n, 1)",
       "np.random.default_rng(0).integers(0, max(n, 1)", tests=COMPARE_TESTS),
    _m("paired: compare's ECE in the other bin convention", PS, "bins, gap = ece_update(conf, corr, n_bins=n_bins)",
       "bins, gap = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1), corr - conf"),
    # calibration
    _m("calibration: ECE bins left-closed", K, 'side="left") - 1', 'side="right") - 1'),
    _m("calibration: ECE ignores keep weights in n", K,
       "n_bins)).sum(axis=1) / n, np.nan)", "n_bins)).sum(axis=1) / rows.shape[1], np.nan)"),
    _m("calibration: Wilson at 90 %", K, "z: float = 1.959964", "z: float = 1.644854"),
    _m("calibration: referral rounds down", SEL, "np.floor(fraction * len(conf) + 0.5)", "np.floor(fraction * len(conf))"),
    _m("calibration: referral keeps the least confident", SEL, 'kept = np.argsort(-conf, kind="mergesort")',
       'kept = np.argsort(conf, kind="mergesort")'),
    _m("calibration: Brier as L1", K, "np.sum((p - onehot) ** 2, axis=1)", "np.sum(np.abs(p - onehot), axis=1)"),
    _m("calibration: AURC averages coverage", SEL, "np.mean(risk_coverage(conf, correct)[1])",
       "np.mean(risk_coverage(conf, correct)[0])"),
    _m("calibration: coverage at risk strict", SEL, "ok = wrong[ends] / k <= target + 1e-12",
       "ok = wrong[ends] / k < target - 1e-12"),
    # transforms: severity tables as cited
    _m("transforms: gaussian severity 3 sigma 0.12 -> 0.15", T, "(0.04, 0.08, 0.12, 0.18, 0.26)",
       "(0.04, 0.08, 0.15, 0.18, 0.26)"),
    _m("transforms: JPEG severities 4 and 5 swapped", T, "(50, 30, 15, 10, 7)", "(50, 30, 15, 7, 10)"),
    _m("transforms: poisson severity 3", T, "(60, 25, 18, 10, 5)", "(60, 25, 12, 10, 5)"),
    _m("transforms: speckle severity 3", T, "(0.05, 0.15, 0.2, 0.35, 0.45)", "(0.05, 0.15, 0.25, 0.35, 0.45)"),
    _m("transforms: salt and pepper at half the share", T, "u < amount / 2", "u < amount / 4"),
    _m("transforms: rotation 4 and 5 swapped", T, "(5, 10, 15, 20, 25)", "(5, 10, 15, 25, 20)"),
    _m("transforms: blur sigma severity 3", T, "(0.8, 1.1, 1.4, 1.7, 2.3)", "(0.8, 1.1, 1.5, 1.7, 2.3)"),
    _m("transforms: exposure severity 5", T, "(0.9, 0.8, 0.7, 0.6, 0.5)", "(0.9, 0.8, 0.7, 0.6, 0.45)"),
    _m("transforms: reference side 256", T, "REFERENCE_SIDE = 224", "REFERENCE_SIDE = 256"),
    # the faults of issue #13 that live outside the pure modules (TensorFlow; slower)
    _m("attacks: L2 PGD projects onto the sphere", "robustkit/model/attack_loop.py",
       "factor = tf.minimum(1.0, eps / tf.maximum(_l2_norms(delta), 1e-12))",
       "factor = eps / tf.maximum(_l2_norms(delta), 1e-12)", group="faults",
       tests=("tests/test_attacks.py", "tests/test_bite_attacks.py")),
    _m("attacks: PGD descends", "robustkit/model/attack_loop.py", "x = x + _bcast(alpha) * normalize(g)",
       "x = x - _bcast(alpha) * normalize(g)", group="faults",
       tests=("tests/test_attacks.py", "tests/test_bite_attacks.py")),
    _m("explainer: randomisation a no-op", "robustkit/model/explainers.py",
       "                randomize_weights(layers, _group_rng(seed, label))\n", "", group="faults",
       tests=("tests/test_saliency.py::test_randomization_makes_maps_dissimilar_and_weights_come_back",
              "tests/test_bite_studies.py::test_saliency_checks_pass_on_the_healthy_toy_model")),
    _m("saliency study: model randomisation skipped", "robustkit/studies/saliency/map.py",
       'with ex.randomized(seed=seed, steps=cfg.randomization_steps, cascade=variant == "cascading") as steps:',
       'with __import__("contextlib").nullcontext(labels) as steps:', group="faults",
       tests=("tests/test_bite_studies.py::test_saliency_checks_pass_on_the_healthy_toy_model",)),
    # issue #28: attacks (apgd, fab, square)
    # (TensorFlow; the new tests of tests/test_bite_attacks_round2.py, about 15 s, and for APGD the
    # step-for-step comparison with the NumPy reference; select them with --group faults -k "#28")
    *(_m(f"#28 {name}", f"robustkit/model/{path}", old, new, group="faults",
         tests=("tests/test_bite_attacks_round2.py",) + (
             ("tests/test_apgd.py::test_apgd_follows_the_papers_algorithm_step_for_step",) if path == "apgd.py" else ()))
      for name, path, old, new in (
        ("apgd: step-size checkpoints one iteration late", "apgd.py", "ck = is_ck[i + 1]",
         "ck = is_ck[i]"),
        ("apgd: step-size checkpoints one iteration early", "apgd.py", "ck = is_ck[i + 1]",
         "ck = is_ck[tf.minimum(i + 2, steps)]"),
        ("apgd: first step eps, not 2 eps", "apgd.py", "return (2.0 * eps).astype(np.float32)",
         "return (1.0 * eps).astype(np.float32)"),
        ("apgd: condition (b) dropped", "apgd.py",
         "tf.logical_or(count < RHO * gap[i + 1], stalled)", "count < RHO * gap[i + 1]"),
        ("apgd: condition (a) counts since the start", "apgd.py",
         "count = tf.where(ck, tf.zeros_like(count), count)", "count = count"),
        ("apgd: no restart from the best point", "apgd.py",
         "x, f, g = tf.where(_bcast(halve), x_max, x), tf.where(halve, f_max, f), tf.where(_bcast(halve), g_max, g)",
         "x, f, g = x, f, g"),
        ("apgd: momentum 0.5", "apgd.py", "MOMENTUM = 0.75", "MOMENTUM = 0.5"),
        ("apgd: step descends", "apgd.py", "step = into_ball(x0, x + _bcast(eta) * normalize(g), eps)",
         "step = into_ball(x0, x - _bcast(eta) * normalize(g), eps)"),
        ("apgd: box clip dropped", "apgd.py",
         "return tf.clip_by_value(x0 + project(v - x0, eps), 0.0, 1.0)", "return x0 + project(v - x0, eps)"),
        ("apgd: ball projection dropped", "apgd.py",
         "return tf.clip_by_value(x0 + project(v - x0, eps), 0.0, 1.0)", "return tf.clip_by_value(v, 0.0, 1.0)"),
        ("fab: [0, 1] clip of the new point dropped", "fab.py",
         "return np.clip(new, 0.0, 1.0).astype(np.float32)", "return new.astype(np.float32)"),
        ("fab: random start leaves the box", "fab.py",
         "return np.clip(x0 + step, 0.0, 1.0).astype(np.float32)", "return (x0 + step).astype(np.float32)"),
        ("fab: backward step overshoots the iterate", "fab.py",
         "x[back] = (x0[back] + self.beta * (x[back] - x0[back]))", "x[back] = (x0[back] + 1.2 * (x[back] - x0[back]))"),
        ("fab: success not bounded by eps", "fab.py", "success = found.size <= eps",
         "success = np.isfinite(found.size)"),
        ("fab: unbroken sample returns its closest find", "fab.py",
         "adv = np.where(success[:, None, None, None], found.adv, np.asarray(x, np.float32))", "adv = found.adv"),
        ("square: window schedule read one query late", "square.py",
         "p_selection(self.p_init, q - 1, self.queries)", "p_selection(self.p_init, q - 2, self.queries)"),
        ("square: window schedule read one query early", "square.py",
         "p_selection(self.p_init, q - 1, self.queries)", "p_selection(self.p_init, q, self.queries)"),
        ("square: accepts worse proposals", "square.py", "better = m_new < margin[todo]",
         "better = m_new > margin[todo]"),
        ("square linf: proposal clip dropped", "square.py",
         "patch = np.clip(x0[win] + signs, 0.0, 1.0)", "patch = x0[win] + signs"),
        ("square linf: stripes start clip dropped", "square.py",
         "return np.clip(x0 + (eps * rng.choice([-1.0, 1.0], size=(1, w, c))).astype(np.float32), 0.0, 1.0)",
         "return x0 + (eps * rng.choice([-1.0, 1.0], size=(1, w, c))).astype(np.float32)"),
        ("square linf: window at 2 eps", "square.py", "signs = rng.choice([-eps, eps], size=(1, 1, c))",
         "signs = rng.choice([-2 * eps, 2 * eps], size=(1, 1, c))"),
        ("square l2: proposal clip dropped", "square.py",
         "delta[win1] = new\n        return np.clip(x0 + eps * delta / max(float(np.linalg.norm(delta)), 1e-12), 0.0, 1.0)",
         "delta[win1] = new\n        return x0 + eps * delta / max(float(np.linalg.norm(delta)), 1e-12)"),
        ("square l2: proposal scaled to 1.5 eps", "square.py",
         "delta[win1] = new\n        return np.clip(x0 + eps * delta", "delta[win1] = new\n        return np.clip(x0 + 1.5 * eps * delta"),
        ("square l2: proposal not rescaled to eps", "square.py",
         "delta[win1] = new\n        return np.clip(x0 + eps * delta / max(float(np.linalg.norm(delta)), 1e-12), 0.0, 1.0)",
         "delta[win1] = new\n        return np.clip(x0 + delta, 0.0, 1.0)"),
    )),
    # issue #28: ood, slices, multilabel, classification, outputs, calibration
    _m("ood: ViM alpha from the log-sum-exp", "robustkit/metrics/ood.py",
       "alpha = float(np.asarray(logits, dtype=np.float64).max(axis=1).mean()", "alpha = float(_logsumexp(logits).mean()",
       tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: ViM origin sign", "robustkit/metrics/ood.py", "origin = -np.linalg.pinv(", "origin = np.linalg.pinv(",
       tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: ViM principal space from the smallest directions", "robustkit/metrics/ood.py", "basis = vt[:dim].T",
       "basis = vt[-dim:].T", tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: FPR@95 threshold keeps floor(0.95 n)", "robustkit/metrics/ood_detection.py",
       "s[max(0, math.ceil(tpr_level * len(s) - 1e-9) - 1)]", "s[max(0, math.floor(tpr_level * len(s)) - 1)]",
       tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: AUROC ties count fully", "robustkit/metrics/ranking.py", "is_end[:, :-1] = ss[:, :-1] != ss[:, 1:]",
       "is_end[:, :-1] = True", tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: AUPR-out without negating the score", "robustkit/metrics/ood_detection.py",
       "out = _batch_metrics(-scores, ~is_id)", "out = _batch_metrics(scores, ~is_id)",
       tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: FPR at 90% TPR", "robustkit/metrics/ranking.py", "c.tps / c.positives[:, None] >= level - 1e-12",
       "c.tps / c.positives[:, None] >= level - 0.05 - 1e-12", tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: KNN (k+1)-th neighbour", "robustkit/metrics/ood.py",
       "kth = np.partition(padded, width - k, axis=1)[:, width - k]",
       "kth = np.partition(padded, max(width - k - 1, 0), axis=1)[:, max(width - k - 1, 0)]",
       tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: Mahalanobis total instead of within-class covariance", "robustkit/metrics/ood.py",
       "centred = f - means[y]", "centred = f - f.mean(axis=0)",
       tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: shrinkage towards the identity", "robustkit/metrics/ood.py",
       "scale = max(float(np.trace(cov)) / cov.shape[0], 1e-12)", "scale = 1.0",
       tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: ReAct clips from below", "robustkit/metrics/ood.py",
       "f = np.minimum(np.asarray(features, dtype=np.float64), clip)",
       "f = np.maximum(np.asarray(features, dtype=np.float64), clip)",
       tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py")),
    _m("ood: JointEnergy as a sum of ReLUs", "robustkit/metrics/ood.py", "np.logaddexp(0.0, np.asarray(logits",
       "np.maximum(0.0, np.asarray(logits", tests=("tests/test_ood_metrics.py", "tests/test_bite_ood.py",
       "tests/test_multilabel_slices_ood.py::test_multilabel_score_forms")),
    _m("ood study: ViM recommended with a negative alpha", "robustkit/studies/ood_reduce.py",
       "return vim is not None and vim.alpha > 0", "return vim is not None", tests=("tests/test_bite_ood.py",)),
    _m("ood study: mahalanobis_shrinkage ignored", "robustkit/studies/ood_reduce.py",
       "shrinkage = cfg.mahalanobis_shrinkage", "shrinkage = 0.01", tests=("tests/test_bite_ood.py",)),
    _m("ood study: no ViM warning", "robustkit/studies/ood_reduce.py", "    checks = _vim_check(vim)\n",
       "    checks = []\n", tests=("tests/test_bite_ood.py",)),
    _m("slices: Fisher one-sided", "robustkit/metrics/slices.py", "fisher_exact([[a, b], [c, d]]).pvalue",
       'fisher_exact([[a, b], [c, d]], alternative="less").pvalue', tests=("tests/test_slices.py", "tests/test_bite_ood.py")),
    _m("slices: gap sign", "robustkit/metrics/slices.py", "gap = a / max(a + b, 1) - c / max(c + d, 1)",
       "gap = c / max(c + d, 1) - a / max(a + b, 1)", tests=("tests/test_slices.py", "tests/test_bite_ood.py")),
    _m("slices: specificity among the positives", "robustkit/metrics/slices.py", "_rates(~said[rows], ~pos[rows])",
       "_rates(~said[rows], pos[rows])", tests=("tests/test_slices.py", "tests/test_bite_ood.py")),
    _m("slices: complement size not checked", "robustkit/metrics/slices.py",
       "if mask.sum() >= min_size and n - mask.sum() >= min_size:", "if mask.sum() >= min_size:",
       tests=("tests/test_slices.py", "tests/test_bite_ood.py")),
    _m("slices: Cramer's V over the larger dimension", "robustkit/metrics/slices.py", "k = min(table.shape) - 1",
       "k = max(table.shape) - 1", tests=("tests/test_slices.py", "tests/test_bite_ood.py")),
    _m("slices: interval one-tailed", "robustkit/metrics/slices.py",
       "    alpha = (1.0 - level) / 2.0\n    for s, (_, intervals) in enumerate(out):",
       "    alpha = 1.0 - level\n    for s, (_, intervals) in enumerate(out):", tests=("tests/test_slices.py", "tests/test_bite_ood.py")),
    _m("multilabel: AP by trapezoids", "robustkit/metrics/ranking.py",
       "(c.tps - c.at_prev_end(c.tps)) * precision).sum(axis=1)",
       "(c.tps - c.at_prev_end(c.tps)) * (precision + c.at_prev_end(precision)) / 2).sum(axis=1)",
       tests=(ML_TESTS := ("tests/test_bite_metrics.py", *(f"tests/test_multilabel.py::{t}" for t in (
           "test_per_finding_metrics_equal_scikit_learn", "test_youden_threshold_maximises_j_like_a_slow_search",
           "test_delong_equals_the_slow_kernel_form")), *(f"tests/test_multilabel_compare.py::{t}" for t in (
           "test_delong_matches_the_slow_kernel_reference", "test_delong_of_identical_models_is_one",
           "test_paired_bootstrap_rows_match_an_independent_bootstrap",
           "test_paired_bootstrap_p_is_one_for_identical_audits_and_small_for_a_much_worse_one",
           "test_identical_models_are_unchanged_with_delong_p_one",
           "test_given_thresholds_mcnemar_counts_every_image"))))),
    _m("multilabel: Youden ties to the lowest threshold", "robustkit/metrics/multilabel.py",
       "best = int(np.argmax(j))", "best = int(len(j) - 1 - np.argmax(j[::-1]))", tests=ML_TESTS),
    _m("multilabel: strict call threshold", "robustkit/metrics/multilabel.py",
       "called = np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]",
       "called = np.asarray(probs) > np.asarray(thresholds, dtype=np.float64)[None, :]", tests=ML_TESTS),
    _m("multilabel: DeLong one-sided", "robustkit/metrics/multilabel.py", "p = float(2 * stats.norm.sf(abs(delta) / se))",
       "p = float(stats.norm.sf(abs(delta) / se))", tests=ML_TESTS),
    _m("multilabel: macro counts undefined findings as 0", "robustkit/metrics/average.py",
       "count = finite.sum(axis=axis)", "count = np.ones_like(finite).sum(axis=axis)", tests=ML_TESTS),
    _m("classification: AUC ties at the lowest rank", "robustkit/metrics/ranking.py",
       "is_end[:, :-1] = ss[:, :-1] != ss[:, 1:]", "is_end[:, :-1] = True",
       tests=(CL_TESTS := ("tests/test_bite_metrics.py", "tests/test_metrics_home.py", "tests/test_ood_metrics.py", NEW,
                           "tests/test_multilabel.py::test_per_finding_metrics_equal_scikit_learn"))),
    _m("classification: specificity from the row sums", "robustkit/metrics/decisions.py",
       "fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp", "fp, fn = cm.sum(axis=1) - tp, cm.sum(axis=1) - tp",
       tests=CL_TESTS),
    _m("classification: F1 without the factor 2", "robustkit/metrics/decisions.py",
       "f1 = 2 * precision * sensitivity / (precision + sensitivity)",
       "f1 = precision * sensitivity / (precision + sensitivity)", tests=CL_TESTS),
    _m("classification: bootstrap interval one-tailed", R, "    alpha = (1.0 - level) / 2.0\n    finite",
       "    alpha = 1.0 - level\n    finite", tests=CL_TESTS),
    _m("classification: strata ignored", R, "    if strata is None:\n        return rng.integers(0, n, size=(n_boot, n))",
       "    if True:\n        return rng.integers(0, n, size=(n_boot, n))", tests=CL_TESTS),
    _m("outputs: sigmoid ignores the temperature", "robustkit/metrics/outputs.py",
       "expit(np.asarray(logits, dtype=np.float64) / float(temperature))", "expit(np.asarray(logits, dtype=np.float64))",
       tests=("tests/test_bite_metrics.py", "tests/test_output_kinds.py")),
    _m("temperature: binary NLL gradient sign", "robustkit/metrics/temperature.py", "grad = float(-np.mean(",
       "grad = float(np.mean(", tests=("tests/test_bite_metrics.py", "tests/test_output_kinds.py")),
    _m("outputs: binary NLL without the softplus", "robustkit/metrics/outputs.py",
       "return np.sum(np.logaddexp(0.0, u) - t * u, axis=1)", "return np.sum(np.maximum(0.0, u) - t * u, axis=1)",
       tests=("tests/test_bite_metrics.py", "tests/test_output_kinds.py")),
    _m("calibration study: temperature fitted on the evaluation half", "robustkit/studies/calibration.py",
       "fit = fit_temperature(logits[cal], targets[cal], kind)", "fit = fit_temperature(logits[ev], targets[ev], kind)",
       group="faults", tests=("tests/test_calibration.py", "tests/test_calibration_split.py")),
    # issue #28: ray engine
    _m("ray engine: a batch delivered twice is kept twice (the stream's de-duplication removed)",
       "robustkit/engines/ray_engine.py",
       "                if sig in seen:  # a retried batch that also finished the first time\n                    continue\n",
       "", group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a batch present twice is merged twice (the reduce's de-duplication removed)",
       "robustkit/engines/ray_engine.py", "unique.setdefault(tuple(int(i) for i in pos), (pos, rec))",
       "unique[(len(unique),)] = (pos, rec)", group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a sample no batch brought back is not checked", "robustkit/engines/ray_engine.py",
       "    _check_every_sample(done, total, _namer(data, studies, ctx, extras))\n", "", group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a missing sample named by its position, not its id", "robustkit/engines/ray_engine.py",
       "repr(name(int(i)))", "repr(int(i))", group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: records placed by audit position, not the study's own", "robustkit/engines/ray_engine.py",
       "payload[\"studies\"][key] = (local[keep], study.map(",
       "payload[\"studies\"][key] = (rows[keep], study.map(",
       group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a batch not kept on disk as it arrives", "robustkit/engines/ray_engine.py",
       "                if shard_dir is not None:\n                    _save_shard(shard_dir, payload)\n", "",
       group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a resumed run maps the finished samples again", "robustkit/engines/ray_engine.py",
       "todo = np.setdiff1d(np.arange(total),",
       "todo = np.arange(total) if True else np.setdiff1d(np.arange(total),",
       group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: merged records keep the arrival order", "robustkit/studies/base.py",
       "merged[name] = np.concatenate(chunks)[order]", "merged[name] = np.concatenate(chunks)",
       group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a resumed run deletes the finished shards", "robustkit/runner.py",
       "if out is not None and fresh:", "if out is not None:", group="faults",
       tests=("tests/test_ray.py::test_a_killed_driver_resumes_from_its_shards",)),
    _m("interrupt: finished studies written only at the end", "robustkit/runner.py",
       "        result.seconds = time.perf_counter() - start\n        if out_dir is not None:\n            save_results(",
       "        result.seconds = time.perf_counter() - start\n        if False:\n            save_results(",
       group="faults", tests=("tests/test_interrupt.py::"
                              "test_killed_audit_keeps_complete_results_and_resumes_to_the_same_numbers",)),
    _m("interrupt: a KeyboardInterrupt mid-write leaves its temporary file", "robustkit/results.py",
       "    except BaseException:\n        Path(tmp).unlink", "    except Exception:\n        Path(tmp).unlink",
       group="faults", tests=("tests/test_interrupt.py::"
                              "test_an_interrupt_during_a_write_leaves_the_previous_file_and_no_temporary_file",)),
)

_LEFT_OUT: set[str] = set()
_CAUGHT_BY: list[str] = []  # the failing test of the last run

HARMLESS: dict[str, str] = {
    "paired: bootstrap se with ddof 0": "with 1000 resamples the standard error changes by sqrt(999/1000), a 0.05 % "
                                        "change of the z score: no p-value moves by more than its bootstrap noise.",
    "#28 square l2: proposal not rescaled to eps": "equivalent: the proposal already has L2 norm eps before the "
                                                   "rescale (the first window gets the two windows' mass plus the "
                                                   "unused budget eps^2 - |delta|^2, and |delta| <= eps holds since "
                                                   "clipping to the box only shortens it), so the rescale divides "
                                                   "by 1 up to rounding.",
}
"""Mutation name -> why its survival does not matter (an equivalent or negligible change)."""


def _scratch() -> Path:
    """A copy of the tracked and untracked-not-ignored files of the repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    root = Path(tempfile.mkdtemp(prefix="robustkit-mutation-"))
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / f)
    return root


def _pytest(tests: tuple[str, ...], root: Path, timeout: float) -> int:
    tests = tuple(t for t in tests if t.partition("::")[0] not in _LEFT_OUT)
    missing = [t for t in tests if not (root / t.partition("::")[0]).is_file()]
    if missing:
        raise SystemExit(f"mutation.py: test file {missing[0]} does not exist; fix the mutation's tests.")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                          cwd=root, capture_output=True, text=True, timeout=timeout)
    _CAUGHT_BY[:] = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return proc.returncode


def _run(mutation: Mutation, root: Path, timeout: float) -> str:
    path = root / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        return f"stale ({count} matches)"
    path.write_text(text.replace(mutation.old, mutation.new))
    try:
        return "survived" if _pytest(mutation.tests, root, timeout) == 0 else "killed"
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    finally:
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", choices=("pure", "faults", "all"), default="pure")
    ap.add_argument("-k", default="", help="only mutations whose name contains this text")
    ap.add_argument("--without-new", action="store_true", help=f"leave out {NEW} (the score before issue #13)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if (args.group == "all" or m.group == args.group) and args.k in m.name]
    if args.list:
        print("\n".join(f"{m.group:6s} {m.name}" for m in chosen))
        return 0
    if args.without_new:
        _LEFT_OUT.add(NEW)
    root = _scratch()
    try:
        for tests in sorted({m.tests for m in chosen}):  # the unmutated code must pass first
            if _pytest(tests, root, args.timeout) != 0:
                raise SystemExit(f"mutation.py: the tests {' '.join(tests)} fail without a mutation; fix them first.")
        results = []
        for m in chosen:
            t0 = time.monotonic()
            outcome = _run(m, root, args.timeout)
            results.append((m, outcome))
            by = f"  <- {_CAUGHT_BY[0]}" if outcome == "killed" and _CAUGHT_BY else ""
            print(f"{outcome:18s} {time.monotonic() - t0:6.1f}s  {m.name}{by}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    killed = sum(o.startswith("killed") for _, o in results)
    print(f"mutation score: {killed}/{len(results)} killed")
    bad = [(m, o) for m, o in results if not o.startswith("killed") and m.name not in HARMLESS]
    for m, o in results:
        if o == "survived" and m.name in HARMLESS:
            print(f"  harmless survivor: {m.name}: {HARMLESS[m.name]}")
    for m, o in bad:
        print(f"  {o}: {m.name}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
