"""The slices study's multi-label reduce: per slice, each finding's AUROC and their macro mean.

Accuracy over an arg-max means nothing for a multi-label model, so a slice (``site=A``) is
scored by the ROC AUC of every finding on the slice's images (``auroc.<slice>.<finding>``)
and their macro mean (``auroc.<slice>.macro``; findings without both positive and negative
images in the slice left out), each with a percentile bootstrap 95% interval (resampled
within the stratification key: the first finding present, or none).

The slice-vs-rest test is applied to the macro AUROC: the gap is the slice's macro AUROC
minus the rest's, and its two-sided p-value comes from the same resamples, the slice and the
rest resampled independently (``p = 2 min(P*(gap <= 0), P*(gap >= 0))``, with the +1
correction); the slices' p-values are adjusted together by Benjamini-Hochberg, as the
single-label accuracy tests are. A slice is flagged when its gap is below ``-effect_size``
and its q-value below ``alpha``.

The probe reads the column from the features as for single-label models; "within class"
means within each set of findings (images with the same findings), and the dependence is
that of the called findings (at the audit's thresholds) on the column within those sets.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.metrics import classification as M
from robustkit.metrics import multilabel as ML
from robustkit.metrics import slices as S
from robustkit.metrics.outputs import probabilities
from robustkit.results import StudyResult
from robustkit.studies.clean import finding_thresholds

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.studies.base import AuditContext, Records
    from robustkit.studies.slices import SlicesConfig

__all__ = ["finding_sets", "overall", "slice_aurocs", "slice_finding_rows", "store_findings"]


def finding_sets(targets: np.ndarray) -> np.ndarray:
    """int (N,): one code per distinct set of findings (rows of ``targets`` ``(N, K)``)."""
    return np.unique(np.asarray(targets, bool), axis=0, return_inverse=True)[1].reshape(-1)


def _macro(aurocs: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite values; NaN where none is."""
    finite = np.isfinite(aurocs)
    with np.errstate(invalid="ignore"):
        return np.where(finite.any(axis=-1), np.where(finite, aurocs, 0).sum(axis=-1) / finite.sum(axis=-1), np.nan)


def _resampled(t: np.ndarray, p: np.ndarray, strata: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Per-finding AUROC of each bootstrap resample ``(n_boot, K)``."""
    idx = M.bootstrap_indices(len(t), n_boot, seed=seed, strata=strata)
    return np.stack([ML.per_finding_auroc(t[i], p[i]) for i in idx]) if len(t) else np.full((n_boot, t.shape[1]), np.nan)


def _interval(values: np.ndarray) -> list[float]:
    """Percentile 95% interval of resampled values ``(n_boot,)``; NaN when more than half are undefined."""
    ok = np.isfinite(values)
    if ok.mean() <= 0.5:
        return [math.nan, math.nan]
    lo, hi = np.percentile(values[ok], [2.5, 97.5])
    return [float(lo), float(hi)]


def slice_aurocs(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray, strata: np.ndarray, *,
                 n_boot: int, seed: int) -> dict[str, Any]:
    """One slice against the rest: per-finding AUROC ``(K,)`` and macro AUROC of the slice with
    bootstrap intervals, the rest's macro AUROC, the gap and its bootstrap p-value."""
    t, p = np.asarray(targets, bool), np.asarray(probs, np.float64)
    inside, rest = np.flatnonzero(mask), np.flatnonzero(~np.asarray(mask, bool))
    auroc = ML.per_finding_auroc(t[inside], p[inside])
    boot_in = _resampled(t[inside], p[inside], strata[inside], n_boot, seed)
    macro_in_b = _macro(boot_in)
    out: dict[str, Any] = {"auroc": auroc, "macro": float(_macro(auroc)),
                           "auroc_intervals": [_interval(boot_in[:, k]) for k in range(t.shape[1])],
                           "macro_interval": _interval(macro_in_b), "rest_macro": math.nan, "gap": math.nan,
                           "p": math.nan}
    if not len(rest):
        return out
    rest_macro = float(_macro(ML.per_finding_auroc(t[rest], p[rest])))
    gaps = macro_in_b - _macro(_resampled(t[rest], p[rest], strata[rest], n_boot, seed + 1))
    gaps = gaps[np.isfinite(gaps)]
    if len(gaps):
        tail = min(int((gaps <= 0).sum()), int((gaps >= 0).sum()))
        out["p"] = float(min(1.0, 2 * (tail + 1) / (len(gaps) + 1)))
    out.update(rest_macro=rest_macro, gap=out["macro"] - rest_macro)
    return out


def slice_finding_rows(slices: list[S.Slice], targets: np.ndarray, probs: np.ndarray, names: list[str],
                       strata: np.ndarray, cfg: SlicesConfig, ctx: AuditContext) -> list[dict[str, Any]]:
    """One row per slice (n, per-finding and macro AUROC with intervals, gap, p, BH q, flagged),
    sorted by gap, worst first."""
    rows: list[dict[str, Any]] = []
    for s in slices:
        r = slice_aurocs(targets, probs, s.mask, strata, n_boot=cfg.n_bootstrap, seed=ctx.seed_for("slices", s.name))
        intervals = {f"auroc.{n}": iv for n, iv in zip(names, r["auroc_intervals"])}
        intervals["auroc.macro"] = r["macro_interval"]
        rows.append({"slice": s.name, "conditions": [list(c) for c in s.conditions], "n": int(s.mask.sum()),
                     "auroc": r["macro"], **{f"auroc.{n}": float(v) for n, v in zip(names, r["auroc"])},
                     "rest": r["rest_macro"], "intervals": intervals, "gap": r["gap"], "p": r["p"]})
    for row, q in zip(rows, S.bh_qvalues([float(r["p"]) for r in rows])):
        row["q"] = q
        row["flagged"] = bool(float(row["gap"]) <= -cfg.effect_size and q < cfg.alpha)
    return sorted(rows, key=lambda r: (r["gap"] if math.isfinite(r["gap"]) else math.inf, r["slice"]))


def store_findings(result: StudyResult, rows: list[dict[str, Any]], names: list[str]) -> None:
    """Flat metrics (``auroc.<slice>.<finding>``, ``auroc.<slice>.macro``), intervals, the table
    and the worst slice (lowest macro AUROC)."""
    for r in rows:
        for key in [*names, "macro"]:
            name = f"auroc.{r['slice']}.{key}"
            result.metrics[name] = r["auroc"] if key == "macro" else r[f"auroc.{key}"]
            result.intervals[name] = r["intervals"][f"auroc.{key}"]
    result.metrics["n_slices"] = float(len(rows))
    result.metrics["n_flagged"] = float(sum(r["flagged"] for r in rows))
    result.tables["slices"] = [{k: v for k, v in r.items() if k not in ("conditions", "intervals")} for r in rows]
    result.data["slices"] = rows
    result.data["slice_defs"] = {r["slice"]: r["conditions"] for r in rows}
    ranked = [r for r in rows if math.isfinite(r["auroc"])]
    if ranked:
        worst = min(ranked, key=lambda r: (r["auroc"], -r["n"], r["slice"]))
        result.metrics.update({"worst.auroc": worst["auroc"], "worst.gap": worst["gap"], "worst.q": worst["q"]})
        result.data["worst"] = {k: worst[k] for k in ("slice", "n", "auroc", "gap", "q", "flagged")}


def overall(records: Records, data: Dataset, ctx: AuditContext) -> tuple[StudyResult, np.ndarray, np.ndarray]:
    """The result's overall per-finding and macro AUROC, its records, and the called findings'
    set codes ``(N,)`` and the true sets' codes ``(N,)`` (for the probe's dependence)."""
    names, targets = list(data.class_names), np.asarray(data.targets, bool)
    probs = probabilities(records["logits"], "multilabel")
    auroc = ML.per_finding_auroc(targets, probs)
    result = StudyResult(name="slices", metrics={f"auroc.{n}": float(v) for n, v in zip(names, auroc)})
    result.metrics["auroc.macro"] = float(_macro(auroc))
    thresholds, _ = finding_thresholds(ctx, data)
    called = probs >= thresholds[None, :]
    result.records.update(probs=probs.astype(np.float32), called=called)
    result.data.update(multilabel=True, findings=names, correct_metrics=[],
                       thresholds=thresholds.tolist(), metric="auroc")
    both = finding_sets(np.r_[targets, called])
    return result, both[len(targets):], both[: len(targets)]
