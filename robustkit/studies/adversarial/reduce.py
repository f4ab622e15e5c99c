"""The ``adversarial`` study's one reduce, for every task kind: metrics, intervals, checks and report data.

Pure numpy over the per-sample records of :mod:`robustkit.studies.adversarial.model_work`:
nothing here imports the model side (an import contract in ``pyproject.toml`` keeps it so).
What only exists for one label per image (robust accuracy, the critical miss rate, the
ensemble's DLR/FAB/Square stages, foolbox, the gallery) is the block
:func:`~robustkit.studies.adversarial.exclusive.label_block`, switched on ``task.exclusive``;
otherwise the block here reads, per output, the sweeps that flip its call.

Per output (multi-label; ``<norm>``: ``linf`` in /255 or ``l2``; ``<eps>``: the radius;
``<finding>`` or ``macro``, the mean over findings): ``flip_off_rate.<norm>.<eps>.<finding>``
among the images with the finding called present, ``flip_on_rate.<norm>.<eps>.<finding>``
among those without, each with a Wilson 95% interval (macro: a bootstrap over images);
``min_budget_off.<norm>.median[.<finding>]`` and ``min_budget_on...``: the median minimal
flipping budget (inf: more than half never flipped). Calls are read on every image (the
thresholds' calibration half included: a threshold halfway between two scores is no nearer
to either). Not reported: a "robust AUROC" from the attacked probabilities. This attack
follows the call, not the truth: it also pushes false positives down and false negatives up
(which *helps* the AUROC) and stops just past the threshold, so the AUROC of its outputs is
neither a bound on the harm nor a worst case; that would need a label-aware attack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.metrics import classification as M
from robustkit.metrics.calibration import wilson_interval
from robustkit.metrics.sweep import FLIP_LOSS
from robustkit.results import StudyResult
from robustkit.studies.adversarial.checks import eps_name, run_flip_checks
from robustkit.studies.adversarial.config import (
    AdversarialConfig,
    attack_steps,
    check_norm,
    exclusive,
    grid,
)
from robustkit.studies.adversarial.exclusive import label_block
from robustkit.studies.base import AuditContext
from robustkit.studies.clean import finding_thresholds

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset

__all__ = ["DIRECTIONS", "reduce"]

DESCRIPTION = (
    "How much deliberate, worst-case change to the pixels each finding's call survives. For every image and "
    "finding, an attack searches within a budget epsilon (Linf: no pixel changes by more than epsilon; L2: the "
    "perturbation's total length is at most epsilon) for a change that flips that finding's call at its "
    "threshold: a finding called present turned off (a missed finding), or one called absent turned on (a false "
    "alarm). The flip rates per budget and the minimal flipping budgets say how fragile each call is."
)

#: the two flips, as metric-name parts: ``off`` among images called present, ``on`` among the others
DIRECTIONS = ("off", "on")



def reduce(cfg: AdversarialConfig, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext,
           name: str) -> StudyResult:
    """Metrics, intervals, checks and report data from the records of every sample, for every task kind."""
    result = StudyResult(name=name)
    block = label_block if exclusive(ctx) else _flip_block
    result.data.update(class_names=list(data.class_names), **block(cfg, result, records, data, ctx))
    result.metrics["n_samples"] = float(len(data))
    return result


def _rate(hit: np.ndarray, among: np.ndarray) -> float:
    return float(hit[among].mean()) if among.any() else float("nan")


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def _median(values: np.ndarray) -> float:
    """The lower median on the grid (inf allowed: more than half never flipped); NaN when empty."""
    return float(np.quantile(values, 0.5, method="lower")) if values.size else float("nan")


def _among(called: np.ndarray, d: str) -> np.ndarray:
    return called if d == "off" else ~called


def _macro_rates(flipped: np.ndarray, called: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``(2, E)`` the macro flip rates (off, on) per radius on the images ``idx``."""
    out = np.full((2, flipped.shape[2]), np.nan)
    for r, d in enumerate(DIRECTIONS):
        among = _among(called[idx], d)
        n = among.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per = (flipped[idx] & among[:, :, None]).sum(axis=0) / n[:, None]  # (K, E)
        ok = n > 0
        if ok.any():
            out[r] = per[ok].mean(axis=0)
    return out


def _fill_norm(result: StudyResult, norm: str, grid: np.ndarray, rec: dict[str, np.ndarray], names: list[str],
               n_boot: int, seed: int) -> dict[str, Any]:
    """Flip rates and minimal budgets of ``norm``; returns its curves for the report."""
    m, iv = result.metrics, result.intervals
    called, flipped, min_eps = rec["called"], rec[f"flipped_{norm}"], rec[f"flip_min_eps_{norm}"].astype(np.float64)
    unit = 255.0 if norm == "linf" else 1.0
    curves: dict[str, Any] = {"unit": "/255" if norm == "linf" else "L2", "epsilons": (grid * unit).tolist(),
                              "findings": {n: {} for n in names}, "macro": {}}
    for d in DIRECTIONS:
        among = _among(called, d)
        for f, name in enumerate(names):
            hits = flipped[among[:, f], f, :].sum(axis=0)
            lo, hi = wilson_interval(hits, np.full(len(grid), among[:, f].sum()))
            rates = [_rate(flipped[:, f, j], among[:, f]) for j in range(len(grid))]
            for j, eps in enumerate(grid):
                key = f"flip_{d}_rate.{norm}.{eps_name(norm, eps)}.{name}"
                m[key] = rates[j]
                if among[:, f].any():
                    iv[key] = [float(lo[j]), float(hi[j])]
            curves["findings"][name][d] = rates
            m[f"min_budget_{d}.{norm}.median.{name}"] = _median(min_eps[among[:, f], f] * unit)
        m[f"min_budget_{d}.{norm}.median"] = _median(min_eps[among] * unit)
    macro = _macro_rates(flipped, called, np.arange(len(called)))
    lo, hi = (M.bootstrap_interval(lambda idx: _macro_rates(flipped, called, idx).ravel(), len(called),
                                   n_boot=n_boot, seed=seed) if len(called) > 1 else (np.full(macro.size, np.nan),) * 2)
    for r, d in enumerate(DIRECTIONS):
        curves["macro"][d] = macro[r].tolist()
        for j, eps in enumerate(grid):
            key = f"flip_{d}_rate.{norm}.{eps_name(norm, eps)}.macro"
            m[key] = float(macro[r, j])
            if np.isfinite(lo[r * len(grid) + j]):
                iv[key] = [float(lo[r * len(grid) + j]), float(hi[r * len(grid) + j])]
    return curves


def _budget_rows(result: StudyResult, norms: tuple[str, ...], called: np.ndarray, names: list[str],
                 thresholds: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for f, name in enumerate(names):
        row: dict[str, Any] = {"finding": name, "threshold": float(thresholds[f]),
                               "called present": int(called[:, f].sum()), "called absent": int((~called[:, f]).sum())}
        for norm in norms:
            unit = "/255" if norm == "linf" else "L2"
            for d in DIRECTIONS:
                row[f"median budget {d} ({unit})"] = result.metrics[f"min_budget_{d}.{norm}.median.{name}"]
        rows.append(row)
    return rows


def _flip_block(cfg: AdversarialConfig, result: StudyResult, records: dict[str, np.ndarray], data: Dataset,
                ctx: AuditContext) -> dict[str, Any]:
    """Per output, flip rates and minimal budgets (with intervals), the checks and the report data."""
    names = list(data.class_names)
    thresholds, _ = finding_thresholds(ctx, data)
    curves = {norm: _fill_norm(result, norm, np.sort(np.asarray(grid(cfg, norm), np.float64)), records, names,
                               cfg.n_bootstrap, ctx.seed_for("adversarial", "findings", "bootstrap", norm))
              for norm in cfg.norms}
    result.tables["minimal_budgets"] = _budget_rows(result, cfg.norms, records["called"], names, thresholds)
    norm = check_norm(cfg.norms)
    result.checks, check_data = run_flip_checks(records, norm=norm, grid=grid(cfg, norm),
                                                epsilons_linf=cfg.epsilons_linf,
                                                large_epsilon_linf=cfg.large_epsilon_linf, tolerance=cfg.tolerance)
    e = eps_name(norm, sorted(grid(cfg, norm))[len(grid(cfg, norm)) // 2])
    result.records.update(called=records["called"], **{k: records[k] for k in records
                                                        if k.startswith(("flipped_", "flip_min_eps_", "flip_prob_"))})
    return dict(
        description=DESCRIPTION, multilabel=True, thresholds=thresholds.tolist(), findings_curves=curves,
        attack={"name": "APGD" if cfg.attack == "ensemble" else "PGD", "steps": attack_steps(cfg),
                "restarts": cfg.apgd_restarts if cfg.attack == "ensemble" else cfg.restarts},
        attack_loss=FLIP_LOSS, checks_data=check_data, correct_metrics=[],
        gradient_evals={n: int(records[f"flip_evals_{n}"].sum()) for n in cfg.norms},
        headline=[f"flip_off_rate.{norm}.{e}.macro", f"flip_on_rate.{norm}.{e}.macro",
                  f"min_budget_off.{norm}.median", f"min_budget_on.{norm}.median"],
    )
