"""Named mutations over the pure modules: does the test suite notice a deliberate fault?

Each mutation replaces one exact snippet of a source file (it must occur exactly once, so
a stale mutation is an error, not a silent "survived"), runs a fast test selection in a
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
GATE_TESTS = ("tests/test_gate.py", NEW)
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


_TESTS_OF = {"robustkit/gate.py": GATE_TESTS, "robustkit/compare.py": COMPARE_TESTS,
             "robustkit/metrics/paired.py": COMPARE_TESTS, "robustkit/metrics/calibration.py": CALIBRATION_TESTS,
             "robustkit/data/transforms.py": TRANSFORM_TESTS}


def _m(name: str, path: str, old: str, new: str, **kw: object) -> Mutation:
    kw.setdefault("tests", _TESTS_OF.get(path, ()))
    return Mutation(name, path, old, new, **kw)  # type: ignore[arg-type]


G, C, P, K, T = ("robustkit/gate.py", "robustkit/compare.py", "robustkit/metrics/paired.py",
                 "robustkit/metrics/calibration.py", "robustkit/data/transforms.py")
CL = "robustkit/metrics/classification.py"

MUTATIONS: tuple[Mutation, ...] = (
    # gate
    _m("gate: NaN metric passes", G, 'problems.append("is not a finite number")', "pass"),
    _m("gate: min is strict", G, "value < rule.min", "value <= rule.min"),
    _m("gate: max ignored", G, "value > rule.max", "value > rule.max + 1e9"),
    _m("gate: drop direction inverted", G, 'drop = -d.delta if d.direction == "higher" else d.delta',
       'drop = d.delta if d.direction == "higher" else -d.delta'),
    _m("gate: lower-is-better drop ignored", G, 'drop = -d.delta if d.direction == "higher" else d.delta',
       "drop = -d.delta"),
    _m("gate: alpha fixed at 0.05", G, "if p < alpha:", "if p < 0.05:"),
    _m("gate: policy alpha dropped", G, "float(alpha), source)", "0.05, source)"),
    _m("gate: untestable drop passes", G, 'return f"dropped by more than {max_drop:g} and no paired test applies", text',
       'return "", text'),
    _m("gate: no Holm over the rule", G, 'correction="holm", n_boot=n_boot', 'correction="none", n_boot=n_boot'),
    _m("gate: a rule passes when any metric holds", G, "return all(m.passed for m in self.metrics)",
       "return any(m.passed for m in self.metrics)"),
    # compare
    _m("compare: Holm ignored", C, 'p_adj = holm(p_raw) if correction == "holm" else p_raw', "p_adj = p_raw"),
    _m("compare: delta sign", C, "delta=vb - va", "delta=va - vb"),
    _m("compare: McNemar over all samples for a recall", C, "mcnemar_exact(col_a[0][m], col_b[0][m])",
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
    _m("paired: bootstrap interval one-tailed level", P, "alpha = (1.0 - level) / 2.0", "alpha = 1.0 - level"),
    _m("paired: bootstrap delta sign", P, "delta = float(np.asarray(second(ident))[0] - np.asarray(first(ident))[0])",
       "delta = float(np.asarray(first(ident))[0] - np.asarray(second(ident))[0])"),
    _m("paired: bootstrap se with ddof 0", P, "np.std(diffs, ddof=1)", "np.std(diffs, ddof=0)"),
    _m("paired: precision computed as recall", P, "_masked_mean(pr.labels == cls, predicted)",
       "_masked_mean(predicted, pr.labels == cls)"),
    _m("paired: ECE subset is the fit half", P, '("split", 1)', '("split", 0)'),
    _m("paired: resampling ignores the seed", P, "np.random.default_rng(seed).integers", "np.random.default_rng(0).integers"),
    _m("paired: compare's ECE in the other bin convention", P, "bins, gap = ece_update(conf, corr, n_bins=n_bins)",
       "bins, gap = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1), corr - conf"),
    # calibration
    _m("calibration: ECE bins left-closed", K, 'side="left") - 1', 'side="right") - 1'),
    _m("calibration: ECE ignores keep weights in n", K, "/ n, np.nan)", "/ rows.shape[1], np.nan)"),
    _m("calibration: Wilson at 90 %", K, "z: float = 1.959964", "z: float = 1.644854"),
    _m("calibration: referral rounds down", K, "np.floor(fraction * len(conf) + 0.5)", "np.floor(fraction * len(conf))"),
    _m("calibration: referral keeps the least confident", K, 'kept = np.argsort(-conf, kind="mergesort")',
       'kept = np.argsort(conf, kind="mergesort")'),
    _m("calibration: Brier as L1", K, "np.sum((p - onehot) ** 2, axis=1)", "np.sum(np.abs(p - onehot), axis=1)"),
    _m("calibration: AURC averages coverage", K, "np.mean(risk_coverage(conf, correct)[1])",
       "np.mean(risk_coverage(conf, correct)[0])"),
    _m("calibration: coverage at risk strict", K, "<= target + 1e-12", "< target - 1e-12"),
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
    _m("attacks: L2 PGD projects onto the sphere", "robustkit/model/attacks.py",
       "factor = tf.minimum(1.0, eps / tf.maximum(_l2_norms(delta), 1e-12))",
       "factor = eps / tf.maximum(_l2_norms(delta), 1e-12)", group="faults",
       tests=("tests/test_attacks.py", "tests/test_bite_attacks.py")),
    _m("attacks: PGD descends", "robustkit/model/attacks.py", "x = x + _bcast(alpha) * normalize(g)",
       "x = x - _bcast(alpha) * normalize(g)", group="faults",
       tests=("tests/test_attacks.py", "tests/test_bite_attacks.py")),
    _m("explainer: randomisation a no-op", "robustkit/model/explainers.py",
       "                randomize_weights(layers, _group_rng(seed, label))\n", "", group="faults",
       tests=("tests/test_saliency.py::test_randomization_makes_maps_dissimilar_and_weights_come_back",
              "tests/test_bite_studies.py::test_saliency_checks_pass_on_the_healthy_toy_model")),
    _m("saliency study: model randomisation skipped", "robustkit/studies/saliency.py",
       'with ex.randomized(seed=seed, steps=cfg.randomization_steps, cascade=variant == "cascading") as steps:',
       'with __import__("contextlib").nullcontext(labels) as steps:', group="faults",
       tests=("tests/test_bite_studies.py::test_saliency_checks_pass_on_the_healthy_toy_model",)),
    # issue #28: ray engine
    _m("ray engine: a batch delivered twice is kept twice (the stream's de-duplication removed)",
       "robustkit/engines/ray_engine.py",
       "            if sig in seen:  # a retried batch that also finished the first time\n                continue\n",
       "", group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a batch present twice is merged twice (the reduce's de-duplication removed)",
       "robustkit/engines/ray_engine.py", "unique.setdefault(tuple(int(i) for i in pos), (pos, rec))",
       "unique[(len(unique),)] = (pos, rec)", group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a sample no batch brought back is not checked", "robustkit/engines/ray_engine.py",
       "    _check_every_sample(done, data)\n", "", group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a missing sample named by its position, not its id", "robustkit/engines/ray_engine.py",
       "repr(str(data.ids[i]))", "repr(int(i))", group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: records placed by audit position, not the study's own", "robustkit/engines/ray_engine.py",
       "per_study[study.name] = (local[keep], study.map(", "per_study[study.name] = (positions[keep], study.map(",
       group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a batch not kept on disk as it arrives", "robustkit/engines/ray_engine.py",
       "            if shard_dir is not None:\n                _save_shard(shard_dir, payload)\n", "",
       group="faults", tests=("tests/test_ray_faults.py",)),
    _m("ray engine: a resumed run maps the finished samples again", "robustkit/engines/ray_engine.py",
       "todo = np.setdiff1d(np.arange(len(data)),",
       "todo = np.arange(len(data)) if True else np.setdiff1d(np.arange(len(data)),",
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
