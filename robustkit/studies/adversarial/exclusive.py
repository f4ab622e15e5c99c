"""The ``adversarial`` study's block for one label per image (``task.exclusive``), inside the one reduce.

What exists only when each image has one label: robust accuracy and attack success per radius,
the minimal perturbation, the critical miss rate, the ensemble's running stages (APGD-DLR,
FAB-T, Square), foolbox's minimum-norm attacks, the misclassification checks, the
histograms and the gallery. Pure numpy over the records of
:mod:`robustkit.studies.adversarial.model_work`; the sweeps are rebuilt as
:class:`robustkit.metrics.sweep.SweepResult`, the one result type the attacks write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.metrics import classification as M
from robustkit.metrics.outputs import probabilities
from robustkit.metrics.sweep import (
    DECISION_ATTACKS,
    ENSEMBLE_ATTACKS,
    ENSEMBLE_LABELS,
    SweepResult,
    ensemble_plan,
    loss_description,
)
from robustkit.results import StudyResult
from robustkit.studies.adversarial.checks import CheckInputs, eps_name, run_checks
from robustkit.studies.adversarial.config import (
    AdversarialConfig,
    attack_steps,
    check_norm,
    grid,
    large_epsilon,
    targets,
)
from robustkit.studies.base import AuditContext
from robustkit.task import critical_missing_check

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset

__all__ = ["label_block"]


def label_block(cfg: AdversarialConfig, result: StudyResult, records: dict[str, np.ndarray], data: Dataset,
                ctx: AuditContext) -> dict[str, Any]:
    """Fill ``result`` (metrics, intervals, records, checks) from the records of every sample;
    returns the report data of the block."""
    y = np.asarray(data.labels, dtype=np.int64)
    logits = records["clean_logits"]
    names = list(data.class_names)
    target = targets(cfg, logits, y, names)
    sweeps = {norm: _sweep_from(records, norm, grid(cfg, norm), attack_steps(cfg)) for norm in cfg.norms}
    fgsm = _fgsm_from(records, cfg.epsilons_linf) if "fgsm_correct" in records else None
    foolbox = _foolbox_from(records, cfg.foolbox_attacks)
    ensemble = {norm: _by_attack(s, _attack_names(cfg, len(names))) for norm, s in sweeps.items()}
    columns = _fill_metrics(result, sweeps, fgsm, y, target, names, ensemble, ctx.critical_index)
    _fill_foolbox(result, foolbox, sweeps)
    result.intervals = _intervals(result.records["correct"], columns, y, cfg.n_bootstrap,
                                  ctx.seed_for("adversarial", "bootstrap"))
    norm = check_norm(cfg.norms)
    inputs = CheckInputs(y=y, sweeps=sweeps, fgsm=fgsm, foolbox=foolbox,
                         large_epsilon=large_epsilon(cfg, norm, ctx.input_shape),
                         large_correct=records["large_correct"], subset=np.flatnonzero(records["in_check"]),
                         sensitivity=records["sensitivity"], grad_finite=records["grad_finite"],
                         grad_zero=records["grad_zero"], logit_change=records["logit_change"],
                         logit_drift=records["logit_drift"], logit_scale=records["logit_scale"],
                         tolerance=cfg.tolerance, large_epsilon_linf=cfg.large_epsilon_linf, ensemble=ensemble)
    result.checks, check_data = run_checks(inputs)
    if ctx.critical_index is None:
        result.checks.append(critical_missing_check("the critical miss rate under attack"))
    return dict(
        clean_accuracy=float(np.mean(logits.argmax(axis=1) == y)) if len(y) else float("nan"),
        curves=_curves(result, sweeps, fgsm, ensemble),
        attack=_attack_summary(cfg, ensemble),
        histograms={norm: _histogram(s, y, names, norm) for norm, s in sweeps.items()},
        gallery=_gallery(data, ctx, records, logits, sweeps, names, cfg.n_examples),
        loss_traces={norm: _nan_list(s.loss_traces) for norm, s in sweeps.items()},
        attack_loss=loss_description(cfg.loss, str(ctx.model_info.get("output_kind", "softmax"))),
        gradient_evals={norm: int(s.gradient_evals) for norm, s in sweeps.items()},
        checks_data=check_data,
        correct_metrics=columns,
    )


def _attack_names(cfg: AdversarialConfig, num_classes: int) -> list[str]:
    """The ensemble's attacks that ran (empty for PGD), in order."""
    if cfg.attack != "ensemble":
        return []
    return ensemble_plan(num_classes, fab_steps=cfg.fab_steps, square_queries=cfg.square_queries)


# ------------------------------------------------------------------------------ from records


@dataclass
class _Found:
    """A minimum-norm attack's outcome on the attacked samples (from the records)."""

    success: np.ndarray
    l2: np.ndarray
    linf: np.ndarray


def _sweep_from(rec: dict[str, np.ndarray], norm: str, grid: tuple[float, ...], steps: int) -> SweepResult:
    """The sweep of ``norm`` rebuilt from the records; mean loss traces over the failed runs."""
    traces = rec[f"traces_{norm}"]
    means = np.full((len(grid), steps + 1), np.nan, np.float32)
    for k in range(len(grid)):
        ran = np.any(~np.isnan(traces[:, k]), axis=1)
        if ran.any():
            means[k] = traces[ran, k].mean(axis=0)
    return SweepResult(epsilons=np.sort(np.asarray(grid, dtype=np.float64)), correct=rec[f"correct_{norm}"],
                         min_eps=rec[f"min_eps_{norm}"], adv_pred=rec[f"adv_pred_{norm}"],
                         adv_conf=rec[f"adv_conf_{norm}"], loss_traces=means, kept={},
                         gradient_evals=int(rec[f"evals_{norm}"].sum()), traces=traces, evals=rec[f"evals_{norm}"],
                         broken_by=rec[f"by_{norm}"])


def _fgsm_from(rec: dict[str, np.ndarray], grid: tuple[float, ...]) -> SweepResult:
    """The FGSM sweep as far as the study reads it: radii and ``correct``."""
    correct = rec["fgsm_correct"]
    n, e = correct.shape
    return SweepResult(epsilons=np.sort(np.asarray(grid, dtype=np.float64)), correct=correct,
                         min_eps=np.zeros(n), adv_pred=np.zeros((n, e), np.int16), adv_conf=np.zeros((n, e), np.float32),
                         loss_traces=np.zeros((e, 2), np.float32), kept={}, gradient_evals=0)


def _foolbox_from(rec: dict[str, np.ndarray], attacks: tuple[str, ...]) -> dict[str, Any]:
    """foolbox outcomes by attack name on the attacked samples, plus their ``positions``."""
    if not attacks:
        return {}
    pos = np.flatnonzero(rec["fb_chosen"])
    out: dict[str, Any] = {"positions": pos}
    for name in attacks:
        out[name] = _Found(rec[f"fb_{name}_success"][pos], rec[f"fb_{name}_l2"][pos], rec[f"fb_{name}_linf"][pos])
    return out


# ------------------------------------------------------------------------------ metrics


def _quartiles(values: np.ndarray) -> tuple[float, float, float]:
    if values.size == 0:
        return (float("nan"),) * 3
    q = np.quantile(values, [0.25, 0.5, 0.75], method="lower")  # on the grid, inf allowed
    return float(q[0]), float(q[1]), float(q[2])


def _by_attack(s: SweepResult, attacks: list[str]) -> dict[str, np.ndarray]:
    """Per ensemble attack (in order), ``(N, E)`` still correct counting only the images broken
    by the attacks up to and including it (AutoAttack's running log; the last one is the
    ensemble's per-sample worst case). Empty for a single attack."""
    broken_at = s.min_eps[:, None] <= s.epsilons[None, :]
    return {name: ~(broken_at & (s.broken_by[:, None] <= ENSEMBLE_ATTACKS.index(name) + 1)) for name in attacks}


def _attack_summary(cfg: AdversarialConfig, ensemble: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """What ran, for the report: the attack, its budget, and the ensemble's attacks per norm."""
    if cfg.attack != "ensemble":
        return {"name": "PGD", "steps": cfg.steps, "restarts": cfg.restarts}
    return {"name": "ensemble", "apgd_steps": cfg.apgd_steps, "apgd_restarts": cfg.apgd_restarts,
            "fab_steps": cfg.fab_steps, "square_queries": cfg.square_queries,
            "attacks": {norm: [ENSEMBLE_LABELS[a] for a in by] for norm, by in ensemble.items()}}


def _fill_ensemble(result: StudyResult, s: SweepResult, norm: str, by: dict[str, np.ndarray],
                   columns: list[str], correct: list[np.ndarray]) -> None:
    """Per attack of the ensemble its robust accuracy per radius; the share only Square broke."""
    for name, ok in by.items():
        for k, eps in enumerate(s.epsilons):
            columns.append(f"robust_accuracy.{name}.{norm}.{eps_name(norm, eps)}")
            correct.append(ok[:, k])
            result.metrics[columns[-1]] = float(ok[:, k].mean())
    if "square" in by:
        code = ENSEMBLE_ATTACKS.index("square") + 1
        result.metrics[f"square_only_rate.{norm}"] = _rate(s.broken_by == code, s.min_eps > 0)


def _fill_metrics(result: StudyResult, sweeps: dict[str, SweepResult], fgsm: SweepResult | None,
                  y: np.ndarray, target: np.ndarray | None, names: list[str],
                  ensemble: dict[str, dict[str, np.ndarray]], critical: int | None) -> list[str]:
    """Robust accuracy, success rates, minimal perturbations; records; returns correct columns."""
    m, columns, correct = result.metrics, [], []
    clean_ok = sweeps[next(iter(sweeps))].min_eps > 0
    for norm, s in sweeps.items():
        unit = 255.0 if norm == "linf" else 1.0
        for k, eps in enumerate(s.epsilons):
            e = eps_name(norm, eps)
            columns.append(f"robust_accuracy.{norm}.{e}")
            correct.append(s.correct[:, k])
            m[columns[-1]] = float(s.correct[:, k].mean())
            hit = (s.adv_pred[:, k] == target) if target is not None else ~s.correct[:, k]
            m[f"attack_success_rate.{norm}.{e}"] = _rate(hit, clean_ok)
            if critical is not None:
                m[f"critical_miss_rate.{norm}.{e}"] = _rate(s.adv_pred[:, k] != critical, clean_ok & (y == critical))
        q25, q50, q75 = _quartiles(s.min_eps * unit)
        m.update({f"min_perturbation.{norm}.median": q50, f"min_perturbation.{norm}.q25": q25,
                  f"min_perturbation.{norm}.q75": q75})
        for k, name in enumerate(names):
            m[f"min_perturbation.{norm}.median.{name}"] = _quartiles(s.min_eps[y == k] * unit)[1]
        result.records[f"min_eps_{norm}"] = s.min_eps.astype(np.float32)
        result.records[f"adv_pred_{norm}"] = s.adv_pred.astype(np.int16)
        result.records[f"broken_by_{norm}"] = s.broken_by.astype(np.int8)
        _fill_ensemble(result, s, norm, ensemble.get(norm, {}), columns, correct)
    if fgsm is not None:
        for k, eps in enumerate(fgsm.epsilons):
            columns.append(f"robust_accuracy.fgsm.linf.{eps_name('linf', eps)}")
            correct.append(fgsm.correct[:, k])
            m[columns[-1]] = float(fgsm.correct[:, k].mean())
    result.records["correct"] = np.stack(correct, axis=1)
    return columns


def _rate(hit: np.ndarray, among: np.ndarray) -> float:
    return float(np.mean(hit[among])) if np.any(among) else float("nan")


def _intervals(correct: np.ndarray, columns: list[str], y: np.ndarray, n_boot: int, seed: int) -> dict[str, list[float]]:
    if len(y) < 2:
        return {}
    lo, hi = M.bootstrap_interval(lambda idx: correct[idx].mean(axis=0), len(y), n_boot=n_boot, seed=seed, strata=y)
    return {name: [float(a), float(b)] for name, a, b in zip(columns, lo, hi)}


def _fill_foolbox(result: StudyResult, foolbox: dict[str, Any], sweeps: dict[str, SweepResult]) -> None:
    """Per attack: success rate and L2 (and Linf in /255) perturbation quartiles; the table."""
    if not foolbox:
        return
    pos = foolbox["positions"]
    rows: list[dict[str, Any]] = []
    for name, r in foolbox.items():
        if name == "positions":
            continue
        q25, q50, q75 = _quartiles(r.l2)
        linf = _quartiles(r.linf * 255)[1]
        result.metrics.update({f"foolbox.{name}.success_rate": float(r.success.mean()) if len(pos) else float("nan"),
                               f"foolbox.{name}.median_l2": q50, f"foolbox.{name}.q25_l2": q25,
                               f"foolbox.{name}.q75_l2": q75, f"foolbox.{name}.median_linf": linf})
        result.directions[f"foolbox.{name}.success_rate"] = "lower"
        rows.append({"attack": name, "kind": "decision-based" if name in DECISION_ATTACKS else "gradient",
                     "samples": len(pos), "success_rate": result.metrics[f"foolbox.{name}.success_rate"],
                     "median_l2": q50, "q25_l2": q25, "q75_l2": q75, "median_linf_255": linf})
    for norm, s in sweeps.items():
        unit = 255.0 if norm == "linf" else 1.0
        q25, q50, q75 = _quartiles(s.min_eps[pos] * unit)
        rows.append({"attack": f"PGD {norm} (grid)", "kind": "gradient (this study)", "samples": len(pos),
                     "success_rate": float(np.isfinite(s.min_eps[pos]).mean()) if len(pos) else float("nan"),
                     "median_l2": q50 if norm == "l2" else None, "q25_l2": q25 if norm == "l2" else None,
                     "q75_l2": q75 if norm == "l2" else None, "median_linf_255": q50 if norm == "linf" else None})
    result.tables["foolbox"] = rows


# ------------------------------------------------------------------------------ report data


def _nan_list(a: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]


def _curves(result: StudyResult, sweeps: dict[str, SweepResult], fgsm: SweepResult | None,
            ensemble: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per norm: radii, the attack's robust accuracy (``pgd``, named by ``label``) with its
    interval, each ensemble attack's running robust accuracy (``attacks``) and FGSM's."""
    out: dict[str, Any] = {}
    for norm, s in sweeps.items():
        by = ensemble.get(norm, {})
        curve: dict[str, Any] = {"unit": "/255" if norm == "linf" else "L2", "epsilons": [], "pgd": [], "low": [],
                                 "high": [], "label": "ensemble" if by else "PGD",
                                 "attacks": {ENSEMBLE_LABELS[a]: [result.metrics[
                                     f"robust_accuracy.{a}.{norm}.{eps_name(norm, e)}"] for e in s.epsilons]
                                     for a in by}}
        for eps in s.epsilons:
            name = f"robust_accuracy.{norm}.{eps_name(norm, eps)}"
            lo, hi = result.intervals.get(name, [float("nan")] * 2)
            curve["epsilons"].append(float(eps * 255 if norm == "linf" else eps))
            curve["pgd"].append(result.metrics[name])
            curve["low"].append(lo)
            curve["high"].append(hi)
        if norm == "linf" and fgsm is not None:
            curve["fgsm"] = [result.metrics[f"robust_accuracy.fgsm.linf.{eps_name('linf', e)}"] for e in fgsm.epsilons]
        out[norm] = curve
    return out


def _histogram(s: SweepResult, y: np.ndarray, names: list[str], norm: str) -> dict[str, Any]:
    """Counts per class of the minimal perturbation: clean error (0), each radius, not broken (None)."""
    bins = np.r_[0.0, s.epsilons, np.inf]
    counts = {name: [int(np.sum((y == k) & (s.min_eps == b))) for b in bins] for k, name in enumerate(names)}
    unit = 255.0 if norm == "linf" else 1.0
    return {"unit": "/255" if norm == "linf" else "L2",
            "bins": [round(float(b) * unit, 6) if np.isfinite(b) else None for b in bins], "counts": counts}


def _gallery(data: Dataset, ctx: AuditContext, rec: dict[str, np.ndarray], logits: np.ndarray,
             sweeps: dict[str, SweepResult], names: list[str], n: int) -> list[dict[str, Any]]:
    """Clean image, magnified perturbation and adversarial image for a few broken samples,
    chosen among the gallery candidates (:func:`_gallery_candidates`) that the attack broke."""
    if n <= 0 or not sweeps or ctx.input_shape is None:
        return []
    norm = check_norm(tuple(sweeps))
    s = sweeps[norm]
    y = np.asarray(data.labels, dtype=np.int64)
    critical = ctx.critical_index
    probs = probabilities(logits, str(ctx.model_info.get("output_kind", "softmax")))
    kept = [i for i in _gallery_candidates(y, logits.argmax(axis=1), names, 4 * n, critical) if rec["adv_png"][i]]

    def flips(i: int) -> bool:  # a critical case the attack turned into another class
        k = int(np.searchsorted(s.epsilons, s.min_eps[i]))
        return critical is not None and y[i] == critical and s.adv_pred[i, k] != critical

    flipped = sorted((i for i in kept if flips(i)), key=lambda i: (s.min_eps[i], i))[: max(1, n // 2)]
    rest = sorted((i for i in kept if i not in flipped), key=lambda i: (s.min_eps[i], y[i], i))
    chosen = (flipped + rest)[:n]
    h, w, c = ctx.input_shape
    x = data.load_images(np.asarray(chosen, dtype=np.int64), size=(h, w), channels=c)
    out = []
    for j, i in enumerate(chosen):
        k = int(np.searchsorted(s.epsilons, s.min_eps[i]))
        eps = s.min_eps[i]
        out.append({
            "id": str(data.ids[i]), "label": names[int(y[i])], "clean_pred": names[int(probs[i].argmax())],
            "clean_confidence": float(probs[i].max()), "adv_pred": names[int(s.adv_pred[i, k])],
            "adv_confidence": float(s.adv_conf[i, k]), "norm": norm,
            "epsilon": f"{eps_name(norm, eps)}/255" if norm == "linf" else f"L2 {eps_name(norm, eps)}",
            "clean_png": png_base64(x[j], max_side=96), "delta_png": str(rec["delta_png"][i]),
            "adv_png": str(rec["adv_png"][i]),
        })
    return out

def _gallery_candidates(y: np.ndarray, pred: np.ndarray, names: list[str], n: int, critical: int | None) -> list[int]:
    """Correctly classified samples, round-robin over classes, the critical class's first."""
    order = sorted(range(len(names)), key=lambda k: (k != critical, k))
    pools = [list(np.flatnonzero((y == k) & (pred == y))) for k in order]
    out: list[int] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(int(pool.pop(0)))
    return out
