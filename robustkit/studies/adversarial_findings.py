"""The ``adversarial`` study on a multi-label model: per finding, the budget that flips its call.

A multi-label model calls each finding present or absent at its own threshold. For every
image and finding the attack (:mod:`robustkit.model.finding_attack`) tries to flip that call:
turn a finding called present *off*, or one called absent *on*, at increasing radii, each
on the pairs not yet flipped, so a flip rate never falls with the budget and each pair gets
its minimal flipping budget on the grid. The study's ``attack`` picks the optimiser (``pgd``:
PGD with the study's steps and restarts; ``ensemble``: APGD with ``apgd_steps`` and
``apgd_restarts``; the ensemble's DLR and Square stages have no per-finding form here).

Metrics (``<norm>``: ``linf`` in /255 or ``l2``; ``<eps>``: the radius; ``<finding>`` or
``macro``, the mean over findings): ``flip_off_rate.<norm>.<eps>.<finding>`` among the images
with the finding called present, ``flip_on_rate.<norm>.<eps>.<finding>`` among those without,
each with a Wilson 95% interval (macro: a bootstrap over images);
``min_budget_off.<norm>.median[.<finding>]`` and ``min_budget_on...``: the median minimal
flipping budget (inf: more than half never flipped). Calls are read on every image (the
thresholds' calibration half included: a threshold halfway between two scores is no nearer
to either).

Not reported: a "robust AUROC" from the attacked probabilities. This attack follows the
call, not the truth: it also pushes false positives down and false negatives up (which
*helps* the AUROC) and stops just past the threshold, so the AUROC of its outputs is neither
a bound on the harm nor a worst case; that would need a label-aware attack.

``map`` does the model work (:func:`finding_records`); ``reduce`` is pure numpy
(:func:`finding_result`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.metrics import classification as M
from robustkit.metrics.calibration import wilson_interval
from robustkit.metrics.outputs import probabilities
from robustkit.model import finding_attack as FA
from robustkit.results import Check, StudyResult
from robustkit.studies.adversarial.checks import _FLAT_SHARE, _NEAR_ZERO, eps_name
from robustkit.studies.base import AuditContext
from robustkit.studies.clean import finding_thresholds

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter
    from robustkit.studies.adversarial.config import AdversarialConfig

__all__ = ["DIRECTIONS", "finding_records", "finding_result"]

DESCRIPTION = (
    "How much deliberate, worst-case change to the pixels each finding's call survives. For every image and "
    "finding, an attack searches within a budget epsilon (Linf: no pixel changes by more than epsilon; L2: the "
    "perturbation's total length is at most epsilon) for a change that flips that finding's call at its "
    "threshold: a finding called present turned off (a missed finding), or one called absent turned on (a false "
    "alarm). The flip rates per budget and the minimal flipping budgets say how fragile each call is."
)

#: the two flips, as metric-name parts: ``off`` among images called present, ``on`` among the others
DIRECTIONS = ("off", "on")


def _grid(cfg: AdversarialConfig, norm: str) -> tuple[float, ...]:
    return cfg.epsilons_linf if norm == "linf" else cfg.epsilons_l2


def _steps(cfg: AdversarialConfig) -> int:
    return cfg.apgd_steps if cfg.attack == "ensemble" else cfg.steps


def _attack(cfg: AdversarialConfig, norm: str) -> Any:
    if cfg.attack == "ensemble":
        return FA.flip_attack(norm, "apgd", steps=cfg.apgd_steps, restarts=cfg.apgd_restarts)
    return FA.flip_attack(norm, "pgd", steps=cfg.steps, step_size_factor=cfg.step_size_factor,
                          restarts=cfg.restarts, random_start=cfg.random_start)


def _check_norm(cfg: AdversarialConfig) -> str:
    return "linf" if "linf" in cfg.norms else cfg.norms[0]


def _large_radius(cfg: AdversarialConfig, norm: str, shape: tuple[int, ...]) -> float:
    """The large radius of the check "flips nearly every call" (L2: Linf's times sqrt of the size)."""
    return float(cfg.large_epsilon_linf) if norm == "linf" else float(cfg.large_epsilon_linf * np.sqrt(np.prod(shape)))


def _pair_seeds(ctx: AuditContext, ids: list[str], names: list[str], *keys: str) -> np.ndarray:
    """``(B, K)`` seeds keyed by ``(seed, study, findings, *keys, finding, sample id)``."""
    return np.array([[ctx.seed_for("adversarial", "findings", *keys, f, i) for f in names] for i in ids],
                    dtype=np.int64)


def finding_records(cfg: AdversarialConfig, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
    """Per image and finding of ``batch`` the flip sweeps (``B``: the batch, ``K``: findings, ``E``: radii).

    Records: ``clean_logits`` ``(B, K)``; ``called`` ``(B, K)`` bool; per norm ``flipped_<norm>``
    ``(B, K, E)``, ``flip_min_eps_<norm>``, ``flip_prob_<norm>``, ``flip_evals_<norm>`` ``(B, K)``,
    ``flip_traces_<norm>`` ``(B, K, E, steps + 1)``; ``flip_fgsm`` ``(B, K, E)`` (Linf, when
    ``fgsm``); ``flip_large`` ``(B, K)``: flipped within the large radius of the check.
    """
    h, w, c = model.input_shape
    x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
    ids, names = [str(i) for i in batch.ids], list(model.class_names)
    logits = ctx.clean_logits(model, batch)
    called = probabilities(logits, "multilabel") >= FA.model_thresholds(model)[None, :]
    rec: dict[str, np.ndarray] = {"clean_logits": logits, "called": called}
    for norm in cfg.norms:
        s = FA.flip_sweep(_attack(cfg, norm), model, x, called, _grid(cfg, norm), seeds=_pair_seeds(ctx, ids, names, norm))
        rec.update({f"flipped_{norm}": s.flipped, f"flip_min_eps_{norm}": s.min_eps.astype(np.float32),
                    f"flip_prob_{norm}": s.adv_prob, f"flip_evals_{norm}": s.evals, f"flip_traces_{norm}": s.traces})
    if cfg.fgsm and "linf" in cfg.norms:
        rec["flip_fgsm"] = FA.flip_sweep(FA.LinfFlipFGSM(), model, x, called, cfg.epsilons_linf,
                                         seeds=_pair_seeds(ctx, ids, names, "fgsm")).flipped
    norm = _check_norm(cfg)
    large = rec[f"flipped_{norm}"][:, :, -1].copy()
    if not large.all():
        s = FA.flip_sweep(_attack(cfg, norm), model, x, called, [_large_radius(cfg, norm, (h, w, c))],
                          seeds=_pair_seeds(ctx, ids, names, "large"))
        large |= s.flipped[:, :, 0]
    rec["flip_large"] = large
    return rec


# ------------------------------------------------------------------------------ reduce (numpy)


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


def _mean_trace(traces: np.ndarray, j: int) -> np.ndarray | None:
    """The mean margin trace at radius ``j`` over the pairs the attack failed to flip there."""
    t = traces[:, :, j].reshape(-1, traces.shape[-1])
    ran = np.all(np.isfinite(t), axis=1)
    return t[ran].mean(axis=0) if ran.any() else None


def _checks(cfg: AdversarialConfig, rec: dict[str, np.ndarray], tolerance: float) -> tuple[list[Check], dict[str, Any]]:
    """Was the attack strong enough? It flips nearly every call at a large radius; FGSM never
    flips more than it; its margin rises and flattens on the calls it failed to flip."""
    norm = _check_norm(cfg)
    checks = [_large_check(rec["flip_large"], norm, cfg.large_epsilon_linf)]
    if "flip_fgsm" in rec:
        checks.append(_fgsm_check(rec["flipped_linf"], rec["flip_fgsm"], cfg.epsilons_linf, tolerance))
    checks.append(_trace_check(rec[f"flip_traces_{norm}"], norm, _grid(cfg, norm)))
    left = float(np.mean(~rec["flip_large"])) if rec["flip_large"].size else 0.0
    return checks, {"large_epsilon": {"norm": norm, "unflipped_share": left}}


def _large_check(large: np.ndarray, norm: str, large_linf: float) -> Check:
    left = float(np.mean(~large)) if large.size else 0.0
    radius = f"Linf {eps_name('linf', large_linf)}/255" if norm == "linf" else "the L2 radius of that Linf ball"
    if left > _NEAR_ZERO:
        return Check("flips nearly every call at a large epsilon", "fail",
                     f"{left:.3f} of the image-finding calls are still unflipped at {radius} (at most {_NEAR_ZERO:g} "
                     "expected): an attack that works moves a logit that far; masked gradients or a broken attack.")
    return Check("flips nearly every call at a large epsilon", "pass",
                 f"{left:.3f} of the image-finding calls are still unflipped at {radius} (at most {_NEAR_ZERO:g}).")


def _fgsm_check(pgd: np.ndarray, fgsm: np.ndarray, grid: tuple[float, ...], tolerance: float) -> Check:
    a, b = pgd.mean(axis=(0, 1)), fgsm.mean(axis=(0, 1))
    worse = [f"{eps_name('linf', e)}/255 (FGSM {q:.3f} > {p:.3f})" for e, p, q in zip(sorted(grid), a, b)
             if q > p + tolerance]
    if worse:
        return Check("FGSM vs PGD", "warn", f"one-step FGSM flips more calls than the iterated attack at "
                     f"{', '.join(worse)}: gradient masking or a badly tuned step.")
    return Check("FGSM vs PGD", "pass", f"the iterated attack flips at least as many calls as FGSM "
                 f"(-{tolerance:g}) at every Linf budget.")


def _trace_check(traces: np.ndarray, norm: str, grid: tuple[float, ...]) -> Check:
    runs = [j for j in range(len(grid)) if _mean_trace(traces, j) is not None]
    if not runs:
        return Check("margin rises and flattens", "pass", "every call the attack ran on flipped: nothing to judge.")
    j = min(runs, key=lambda r: abs(r - len(grid) // 2))
    trace = _mean_trace(traces, j)
    assert trace is not None
    steps, rise = len(trace) - 1, float(trace[-1] - trace[0])
    tail = float(abs(trace[-1] - trace[int(np.floor(0.8 * steps))]))
    where = f"{norm} {eps_name(norm, grid[j])}{'/255' if norm == 'linf' else ''}"
    if steps < 5:
        return Check("margin rises and flattens", "warn", f"only {steps} steps: too few to judge convergence.")
    if rise <= 0 or tail > max(_FLAT_SHARE * rise, 1e-3 * (1 + abs(float(trace[-1])))):
        return Check("margin rises and flattens", "warn",
                     f"on the calls it failed to flip at {where}, the mean margin rose by {rise:.4g} and still changes "
                     f"by {tail:.4g} over the last 20% of steps: optimisation incomplete; raise steps.")
    return Check("margin rises and flattens", "pass",
                 f"the mean margin at {where} rises by {rise:.4g} and the last 20% of steps change it by {tail:.3g}.")


def finding_result(cfg: AdversarialConfig, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext,
                   name: str) -> StudyResult:
    """Flip rates, minimal budgets, checks and report data from every sample's records."""
    names = list(data.class_names)
    thresholds, _ = finding_thresholds(ctx, data)
    result = StudyResult(name=name)
    curves = {norm: _fill_norm(result, norm, np.sort(np.asarray(_grid(cfg, norm), np.float64)), records, names,
                               cfg.n_bootstrap, ctx.seed_for("adversarial", "findings", "bootstrap", norm))
              for norm in cfg.norms}
    result.metrics["n_samples"] = float(len(records["called"]))
    result.tables["minimal_budgets"] = _budget_rows(result, cfg.norms, records["called"], names, thresholds)
    result.checks, check_data = _checks(cfg, records, cfg.tolerance)
    norm = _check_norm(cfg)
    e = eps_name(norm, sorted(_grid(cfg, norm))[len(_grid(cfg, norm)) // 2])
    result.data.update(
        description=DESCRIPTION, class_names=names, multilabel=True, thresholds=thresholds.tolist(), findings_curves=curves,
        attack={"name": "APGD" if cfg.attack == "ensemble" else "PGD", "steps": _steps(cfg),
                "restarts": cfg.apgd_restarts if cfg.attack == "ensemble" else cfg.restarts},
        attack_loss=FA.FLIP_LOSS, checks_data=check_data, correct_metrics=[],
        gradient_evals={n: int(records[f"flip_evals_{n}"].sum()) for n in cfg.norms},
        headline=[f"flip_off_rate.{norm}.{e}.macro", f"flip_on_rate.{norm}.{e}.macro",
                  f"min_budget_off.{norm}.median", f"min_budget_on.{norm}.median"],
    )
    result.records.update(called=records["called"], **{k: records[k] for k in records
                                                        if k.startswith(("flipped_", "flip_min_eps_", "flip_prob_"))})
    return result
