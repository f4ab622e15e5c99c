"""The smoothing study's ``reduce``: certificates, the certified-accuracy curve and checks.

Pure numpy/scipy over the counts ``map`` stored (:mod:`robustkit.studies.smoothing`); the math
is :mod:`robustkit.metrics.smoothing`. One path for every task kind: a decision is a call, one
per image for exclusive outputs (a multi-class smoothed classifier), one per output for
multi-label ones (binary smoothed classifiers, counts ``(absent, present)``); an image is
certified correct at radius ``r`` when every call is right and certified at ``r`` or more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.metrics.smoothing import (
    ABSTAIN,
    Certificate,
    certified_at,
    certify,
    predict,
    radius_ceiling,
)
from robustkit.results import Check, StudyResult

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.studies.base import AuditContext, Records
    from robustkit.studies.smoothing import SmoothingConfig

__all__ = ["binomial_interval", "call_counts", "contradictions", "key", "smoothing_reduce"]

#: points of the stored certified-accuracy curve (from 0 to the largest ceiling)
CURVE_POINTS = 41
#: a smoothed accuracy this far below the base model's warns
ACCURACY_GAP_WARN = 0.1


def key(x: float) -> str:
    """A noise level or radius as it appears in metric names (``0.25``, ``0.5``, ``1``)."""
    return f"{float(x):g}"


def binomial_interval(k: int, n: int, *, level: float = 0.95) -> list[float]:
    """The exact (Clopper-Pearson) two-sided interval of ``k`` successes in ``n``."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return [lo, hi]


def call_counts(c0: np.ndarray, c: np.ndarray, *, exclusive: bool, n0: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The counts ``(N, K)`` of calls as CERTIFY's decisions ``(N, C, classes)``: one multi-class
    decision per image (``C = 1``), or, several labels per image, one binary decision per output
    over (absent, present)."""
    if exclusive:
        return c0[:, None, :], c[:, None, :]
    return np.stack([n0 - c0, c0], axis=-1), np.stack([n - c, c], axis=-1)


@dataclass(frozen=True)
class _Sigma:
    """One noise level's decisions: calls ``(N, C)`` (C = 1 for exclusive tasks, K otherwise)."""

    cert: Certificate
    right: np.ndarray
    predicted: np.ndarray
    predict_right: np.ndarray

    @property
    def image_right(self) -> np.ndarray:
        return np.asarray(self.right.all(axis=1))

    @property
    def image_radius(self) -> np.ndarray:
        """Per image: the smallest radius over its calls, 0 unless every call is right."""
        return np.where(self.image_right, self.cert.radius.min(axis=1), 0.0)


def _decide(c0: np.ndarray, c: np.ndarray, targets: np.ndarray, *, exclusive: bool, sigma: float,
            cfg: SmoothingConfig) -> _Sigma:
    """CERTIFY and PREDICT at one noise level from the counts of calls ``(N, K)``."""
    truth = targets.argmax(axis=1)[:, None] if exclusive else targets.astype(np.int64)
    c0, c = call_counts(c0, c, exclusive=exclusive, n0=cfg.n0, n=cfg.n)
    cert = certify(c0, c, sigma=sigma, alpha=cfg.alpha)
    predicted = predict(c, alpha=cfg.alpha)
    return _Sigma(cert, cert.label == truth, predicted, predicted == truth)


def smoothing_reduce(records: Records, data: Dataset, ctx: AuditContext, cfg: SmoothingConfig) -> StudyResult:
    """The :class:`StudyResult` of the smoothing study from its records (see module doc)."""
    exclusive = ctx.task.exclusive if ctx.task is not None else ctx.model_info.get("output_kind") != "multilabel"
    targets = np.asarray(data.targets, bool)
    radii = np.asarray(cfg.radii, np.float64)
    base_right = (np.asarray(records["base_calls"], bool) == targets).all(axis=1)
    res = StudyResult(name="smoothing", metrics={"n_samples": float(len(data)), "base_accuracy": float(base_right.mean())})
    res.intervals["base_accuracy"] = binomial_interval(int(base_right.sum()), len(base_right))
    columns, names, levels = [], [], []
    for j, sigma in enumerate(cfg.sigmas):
        level = _decide(records["counts0"][:, j], records["counts"][:, j], targets, exclusive=exclusive,
                        sigma=sigma, cfg=cfg)
        levels.append(level)
        cols, col_names = _sigma_metrics(res, level, sigma, radii, cfg)
        columns.append(cols)
        names += col_names
        if not exclusive:
            _finding_rates(res, level, sigma, radii, targets, [str(n) for n in data.class_names])
    found = [contradictions(records, lv, j, exclusive=exclusive, n=cfg.n, alpha=cfg.alpha) for j, lv in enumerate(levels)]
    for sigma, (checked, contradicted) in zip(cfg.sigmas, found):
        res.metrics[f"checked.{key(sigma)}"] = float(checked.sum())
        res.metrics[f"contradictions.{key(sigma)}"] = float(contradicted.sum())
    res.records.update(_records(records, levels, base_right, np.column_stack(columns), exclusive))
    if found:
        res.records["contradicted"] = np.column_stack([c for _, c in found]).astype(np.uint8)
    res.data.update(_data(levels, cfg, exclusive, ctx), correct_metrics=names, check=_check_data(records, found, cfg))
    res.tables["certified accuracy"] = _table(res, cfg)
    res.checks = _checks(res, cfg, ctx) + [_contradiction_check(res, cfg)]
    return res


def contradictions(records: Records, level: _Sigma, j: int, *, exclusive: bool, n: int,
                   alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(checked, contradicted)`` ``(N,)`` bool at noise level ``j``: the images whose certificate
    an attack tried, and those where PREDICT at an attack point closer than the certified radius
    gave a call (not an abstention) other than the certified one."""
    if "check_output" not in records:
        return np.zeros(len(level.right), bool), np.zeros(len(level.right), bool)
    output = np.asarray(records["check_output"])[:, j]
    checked, rows = output >= 0, np.arange(len(output))
    col = np.zeros_like(output) if exclusive else np.maximum(output, 0)
    label, radius = level.cert.label[rows, col], level.cert.radius[rows, col]
    contradicted = np.zeros(len(output), bool)
    for p in range(2):  # the smoothed model's attack point, the base model's
        counts = np.asarray(records["check_counts"])[:, j, p]
        if not exclusive:
            present = counts[rows, np.maximum(output, 0)]
            counts = np.stack([n - present, present], axis=-1)
        called = predict(counts, alpha=alpha)
        inside = np.asarray(records["check_distance"])[:, j, p] < radius
        contradicted |= checked & np.asarray(records["check_used"])[:, j, p] & inside & (called != ABSTAIN) & (called != label)
    return checked, contradicted


def _sigma_metrics(res: StudyResult, level: _Sigma, sigma: float, radii: np.ndarray,
                   cfg: SmoothingConfig) -> tuple[np.ndarray, list[str]]:
    """Store one noise level's metrics; return its per-image 0/1 columns and their names."""
    s = key(sigma)
    hits = certified_at(level.image_right, level.image_radius, radii)
    clean = level.predict_right.all(axis=1)
    names = [f"certified_accuracy.{s}.{key(r)}" for r in radii] + [f"clean_accuracy.{s}"]
    cols = np.column_stack([hits, clean]).astype(np.uint8)
    for name, col in zip(names, cols.T):
        res.metrics[name] = float(col.mean())
        res.intervals[name] = binomial_interval(int(col.sum()), len(col))
    res.metrics[f"acr.{s}"] = float(level.image_radius.mean())
    res.metrics[f"abstention_rate.{s}"] = float((level.cert.label == ABSTAIN).mean())
    res.metrics[f"predict_abstention_rate.{s}"] = float((level.predicted == ABSTAIN).mean())
    res.metrics[f"radius_ceiling.{s}"] = radius_ceiling(cfg.n, sigma=sigma, alpha=cfg.alpha)
    return cols, names


def _finding_rates(res: StudyResult, level: _Sigma, sigma: float, radii: np.ndarray, targets: np.ndarray,
                   findings: list[str]) -> None:
    """Multi-label: per finding, the certified rate of its present and of its absent calls."""
    for k, finding in enumerate(findings):
        hits = certified_at(level.right[:, k], level.cert.radius[:, k], radii)
        for side, rows in (("present", targets[:, k]), ("absent", ~targets[:, k])):
            for r, col in zip(radii, hits[rows].T if rows.any() else [np.zeros(0)] * len(radii)):
                res.metrics[f"certified_rate.{key(sigma)}.{key(r)}.{side}.{finding}"] = (
                    float(col.mean()) if len(col) else float("nan"))


def _records(records: Records, levels: list[_Sigma], base_right: np.ndarray, correct: np.ndarray,
             exclusive: bool) -> Records:
    """Per sample: counts, certified class (-1: abstain) and radius per noise level (and call)."""
    def stack(get: Any) -> np.ndarray:
        arr = np.stack([get(lv) for lv in levels], axis=1)  # (N, S, C)
        return arr[:, :, 0] if exclusive else arr

    return {"counts0": np.asarray(records["counts0"]), "counts": np.asarray(records["counts"]),
            "label": stack(lambda lv: lv.cert.label).astype(np.int64),
            "radius": stack(lambda lv: lv.cert.radius).astype(np.float64),
            "p_lower": stack(lambda lv: lv.cert.p_lower).astype(np.float64),
            "predicted": stack(lambda lv: lv.predicted).astype(np.int64),
            "base_correct": base_right.astype(np.uint8), "correct": correct,
            **{k: np.asarray(v) for k, v in records.items() if k.startswith("check_")}}


def _data(levels: list[_Sigma], cfg: SmoothingConfig, exclusive: bool, ctx: AuditContext) -> dict[str, Any]:
    """What the view draws: the certified-accuracy curve per noise level and the ceilings."""
    ceilings = {key(s): radius_ceiling(cfg.n, sigma=s, alpha=cfg.alpha) for s in cfg.sigmas}
    grid = np.linspace(0.0, max([*ceilings.values(), *cfg.radii, 1e-6]), CURVE_POINTS)
    curve = {key(s): certified_at(lv.image_right, lv.image_radius, grid).mean(axis=0).tolist()
             for s, lv in zip(cfg.sigmas, levels)}
    return {"curve": {"radii": grid.tolist(), "accuracy": curve}, "ceilings": ceilings,
            "sigmas": [key(s) for s in cfg.sigmas], "card_sigma": key(sorted(cfg.sigmas)[len(cfg.sigmas) // 2]), "radii": [key(r) for r in cfg.radii],
            "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha, "multilabel": not exclusive,
            "training_noise_sigma": ctx.model_info.get("training_noise_sigma"),
            "model_passes": int(len(levels[0].right) * len(cfg.sigmas) * (cfg.n0 + cfg.n)) if levels else 0}


def _check_data(records: Records, found: list[tuple[np.ndarray, np.ndarray]], cfg: SmoothingConfig) -> dict[str, Any]:
    """What the check did and cost: images checked per noise level, base points used, model passes."""
    checked = [int(c.sum()) for c, _ in found]
    used = np.asarray(records.get("check_used", np.zeros((0, len(cfg.sigmas), 2), bool)))
    base_points = int(used[:, :, 1].sum()) if used.size else 0
    return {"samples": cfg.check_samples, "steps": cfg.check_steps, "draws": cfg.check_draws,
            "checked": dict(zip((key(s) for s in cfg.sigmas), checked)), "base_points": base_points,
            "gradient_passes": sum(checked) * cfg.check_steps * (cfg.check_draws + 1),
            "model_passes": sum(checked) * (cfg.n + 1) + base_points * cfg.n}


def _contradiction_check(res: StudyResult, cfg: SmoothingConfig) -> Check:
    """Fail when an attack contradicts a certificate; warn when nothing was checked."""
    name = "certificates hold under attack"
    checked = {key(s): int(res.metrics[f"checked.{key(s)}"]) for s in cfg.sigmas}
    found = {s: int(res.metrics[f"contradictions.{s}"]) for s in checked}
    how = (f"L2 PGD ({cfg.check_steps} steps) on the smoothed model ({cfg.check_draws} noise draws a step) and on "
           f"the base model, within the certified radius, then PREDICT ({cfg.n} draws) at each point")
    if cfg.check_samples == 0:
        return Check(name, "warn", "Not run (check_samples = 0): no attack tested the certificates.")
    if not sum(checked.values()):
        return Check(name, "warn", f"None of the {cfg.check_samples} images chosen for the check was certified at "
                                   "any noise level, so no certificate was tested.")
    per = ", ".join(f"s={s}: {found[s]} of {checked[s]}" for s in checked)
    if sum(found.values()):
        return Check(name, "fail", f"An attack contradicts certificates ({per} checked images): the smoothed model "
                                   f"calls otherwise closer than the certified radius. {how}. By chance this happens "
                                   f"with probability at most about 3 alpha = {3 * cfg.alpha:g} per image; more "
                                   "often means the certificates are wrong (a bug): do not trust the radii.")
    return Check(name, "pass", f"No contradiction on {sum(checked.values())} certified images ({per} contradicted). "
                               f"{how}.")


def _table(res: StudyResult, cfg: SmoothingConfig) -> list[dict[str, Any]]:
    rows = []
    for sigma in cfg.sigmas:
        s = key(sigma)
        row: dict[str, Any] = {"noise s": float(sigma), "smoothed accuracy": res.metrics[f"clean_accuracy.{s}"],
                               "abstention": res.metrics[f"abstention_rate.{s}"], "ACR": res.metrics[f"acr.{s}"]}
        row |= {f"certified at r = {key(r)}": res.metrics[f"certified_accuracy.{s}.{key(r)}"] for r in cfg.radii}
        rows.append(row | {"radius ceiling": res.metrics[f"radius_ceiling.{s}"]})
    return rows


def _trained_with(ctx: AuditContext) -> str:
    noise = ctx.model_info.get("training_noise_sigma")
    if noise is None:
        return "the checkpoint's sidecar does not say whether the model was trained with noise"
    if float(noise) == 0:
        return "the model was trained without Gaussian noise augmentation (robustkit train --noise-sigma S adds it)"
    return f"the model was trained with Gaussian noise augmentation, sigma {float(noise):g}"


def _checks(res: StudyResult, cfg: SmoothingConfig, ctx: AuditContext) -> list[Check]:
    base = res.metrics["base_accuracy"]
    smoothed = {key(s): res.metrics[f"clean_accuracy.{key(s)}"] for s in cfg.sigmas}
    worst = min(smoothed, key=lambda s: smoothed[s])
    gap = base - smoothed[worst]
    detail = (f"base model {base:.3f}; smoothed (PREDICT) " + ", ".join(f"s={s}: {v:.3f}" for s, v in smoothed.items())
              + f"; {_trained_with(ctx)}.")
    checks = [Check("smoothed vs base accuracy", "warn" if gap > ACCURACY_GAP_WARN else "pass",
                    detail + (f" At s={worst} the smoothed model is {gap:.3f} below the base model: the model's calls "
                              "change under that noise, so fewer images are certified there, and a certificate "
                              "protects the smoothed model's call, which may differ from the base model's."
                              if gap > ACCURACY_GAP_WARN else ""))]
    s0 = key(min(cfg.sigmas))
    rate = res.metrics[f"abstention_rate.{s0}"]
    checks.append(Check("abstention", "warn" if rate > cfg.abstain_warn else "pass",
                        f"CERTIFY abstains on {rate:.1%} of its decisions at the smallest noise s={s0} "
                        f"(warn above {cfg.abstain_warn:.0%})."
                        + (" Even mild noise changes the model's calls, so no radius is certified for those "
                           "images; a model trained with noise (--noise-sigma) abstains less." if rate > cfg.abstain_warn
                           else "")))
    return checks
