"""Compare audits of the same dataset metric by metric, with paired tests.

The first audit is the baseline; every other one is a candidate compared with it. Compare
reads only the flat metric maps, the metric directions and the per-sample records, so a new
study needs no change here:

* a metric that is the mean of a 0/1 per-sample column (``records[key]`` ``(n, M)`` with
  ``data[key + "_metrics"]`` naming the ``M`` metrics; accuracies use ``correct``) and a
  per-class ``sensitivity.<class>`` get the exact McNemar test on the discordant pairs;
* other metrics get a paired bootstrap of the difference where a statistic in
  :data:`robustkit.metrics.paired_statistics.BUILTIN_STATISTICS` recomputes the stored value from the
  records (the study's record in :mod:`robustkit.plugins` says which columns back which
  metrics; ECE reuses the calibration metric's own binning);
* multi-label audits (the same images and findings) are compared per finding
  (:mod:`robustkit.metrics.paired_statistics`): ``auroc.<finding>`` by DeLong's test,
  ``sensitivity.<finding>`` / ``specificity.<finding>`` by exact McNemar on the thresholded
  calls of the images with / without the finding (each audit's own thresholds), and the
  macro / micro means and ``auprc.*`` by the paired bootstrap over images;
* the rest get their delta and the verdict ``not testable``.

Samples are paired by id. p-values are Holm-adjusted over every tested metric of one
candidate (``correction="holm"``, the default) or left as they are (``"none"``); a
difference is significant when its adjusted p-value is below ``alpha``. The intervals are
unadjusted percentile intervals at level ``1 - alpha``. No TensorFlow here.

Example:
    >>> cmp = compare(["reports/v1", "reports/v2"])  # doctest: +SKIP
    >>> [d.metric for d in cmp.candidates[0].regressions]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.errors import ConfigError, check_choice, check_range, param_error
from robustkit.metrics.paired import (
    PairedRecords,
    holm,
    mcnemar_exact,
    paired_bootstrap,
    resample_indices,
)
from robustkit.metrics.paired_statistics import find_statistic, find_test
from robustkit.plugins import plugin
from robustkit.results import AuditResult, atomic_write_text, load_results, require_current

__all__ = [
    "VERDICTS",
    "CandidateComparison",
    "Comparison",
    "MetricDelta",
    "check_comparable",
    "compare",
    "paired_deltas",
    "paired_records",
    "save_comparison",
    "slice_deltas",
]

VERDICTS = ("regression", "improvement", "unchanged", "changed", "not testable")
COMPARE_JSON = "compare.json"
COMPARE_HTML = "compare.html"


@dataclass(frozen=True)
class MetricDelta:
    """One metric of a candidate against the baseline.

    Attributes:
        metric: full dotted name (``clean.accuracy``).
        baseline, candidate: the stored values; ``delta = candidate - baseline``.
        interval: percentile interval of the delta (paired bootstrap), or None.
        test: ``mcnemar-exact``, ``paired-bootstrap`` or ``none``.
        p_value, p_adjusted: raw and corrected p-values (None when not tested).
        significant: ``p_adjusted < alpha``; None when not tested.
        verdict: one of :data:`VERDICTS`, read with ``direction``.
        direction: ``higher``, ``lower`` or ``none`` (the baseline's).
        n_paired: samples paired by id.
        discordant: McNemar's ``(b, c)``: baseline-only and candidate-only successes.
        note: why a metric was not testable.
    """

    metric: str
    baseline: float
    candidate: float
    delta: float
    interval: tuple[float, float] | None
    test: str
    p_value: float | None
    p_adjusted: float | None
    significant: bool | None
    verdict: str
    direction: str
    n_paired: int = 0
    discordant: tuple[int, int] | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": _j(self.baseline), "candidate": _j(self.candidate), "delta": _j(self.delta),
            "interval": None if self.interval is None else [_j(v) for v in self.interval],
            "test": self.test, "p_value": _j(self.p_value), "p_adjusted": _j(self.p_adjusted),
            "significant": self.significant, "verdict": self.verdict, "direction": self.direction,
            "n_paired": self.n_paired, "discordant": None if self.discordant is None else list(self.discordant),
            "note": self.note,
        }


@dataclass(frozen=True)
class CandidateComparison:
    """Every shared metric of one candidate against the baseline."""

    label: str
    result: AuditResult = field(repr=False)
    deltas: list[MetricDelta]
    only_in_baseline: list[str]
    only_in_candidate: list[str]
    config_mismatches: list[str]
    #: per-slice paired tests (:func:`slice_deltas`), empty without a slices study
    slices: list[dict[str, Any]] = field(default_factory=list)

    def by_verdict(self, verdict: str) -> list[MetricDelta]:
        return [d for d in self.deltas if d.verdict == verdict]

    @property
    def regressions(self) -> list[MetricDelta]:
        return self.by_verdict("regression")

    @property
    def improvements(self) -> list[MetricDelta]:
        return self.by_verdict("improvement")

    def counts(self) -> dict[str, int]:
        return {v: len(self.by_verdict(v)) for v in VERDICTS}


@dataclass(frozen=True)
class Comparison:
    """A baseline audit and one :class:`CandidateComparison` per other audit."""

    baseline_label: str
    baseline: AuditResult = field(repr=False)
    candidates: list[CandidateComparison]
    alpha: float
    correction: str
    n_boot: int
    seed: int
    allow_config_mismatch: bool

    def to_json(self) -> dict[str, Any]:
        from robustkit import __version__

        return {
            "robustkit_version": __version__,
            "alpha": self.alpha, "correction": self.correction, "n_boot": self.n_boot, "seed": self.seed,
            "allow_config_mismatch": self.allow_config_mismatch,
            "baseline": {"label": self.baseline_label, **_provenance(self.baseline)},
            "candidates": [
                {
                    "label": c.label, **_provenance(c.result),
                    "config_mismatches": c.config_mismatches, "summary": c.counts(),
                    "metrics": {d.metric: d.to_json() for d in c.deltas},
                    "only_in_baseline": c.only_in_baseline, "only_in_candidate": c.only_in_candidate,
                    "slices": c.slices,
                }
                for c in self.candidates
            ],
        }


def compare(
    results: Sequence[AuditResult | str | Path],
    *,
    alpha: float = 0.05,
    allow_config_mismatch: bool = False,
    correction: str = "holm",
    n_boot: int = 1000,
    seed: int = 0,
    labels: Sequence[str] | None = None,
) -> Comparison:
    """Compare audits of the same dataset; the first is the baseline.

    Args:
        results: two or more :class:`AuditResult` objects or audit folders.
        alpha: significance level of every test (and ``1 - alpha`` intervals).
        allow_config_mismatch: compare audits whose seeds or study configs differ (the
            mismatches are recorded and shown); otherwise they are refused.
        correction: ``holm`` (over the tested metrics of each candidate) or ``none``.
        n_boot: bootstrap resamples.
        seed: seed of the resampling.
        labels: names of the audits (default: folder names, else model names).

    Raises:
        ConfigError: fewer than two audits, bad options, or audits of different datasets or
            configs; RobustkitError: different major schema versions.
    """
    _validate(results, alpha, correction, n_boot, labels)
    audits = [r if isinstance(r, AuditResult) else load_results(r) for r in results]
    names = _labels(results, audits, labels)
    base, cands = audits[0], []
    for label, cand in zip(names[1:], audits[1:]):
        mismatches = check_comparable(base, cand, names[0], label, allow_config_mismatch=allow_config_mismatch)
        shared = [m for m in base.metrics() if m in cand.metrics()]
        deltas = paired_deltas(base, cand, shared, alpha=alpha, correction=correction, n_boot=n_boot, seed=seed)
        cands.append(CandidateComparison(
            label=label, result=cand, deltas=deltas,
            only_in_baseline=[m for m in base.metrics() if m not in cand.metrics()],
            only_in_candidate=[m for m in cand.metrics() if m not in base.metrics()],
            config_mismatches=mismatches,
            slices=slice_deltas(base, cand, alpha=alpha),
        ))
    return Comparison(names[0], base, cands, alpha, correction, n_boot, seed, allow_config_mismatch)


def save_comparison(comparison: Comparison, out: str | Path) -> Path:
    """Write ``compare.json`` into the folder ``out`` (or to ``out`` if it ends in .json)."""
    target = Path(out)
    target = target if target.suffix == ".json" else target / COMPARE_JSON
    atomic_write_text(target, json.dumps(comparison.to_json(), indent=2, allow_nan=False) + "\n")
    return target


# ---------------------------------------------------------------- refusals


def check_comparable(
    base: AuditResult, cand: AuditResult, base_label: str, cand_label: str, *, allow_config_mismatch: bool = False
) -> list[str]:
    """Raise unless the two audits can be paired; return the tolerated config mismatches."""
    what = f"cannot compare {cand_label!r} with the baseline {base_label!r}"
    for result, label in ((base, base_label), (cand, cand_label)):
        require_current(str(result.schema_version), f"{what}: {label!r}")
    kind_a, kind_b = _kind(base), _kind(cand)
    if (kind_a == "multilabel") != (kind_b == "multilabel"):
        raise ConfigError(f"{what}: expected two multi-label audits or two single-label ones, got a {kind_a} "
                          f"baseline and a {kind_b} candidate.")
    fa, fb = base.dataset.get("fingerprint"), cand.dataset.get("fingerprint")
    if fa and fb and fa != fb:
        raise ConfigError(f"{what}: expected the same dataset, got dataset fingerprints {_short(fa)} and {_short(fb)}.")
    ids_a, ids_b = set(map(str, base.ids)), set(map(str, cand.ids))
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        raise ConfigError(
            f"{what}: expected the same sample ids, got {len(only_a)} only in the baseline "
            f"{only_a[:3]} and {len(only_b)} only in the candidate {only_b[:3]}."
        )
    if set(base.class_names) != set(cand.class_names):
        if kind_a == "multilabel":
            only_a = sorted(set(base.class_names) - set(cand.class_names))
            only_b = sorted(set(cand.class_names) - set(base.class_names))
            raise ConfigError(f"{what}: expected the same findings, got {only_a} only in the baseline and "
                              f"{only_b} only in the candidate.")
        raise ConfigError(f"{what}: expected the same classes, got {base.class_names} and {cand.class_names}.")
    if kind_a == "multilabel":
        _check_findings(base, cand, what, (base_label, cand_label))
    diffs = _config_diffs(base.config, cand.config)
    if diffs and not allow_config_mismatch:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ConfigError(
            f"{what}: expected the same seed and study configs, got differences in {shown}. "
            "Pass --allow-config-mismatch to compare anyway."
        )
    return diffs


def _kind(audit: AuditResult) -> str:
    """``multilabel`` for an audit with per-sample findings, else its output kind (``softmax`` ...)."""
    if audit.targets is not None:
        return "multilabel"
    return str(audit.model.get("output_kind") or "softmax")


def _check_findings(base: AuditResult, cand: AuditResult, what: str, labels: tuple[str, str]) -> None:
    """Multi-label audits: both have targets, the same findings per image (by id and finding
    name), and stored thresholds in (0, 1)."""
    for audit, label in zip((base, cand), labels):
        if audit.targets is None or np.shape(audit.targets) != (len(audit.ids), len(audit.class_names)):
            raise ConfigError(f"{what}: expected records.npz 'targets' of shape (n_samples, n_findings) in "
                              f"{label!r}, got {None if audit.targets is None else np.shape(audit.targets)}.")
        thresholds = audit.model.get("thresholds") or {}
        for finding, value in (thresholds.items() if isinstance(thresholds, dict) else []):
            check_range(f"model.thresholds.{finding}", value, low=0.0, high=1.0, low_open=True,
                        high_open=True, where=f"the results.json of {label!r}")
    order_b = {s: i for i, s in enumerate(np.asarray(cand.ids).astype(str))}
    rows_b = np.asarray([order_b[s] for s in np.asarray(base.ids).astype(str)], dtype=np.int64)
    cols_b = [list(cand.class_names).index(f) for f in base.class_names]
    ta = np.asarray(base.targets, dtype=bool)
    tb = np.asarray(cand.targets, dtype=bool)[rows_b][:, cols_b]
    differ = np.flatnonzero((ta != tb).any(axis=1))
    if len(differ):
        shown = [str(base.ids[i]) for i in differ[:3]]
        raise ConfigError(f"{what}: expected the same findings per image, got {len(differ)} image(s) whose "
                          f"findings differ, e.g. {shown}.")


def _config_diffs(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = [] if a.get("seed") == b.get("seed") else [f"seed ({a.get('seed')!r} vs {b.get('seed')!r})"]
    sa, sb = a.get("studies", {}) or {}, b.get("studies", {}) or {}
    for study in [s for s in sa if s in sb]:
        ca, cb = sa[study] or {}, sb[study] or {}
        for key in sorted(set(ca) | set(cb)):
            if ca.get(key) != cb.get(key):
                out.append(f"studies.{study}.{key} ({ca.get(key)!r} vs {cb.get(key)!r})")
    return out


# ---------------------------------------------------------------- paired tests


def paired_deltas(
    base: AuditResult,
    cand: AuditResult,
    metrics: Sequence[str],
    *,
    alpha: float = 0.05,
    correction: str = "holm",
    n_boot: int = 1000,
    seed: int = 0,
) -> list[MetricDelta]:
    """Test each named metric of ``cand`` against ``base``; correct over this family.

    The audits must already be comparable (:func:`check_comparable`).
    """
    pairs: dict[str, tuple[PairedRecords, PairedRecords] | None] = {}
    boots: dict[str, np.ndarray] = {}
    raw = []
    for name in metrics:
        study = name.partition(".")[0]
        if study not in pairs:
            pairs[study] = paired_records(base, cand, study)
        raw.append(_test(name, base, cand, pairs[study], boots, alpha=alpha, n_boot=n_boot, seed=seed))
    p_raw = [r["p_value"] if r["p_value"] is not None else math.nan for r in raw]
    p_adj = holm(p_raw) if correction == "holm" else p_raw
    return [_finish(name, base, cand, r, p, alpha) for name, r, p in zip(metrics, raw, p_adj)]


def _test(name: str, base: AuditResult, cand: AuditResult, pair: tuple[PairedRecords, PairedRecords] | None,
          boots: dict[str, np.ndarray], *, alpha: float, n_boot: int, seed: int) -> dict[str, Any]:
    va, vb = base.metrics()[name], cand.metrics()[name]
    empty = {"test": "none", "p_value": None, "interval": None, "n_paired": 0, "discordant": None}
    if not (math.isfinite(va) and math.isfinite(vb)):
        return {**empty, "note": "a value is not finite"}
    if pair is None:
        return {**empty, "note": "no per-sample records to pair"}
    pa, pb = pair
    study = name.partition(".")[0]
    stat_a, stat_b = find_statistic(name, pa, check=va), find_statistic(name, pb, check=vb)
    if stat_a is None or stat_b is None:
        return {**empty, "n_paired": pa.n, "note": "the records do not recompute this metric"}
    if study not in boots:
        boots[study] = resample_indices(pa.n, n_boot, seed=(seed + zlib.crc32(study.encode())) % 2**32)
    boot = paired_bootstrap(stat_a, stat_b, pa.n, indices=boots[study], level=1 - alpha)
    interval = (boot.low, boot.high) if math.isfinite(boot.low) else None
    out = {"test": "paired-bootstrap", "p_value": boot.p_value if math.isfinite(boot.p_value) else None,
           "interval": interval, "n_paired": pa.n, "discordant": None, "note": ""}
    test = find_test(name, pa, pb)
    if test is not None:
        out.update(test=test.test, p_value=test.p_value, discordant=test.discordant)
    if out["p_value"] is None:
        out.update(test="none", note="too few resamples where the metric is defined")
    return out


def _finish(name: str, base: AuditResult, cand: AuditResult, r: dict[str, Any], p_adj: float, alpha: float) -> MetricDelta:
    va, vb = base.metrics()[name], cand.metrics()[name]
    direction = base.direction(name)
    tested = r["p_value"] is not None and math.isfinite(p_adj)
    significant = bool(p_adj < alpha) if tested else None
    return MetricDelta(
        metric=name, baseline=va, candidate=vb, delta=vb - va, interval=r["interval"], test=r["test"],
        p_value=r["p_value"], p_adjusted=p_adj if tested else None, significant=significant,
        verdict=_verdict(vb - va, direction, significant), direction=direction,
        n_paired=r["n_paired"], discordant=r["discordant"], note=r.get("note", ""),
    )


def _verdict(delta: float, direction: str, significant: bool | None) -> str:
    if significant is None:
        return "not testable"
    if not significant:
        return "unchanged"
    if direction not in ("higher", "lower"):
        return "changed"
    better = delta > 0 if direction == "higher" else delta < 0
    return "improvement" if better else "regression"


def paired_records(base: AuditResult, cand: AuditResult, study: str) -> tuple[PairedRecords, PairedRecords] | None:
    """Both audits' records of ``study`` restricted to shared sample ids, in the baseline's order."""
    if study not in base.studies or study not in cand.studies:
        return None
    ra, rb = base.records(study), cand.records(study)
    if "index" not in ra or "index" not in rb:
        return None
    ids_a = np.asarray(base.ids).astype(str)[ra["index"]]
    ids_b = np.asarray(cand.ids).astype(str)[rb["index"]]
    where_b = {s: i for i, s in enumerate(ids_b)}
    rows_a = np.asarray([i for i, s in enumerate(ids_a) if s in where_b], dtype=np.int64)
    if len(rows_a) == 0 or len(where_b) != len(ids_b):
        return None
    rows_b = np.asarray([where_b[s] for s in ids_a[rows_a]], dtype=np.int64)
    pa, pb = _records(base, study, rows_a), _records(cand, study, rows_b)
    return (pa, pb) if np.array_equal(pa.labels, pb.labels) else None


def _records(audit: AuditResult, study: str, rows: np.ndarray) -> PairedRecords:
    s = audit.studies[study]
    index = s.records["index"]
    recs = {k: v[rows] for k, v in s.records.items() if k != "index" and v.ndim >= 1 and len(v) == len(index)}
    samples = index[rows]
    targets = _targets(audit)[samples]
    labels = _sample_labels(audit, samples)
    record = plugin(study)
    if record is None:
        return PairedRecords(recs, s.data, s.config, labels, list(audit.class_names), targets=targets)
    spec = record.paired
    ece = {m: (c.confidence, c.correct) for m, c in spec.ece.items()}
    findings = None if spec.findings is None or targets is None else (spec.findings.scores, spec.findings.correct)
    return PairedRecords(recs, s.data, s.config, labels, list(audit.class_names),
                         binary=spec.binary, ece=ece, subset=spec.subset, targets=targets, findings=findings,
                         thresholded=None if audit.targets is None else _thresholded(audit, samples))


def _targets(audit: AuditResult) -> np.ndarray:
    """``(N, K)`` bool: each sample's findings, or for a single-label audit its class one-hot, so
    that a per-output AUROC is paired (DeLong) the same way for every task kind."""
    if audit.targets is not None:
        return np.asarray(audit.targets, dtype=bool)
    labels = np.asarray(audit.labels, dtype=np.int64)
    return np.eye(len(audit.class_names), dtype=bool)[labels]


def _sample_labels(audit: AuditResult, samples: np.ndarray) -> np.ndarray:
    """``(n,)`` the class name of each sample; for multi-label audits its sorted findings
    joined by ``|`` (``No Finding`` when none), so that pairing also checks the targets."""
    names = np.asarray(audit.class_names, dtype=str)
    if audit.targets is None:
        return names[np.asarray(audit.labels, dtype=np.int64)[samples]]
    rows = np.asarray(audit.targets, dtype=bool)[samples]
    return np.asarray(["|".join(sorted(names[r])) or "No Finding" for r in rows], dtype=str)


def _thresholded(audit: AuditResult, samples: np.ndarray) -> np.ndarray:
    """bool ``(n,)``: the samples a multi-label audit read its thresholded metrics on: the
    half not used to choose the thresholds, or all when they were given (the clean study's reader)."""
    from robustkit.metrics.multilabel import stored_thresholds

    return stored_thresholds(audit.model, audit.class_names, np.asarray(audit.ids)[samples])[1]


# ---------------------------------------------------------------- per-slice tests


def slice_deltas(base: AuditResult, cand: AuditResult, *, study: str = "slices",
                 alpha: float = 0.05) -> list[dict[str, Any]]:
    """Per-slice paired accuracy tests: exact McNemar on each slice's samples, Holm over slices.

    The slices are the baseline's (``data["slice_defs"]`` of ``study``), their members found
    again from the audit's metadata (``records.npz`` ``metadata/<column>``, binned as the
    study did); samples are paired by id. Empty when either audit lacks the study.

    Returns:
        One row per slice: ``slice``, ``n``, ``baseline``/``candidate`` accuracy, ``delta``,
        ``discordant`` ``(b, c)``, ``p_value``, ``p_holm``, ``verdict`` (``improvement``,
        ``regression``, ``unchanged``), worst delta first.
    """
    from robustkit.metrics.slices import discretize, slice_mask

    if study not in base.studies or study not in cand.studies or not base.metadata:
        return []
    ra, rb = base.records(study), cand.records(study)
    if "correct" not in ra or "correct" not in rb:
        return []
    ids_b = {s: i for i, s in enumerate(np.asarray(cand.ids).astype(str)[rb["index"]])}
    ids_a = np.asarray(base.ids).astype(str)[ra["index"]]
    rows_a = np.asarray([i for i, s in enumerate(ids_a) if s in ids_b], dtype=np.int64)
    rows_b = np.asarray([ids_b[s] for s in ids_a[rows_a]], dtype=np.int64)
    ca, cb = ra["correct"].reshape(len(ra["index"]), -1)[rows_a, 0], rb["correct"].reshape(len(rb["index"]), -1)[rows_b, 0]
    width = float(base.studies[study].data.get("bin_width", 10.0))
    pos = ra["index"][rows_a]
    missing = base.studies[study].data.get("missing")  # the label of an absent value, binned as the study did
    labels = {c: discretize(np.asarray(v)[pos], bin_width=width, missing=missing) for c, v in base.metadata.items()}
    out = []
    for name, conditions in dict(base.studies[study].data.get("slice_defs", {})).items():
        if any(col not in labels for col, _ in conditions):
            continue
        m = slice_mask(labels, [(str(c), str(v)) for c, v in conditions])
        if not m.any():
            continue
        res = mcnemar_exact(ca[m], cb[m])
        acc_a, acc_b = float(ca[m].mean()), float(cb[m].mean())
        out.append({"slice": name, "n": int(m.sum()), "baseline": acc_a, "candidate": acc_b,
                    "delta": acc_b - acc_a, "discordant": [res.b, res.c], "p_value": res.p_value})
    for row, p in zip(out, holm([r["p_value"] for r in out])):
        significant = math.isfinite(p) and p < alpha
        row.update(p_holm=p, verdict=_verdict(row["delta"], "higher", significant))
    return sorted(out, key=lambda r: (r["delta"], r["slice"]))


# ---------------------------------------------------------------- helpers


def _validate(results: Sequence[Any], alpha: float, correction: str, n_boot: int, labels: Sequence[str] | None) -> None:
    if isinstance(results, (str, Path, AuditResult)) or len(results) < 2:
        raise param_error("results", "a list of at least two audits (the first is the baseline)", results, where="compare")
    check_range("alpha", alpha, low=0.0, high=1.0, low_open=True, where="compare")
    check_choice("correction", correction, ("holm", "none"), where="compare")
    check_range("n_boot", n_boot, low=10, integer=True, where="compare")
    if labels is not None and len(labels) != len(results):
        raise param_error("labels", f"{len(results)} names, one per audit", list(labels), where="compare")


def _labels(results: Sequence[Any], audits: list[AuditResult], labels: Sequence[str] | None) -> list[str]:
    raw = list(labels) if labels is not None else [
        (Path(r).parent.name if Path(r).suffix == ".json" else Path(r).name) if isinstance(r, (str, Path))
        else str(a.model.get("name") or f"audit {i + 1}")
        for i, (r, a) in enumerate(zip(results, audits))
    ]
    out: list[str] = []
    for i, name in enumerate(raw):
        name = name or f"audit {i + 1}"
        out.append(name if name not in out else f"{name} ({i + 1})")
    return out


def _provenance(r: AuditResult) -> dict[str, Any]:
    m, d = r.model, r.dataset
    return {
        "model": {"name": m.get("name"), "fingerprint": m.get("fingerprint"), "arch": m.get("arch")},
        "dataset": {"fingerprint": d.get("fingerprint"), "n_samples": int(len(r.ids))},
        "schema_version": r.schema_version, "created": r.created,
    }


def _short(fingerprint: Any) -> str:
    return repr(str(fingerprint).split(":", 1)[-1][:16])


def _j(v: Any) -> Any:
    """JSON-safe number: NaN becomes null, infinities the strings ``inf``/``-inf``."""
    if v is None or isinstance(v, bool):
        return v
    f = float(v)
    if math.isnan(f):
        return None
    return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")
