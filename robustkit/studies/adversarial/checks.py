"""Honesty checks of the ``adversarial`` study: was the attack strong enough to believe?

After Carlini et al. 2019 ("On Evaluating Adversarial Robustness") and Pintor et al. 2022
("Indicators of Attack Failure"). :func:`run_checks` takes the study's sweeps and the
per-sample outcomes of its check attacks (:class:`CheckInputs`, all from the study's
records: the model work is done in the study's ``map``) and returns one
:class:`~robustkit.results.Check` per test: near zero at a large epsilon, steps and
restarts, black-box vs white-box, minimum-norm attacks vs PGD, the loss trace, the input
gradients, determinism, FGSM vs PGD, and for the AutoAttack-style ensemble "the ensemble is
not above any single attack" and "Square breaks nothing the gradient attacks could not".
Pure numpy: no model here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustkit.metrics.sweep import DECISION_ATTACKS, ENSEMBLE_ATTACKS, SweepResult
from robustkit.results import Check

__all__ = ["SENSITIVITY", "CheckInputs", "eps_name", "run_checks", "run_flip_checks"]

#: the stronger attacks of the check "steps and restarts", in the order of their records
SENSITIVITY = ("2x steps", "+1 restart")


def eps_name(norm: str, eps: float) -> str:
    """The metric suffix of a radius: Linf in /255 units (``0.5``, ``8``), L2 as is (``0.25``)."""
    value = eps * 255 if norm == "linf" else eps
    return f"{round(value, 4):g}"


# After Carlini et al. 2019, "On Evaluating Adversarial Robustness", and Pintor et al. 2022,
# "Indicators of Attack Failure": each says whether the attack was strong enough to believe.

_NEAR_ZERO = 0.05  # robust accuracy allowed at the large radius
_ZERO_GRADIENT_SHARE = 0.05  # share of all-zero input gradients before warning
_FLAT_SHARE = 0.1  # the last 20% of steps may add at most this share of the loss rise


@dataclass
class CheckInputs:
    """What the checks need, all per-sample outcomes from the study's records.

    Attributes:
        y: int64 (N,) labels.
        sweeps: The PGD epsilon sweep per norm; ``fgsm`` the FGSM sweep (Linf) or None.
        foolbox: foolbox results by attack name (``success``, ``l2``, ``linf`` per attacked
            sample), plus ``positions`` (the attacked samples).
        large_epsilon: The large radius of the near-zero check in the units of the first
            norm (Linf: pixel units; L2: the Linf radius times sqrt of the image size).
        large_correct: (N,) bool: still correct under PGD at ``large_epsilon`` (False for a
            sample broken within the grid).
        subset: Sorted sample positions of the step/restart and determinism checks.
        sensitivity: (N, 2) bool: broken by the stronger attacks of :data:`SENSITIVITY` at
            the middle radius (samples of ``subset`` still correct there; False elsewhere).
        grad_finite: (N,) bool: the input gradient of the attack loss is finite.
        grad_zero: (N,) bool: it is all zero.
        logit_change: (N,) largest logit change between two passes over the sample
            (``subset`` only); ``logit_drift``: between a pass and the clean pass;
            ``logit_scale``: the largest absolute logit of the pass.
        tolerance: Allowed change in robust accuracy.
        large_epsilon_linf: The large Linf radius (pixel units) of the near-zero check.
        ensemble: per norm, per attack of the ensemble (in the order they ran), ``(N, E)``
            bool still correct counting the images broken by the attacks up to that one;
            empty when the sweep ran a single attack.
    """

    y: np.ndarray
    sweeps: dict[str, SweepResult]
    fgsm: SweepResult | None
    foolbox: dict[str, Any]
    large_epsilon: float
    large_correct: np.ndarray
    subset: np.ndarray
    sensitivity: np.ndarray
    grad_finite: np.ndarray
    grad_zero: np.ndarray
    logit_change: np.ndarray
    logit_drift: np.ndarray
    logit_scale: np.ndarray
    tolerance: float
    large_epsilon_linf: float
    ensemble: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def norm(self) -> str:
        return "linf" if "linf" in self.sweeps else next(iter(self.sweeps))


def run_checks(c: CheckInputs) -> tuple[list[Check], dict[str, Any]]:
    """Run every check that applies; returns the checks and the numbers behind them."""
    data: dict[str, Any] = {}
    checks = [
        _check_large_epsilon(c, data),
        _check_sensitivity(c, data),
        _check_black_box(c),
        _check_minimum_norm(c),
        _check_loss_trace(c),
        _check_gradients(c, data),
        _check_determinism(c, data),
        _check_fgsm(c),
        _check_ensemble(c),
        _check_square(c),
    ]
    return [k for k in checks if k is not None], data


def _check_large_epsilon(c: CheckInputs, data: dict[str, Any]) -> Check:
    n, eps = len(c.y), c.large_epsilon
    label = f"Linf {eps_name('linf', eps)}/255" if c.norm == "linf" else f"L2 {eps:.3g}"
    alive = np.flatnonzero(c.large_correct)
    acc = alive.size / n if n else float("nan")
    data["large_epsilon"] = {"norm": c.norm, "epsilon": float(eps), "robust_accuracy": acc}
    if n and acc > _NEAR_ZERO:
        return Check("near zero at a large epsilon", "fail",
                     f"robust accuracy is still {acc:.3f} at {label} ({alive.size} of {n} images unbroken); an attack "
                     f"that works should break nearly every image at this budget (at most {_NEAR_ZERO:g} expected).")
    return Check("near zero at a large epsilon", "pass",
                 f"robust accuracy falls to {acc:.3f} at {label} (at most {_NEAR_ZERO:g} expected).")


def _check_sensitivity(c: CheckInputs, data: dict[str, Any]) -> Check:
    s = c.sweeps[c.norm]
    if not s.epsilons.size or not c.subset.size:
        return Check("steps and restarts", "pass", "nothing to re-attack.")
    k = len(s.epsilons) // 2
    alive = c.subset[s.correct[c.subset, k]]
    drops = {label: int(np.sum(c.sensitivity[alive, j])) / len(c.subset) for j, label in enumerate(SENSITIVITY)}
    where = f"{c.norm} {eps_name(c.norm, s.epsilons[k])}{'/255' if c.norm == 'linf' else ''}"
    data["sensitivity"] = {"epsilon": float(s.epsilons[k]), "samples": int(len(c.subset)), **drops}
    text = ", ".join(f"{k_}: -{v:.3f}" for k_, v in drops.items())
    if max(drops.values()) > c.tolerance:
        return Check("steps and restarts", "warn",
                     f"a stronger attack lowers robust accuracy at {where} on {len(c.subset)} images ({text}), more "
                     f"than the tolerance {c.tolerance:g}: the attack has not converged; raise steps or restarts.")
    return Check("steps and restarts", "pass",
                 f"doubling the steps or adding a restart changes robust accuracy at {where} by at most "
                 f"{c.tolerance:g} on {len(c.subset)} images ({text}).")


def _beaten(c: CheckInputs, r: Any) -> list[str]:
    """Radii where attack result ``r`` broke images inside the ball that PGD left correct."""
    pos, found = c.foolbox["positions"], []
    for norm, s in c.sweeps.items():
        dist = r.linf if norm == "linf" else r.l2
        for k, eps in enumerate(s.epsilons):
            n = int(np.sum((dist <= eps * (1 + 1e-4)) & r.success & s.correct[pos, k]))
            if n:
                found.append(f"{n} at {norm} {eps_name(norm, eps)}{'/255' if norm == 'linf' else ''}")
    return found


def _check_black_box(c: CheckInputs) -> Check | None:
    names = [n for n in c.foolbox if n in DECISION_ATTACKS]
    if not names:
        return None
    found = [f"{n}: {', '.join(b)}" for n in names if (b := _beaten(c, c.foolbox[n]))]
    if found:
        return Check("black-box never beats white-box", "fail",
                     f"a decision-based attack broke images inside budgets where PGD failed ({'; '.join(found)}): "
                     "the gradients mislead PGD (gradient masking) or PGD is too weak.")
    return Check("black-box never beats white-box", "pass",
                 f"{', '.join(names)} found no adversarial example inside a budget where PGD failed.")


def _check_minimum_norm(c: CheckInputs) -> Check | None:
    names = [n for n in c.foolbox if n != "positions" and n not in DECISION_ATTACKS]
    if not names:
        return None
    found = [f"{n}: {', '.join(b)}" for n in names if (b := _beaten(c, c.foolbox[n]))]
    if found:
        return Check("minimum-norm attacks vs PGD", "warn",
                     f"foolbox attacks broke images inside budgets where PGD failed ({'; '.join(found)}): PGD "
                     "underestimates the attack; raise steps or restarts.")
    return Check("minimum-norm attacks vs PGD", "pass",
                 f"{', '.join(names)} found no adversarial example inside a budget where PGD failed.")


def _check_loss_trace(c: CheckInputs) -> Check:
    s = c.sweeps[c.norm]
    runs = [k for k in range(len(s.epsilons)) if np.all(np.isfinite(s.loss_traces[k]))]
    if not runs:
        return Check("loss rises and flattens", "pass",
                     "the attack broke every image it ran on: no failed optimisation to judge.")
    k = runs[len(runs) // 2] if len(s.epsilons) // 2 not in runs else len(s.epsilons) // 2
    trace = s.loss_traces[k]
    steps = len(trace) - 1
    rise = float(trace[-1] - trace[0])
    tail = float(abs(trace[-1] - trace[int(math.floor(0.8 * steps))]))
    where = f"{c.norm} {eps_name(c.norm, s.epsilons[k])}{'/255' if c.norm == 'linf' else ''}"
    if steps < 5:
        return Check("loss rises and flattens", "warn", f"only {steps} steps: too few to judge convergence.")
    if rise <= 0:
        return Check("loss rises and flattens", "warn",
                     f"the mean attack loss did not rise over the {steps} steps at {where} ({trace[0]:.4g} -> "
                     f"{trace[-1]:.4g}): optimisation incomplete or the step size is wrong.")
    if tail > max(_FLAT_SHARE * rise, 1e-3 * (1 + abs(float(trace[-1])))):
        return Check("loss rises and flattens", "warn",
                     f"on the images it failed to break at {where}, the mean attack loss still changes by "
                     f"{tail:.4g} over the last 20% of steps ({tail / rise:.0%} of its rise): optimisation "
                     "incomplete; raise steps.")
    return Check("loss rises and flattens", "pass",
                 f"the mean attack loss at {where} rises by {rise:.4g} and the last 20% of steps change it by "
                 f"{tail:.3g} (under {_FLAT_SHARE:.0%} of the rise).")


def _check_gradients(c: CheckInputs, data: dict[str, Any]) -> Check:
    n = len(c.grad_finite)
    bad = int(np.sum(~c.grad_finite))
    zero = float(np.mean(c.grad_zero)) if n else 0.0
    data["gradients"] = {"non_finite": bad, "zero_share": zero}
    if bad:
        return Check("gradients finite and non-zero", "fail",
                     f"{bad} of {n} images have NaN or inf input gradients: attacks on them are meaningless.")
    if zero > _ZERO_GRADIENT_SHARE:
        return Check("gradients finite and non-zero", "warn",
                     f"{zero:.0%} of the images have an all-zero input gradient (over {_ZERO_GRADIENT_SHARE:.0%}): "
                     "saturation or gradient masking (for example a non-differentiable input step); "
                     "robust accuracy overstates robustness.")
    return Check("gradients finite and non-zero", "pass",
                 f"input gradients of the attack loss are finite, and {zero:.0%} of the images have an all-zero one.")


def _check_determinism(c: CheckInputs, data: dict[str, Any]) -> Check:
    n = len(c.subset)
    diff = float(np.max(c.logit_change[c.subset])) if n else 0.0
    drift = float(np.max(c.logit_drift[c.subset])) if n else 0.0
    data["determinism"] = {"max_abs_diff": diff, "max_abs_diff_clean_pass": drift}
    if diff > 0 or drift > 1e-3 * (1 + float(c.logit_scale[c.subset].max(initial=0))):
        return Check("deterministic predictions", "warn",
                     f"two passes over the same {n} images differ (largest logit change {max(diff, drift):.3g}): "
                     "a randomised model needs expectation over transformation (EOT) in the attack, which this "
                     "study does not do.")
    return Check("deterministic predictions", "pass", f"two passes over {n} images give identical logits.")


def _check_fgsm(c: CheckInputs) -> Check | None:
    if c.fgsm is None or "linf" not in c.sweeps:
        return None
    s, f = c.sweeps["linf"], c.fgsm
    worse = [f"{eps_name('linf', e)}/255 (PGD {s.correct[:, k].mean():.3f} > FGSM {f.correct[:, k].mean():.3f})"
             for k, e in enumerate(s.epsilons) if s.correct[:, k].mean() > f.correct[:, k].mean() + c.tolerance]
    if worse:
        return Check("FGSM vs PGD", "warn",
                     f"one-step FGSM beats multi-step PGD at {', '.join(worse)}: a sign of gradient masking or a "
                     "badly tuned PGD step.")
    return Check("FGSM vs PGD", "pass",
                 f"PGD robust accuracy is at most FGSM's (+{c.tolerance:g}) at every Linf budget.")


def _radius(norm: str, eps: float) -> str:
    return f"{norm} {eps_name(norm, eps)}{'/255' if norm == 'linf' else ''}"


def _check_ensemble(c: CheckInputs) -> Check | None:
    """The ensemble's robust accuracy is not above any of its attacks' (by construction: a bug
    otherwise) nor, image by image, above FGSM's (FGSM runs alone on every image)."""
    if not any(c.ensemble.values()):
        return None
    above, fgsm_only = [], []
    for norm, by in c.ensemble.items():
        s = c.sweeps[norm]
        for name, ok in by.items():
            above += [f"{name} at {_radius(norm, e)}" for k, e in enumerate(s.epsilons)
                      if s.correct[:, k].mean() > ok[:, k].mean()]
        if norm == "linf" and c.fgsm is not None:
            fgsm_only += [f"{int(n)} at {_radius(norm, e)}" for k, e in enumerate(s.epsilons)
                          if (n := np.sum(s.correct[:, k] & ~c.fgsm.correct[:, k]))]
    if above:
        return Check("ensemble not above any single attack", "fail",
                     f"the ensemble's robust accuracy is above that of {', '.join(above)}: the per-sample worst "
                     "case was not taken (a bug in the study).")
    if fgsm_only:
        return Check("ensemble not above any single attack", "warn",
                     f"one-step FGSM broke images the ensemble left correct ({', '.join(fgsm_only)}): the "
                     "ensemble's search failed where a single gradient step did (masking or too few steps).")
    return Check("ensemble not above any single attack", "pass",
                 "at every budget the ensemble's robust accuracy is at most each of its attacks', and every "
                 "image FGSM broke, the ensemble broke too.")


def _check_square(c: CheckInputs) -> Check | None:
    """A gradient-free success on an image the gradient attacks failed on points at masked gradients."""
    runs = [norm for norm, by in c.ensemble.items() if "square" in by]
    if not runs:
        return None
    found, code = [], ENSEMBLE_ATTACKS.index("square") + 1
    for norm in runs:
        s = c.sweeps[norm]
        hits = s.broken_by == code
        found += [f"{int(np.sum(hits & (s.min_eps == e)))} at {_radius(norm, e)}" for e in s.epsilons
                  if np.any(hits & (s.min_eps == e))]
    if found:
        return Check("Square breaks nothing the gradient attacks could not", "warn",
                     f"the gradient-free Square attack broke images that the gradient attacks (APGD, FAB-T) could not "
                     f"({', '.join(found)}): the gradients mislead the gradient attacks (gradient masking) or "
                     "they need more steps; trust the ensemble's number, not APGD's alone.")
    return Check("Square breaks nothing the gradient attacks could not", "pass",
                 "Square (gradient-free) broke no image that the gradient attacks left correct.")


# ------------------------------------------------------------------------------ per output: flipped calls


def _mean_trace(traces: np.ndarray, j: int) -> np.ndarray | None:
    """The mean margin trace at radius ``j`` over the pairs the attack failed to flip there."""
    t = traces[:, :, j].reshape(-1, traces.shape[-1])
    ran = np.all(np.isfinite(t), axis=1)
    return t[ran].mean(axis=0) if ran.any() else None


def run_flip_checks(rec: dict[str, np.ndarray], *, norm: str, grid: tuple[float, ...], epsilons_linf: tuple[float, ...],
                    large_epsilon_linf: float, tolerance: float) -> tuple[list[Check], dict[str, Any]]:
    """Multi-label (per output, the attack flips calls): was the attack strong enough? It flips nearly every call at a large radius; FGSM never
    flips more than it; its margin rises and flattens on the calls it failed to flip."""
    checks = [_large_check(rec["flip_large"], norm, large_epsilon_linf)]
    if "flip_fgsm" in rec:
        checks.append(_fgsm_check(rec["flipped_linf"], rec["flip_fgsm"], epsilons_linf, tolerance))
    checks.append(_trace_check(rec[f"flip_traces_{norm}"], norm, grid))
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
