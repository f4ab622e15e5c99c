"""The ``adversarial`` study's model work (its ``map``): the sweeps, FGSM, the checks' attacks, foolbox.

Every random start is seeded by ``(seed, study, norm or check, sample id)``, so a sample's
outcome does not depend on its batch. What comes out are per-sample records; the numbers
are made from them in :mod:`robustkit.studies.adversarial.reduce`, which never sees a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.metrics.outputs import probabilities
from robustkit.metrics.sweep import SweepResult
from robustkit.model import attacks as A
from robustkit.model import finding_attack as FA
from robustkit.model.ensemble import Ensemble
from robustkit.studies.adversarial.checks import SENSITIVITY
from robustkit.studies.adversarial.config import (
    AdversarialConfig,
    attack_steps,
    check_norm,
    exclusive,
    grid,
    large_epsilon,
    targets,
)
from robustkit.studies.base import AuditContext

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["records", "sweep_attack"]


def sweep_attack(cfg: AdversarialConfig, norm: str, **changes: Any) -> A.SweepAttack:
    """The sweep's attack for ``norm`` (the ensemble or PGD), with ``changes`` to its options."""
    if cfg.attack == "ensemble":
        opts: dict[str, Any] = dict(norm=norm, steps=cfg.apgd_steps, restarts=cfg.apgd_restarts,
                                    n_target_classes=cfg.n_target_classes, fab_steps=cfg.fab_steps,
                                    square_queries=cfg.square_queries)
        opts.update({k: v for k, v in changes.items() if k in ("steps", "restarts", "square_queries")})
        return Ensemble(**opts)
    options: dict[str, Any] = dict(steps=cfg.steps, step_size_factor=cfg.step_size_factor, restarts=cfg.restarts,
                                   random_start=cfg.random_start, loss=cfg.loss, targeted=cfg.targeted)
    options.update({k: v for k, v in changes.items() if k != "square_queries"})
    return (A.LinfPGD if norm == "linf" else A.L2PGD)(**options)


def records(cfg: AdversarialConfig, model: ModelAdapter, batch: Dataset, ctx: AuditContext, *,
            in_check: np.ndarray, in_foolbox: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample attack outcomes of ``batch``: for one label per image (``exclusive``) the
    misclassification sweeps with their checks and foolbox (:func:`_label_records`), else per
    output the sweeps that flip its call (:func:`_flip_records`)."""
    if not exclusive(ctx):
        return _flip_records(cfg, model, batch, ctx)
    return _label_records(cfg, model, batch, ctx, in_check=in_check, in_foolbox=in_foolbox)


def _label_records(cfg: AdversarialConfig, model: ModelAdapter, batch: Dataset, ctx: AuditContext, *,
                  in_check: np.ndarray, in_foolbox: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample attack outcomes of ``batch`` for one label per image.

    Records (``B`` the batch): clean logits ``(B, K)``; per norm ``correct_<norm>``,
    ``adv_pred_<norm>``, ``adv_conf_<norm>`` ``(B, E)``, ``min_eps_<norm>``, ``evals_<norm>``
    ``(B,)``, ``traces_<norm>`` ``(B, E, steps + 1)``; the gallery norm's ``adv_png`` and
    ``delta_png`` (``""`` where the sample is not a clean-correct broken one); ``fgsm_correct``;
    the check outcomes (:func:`_check_records`, on the samples ``in_check``) and the foolbox
    outcomes (:func:`_foolbox_records`, on the clean-correct samples ``in_foolbox``).
    """
    h, w, c = model.input_shape
    x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
    y = np.asarray(batch.labels, dtype=np.int64)
    ids = [str(i) for i in batch.ids]
    logits = ctx.clean_logits(model, batch)
    target = targets(cfg, logits, y, list(batch.class_names))
    clean_ok = logits.argmax(axis=1) == y
    rec: dict[str, np.ndarray] = {"clean_logits": logits}
    sweeps = {}
    for norm in cfg.norms:
        keep = np.flatnonzero(clean_ok).tolist() if norm == check_norm(cfg.norms) and cfg.n_examples else ()
        sweeps[norm] = A.epsilon_sweep(sweep_attack(cfg, norm), model, x, y, grid(cfg, norm), clean_logits=logits,
                                       target=target, keep=keep, seed=_seeds(ctx, ids, norm))
        rec.update(_sweep_records(norm, sweeps[norm]))
    rec.update(_gallery_records(x, sweeps.get(check_norm(cfg.norms))))
    if cfg.fgsm and "linf" in cfg.norms:
        rec["fgsm_correct"] = A.epsilon_sweep(A.FGSM(loss=cfg.loss, targeted=cfg.targeted), model, x, y,
                                              cfg.epsilons_linf, clean_logits=logits, target=target).correct
    rec.update(_check_records(cfg, model, x, y, logits, target, sweeps[check_norm(cfg.norms)], ctx, ids, in_check))
    rec.update(_foolbox_records(cfg, model, x, y, clean_ok & in_foolbox, ctx, ids))
    return rec


def _flip_attack(cfg: AdversarialConfig, norm: str) -> Any:
    if cfg.attack == "ensemble":
        return FA.flip_attack(norm, "apgd", steps=cfg.apgd_steps, restarts=cfg.apgd_restarts)
    return FA.flip_attack(norm, "pgd", steps=cfg.steps, step_size_factor=cfg.step_size_factor,
                          restarts=cfg.restarts, random_start=cfg.random_start)


def _pair_seeds(ctx: AuditContext, ids: list[str], names: list[str], *keys: str) -> np.ndarray:
    """``(B, K)`` seeds keyed by ``(seed, study, findings, *keys, finding, sample id)``."""
    return np.array([[ctx.seed_for("adversarial", "findings", *keys, f, i) for f in names] for i in ids],
                    dtype=np.int64)


def _flip_records(cfg: AdversarialConfig, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
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
        s = FA.flip_sweep(_flip_attack(cfg, norm), model, x, called, grid(cfg, norm), seeds=_pair_seeds(ctx, ids, names, norm))
        rec.update({f"flipped_{norm}": s.flipped, f"flip_min_eps_{norm}": s.min_eps.astype(np.float32),
                    f"flip_prob_{norm}": s.adv_prob, f"flip_evals_{norm}": s.evals, f"flip_traces_{norm}": s.traces})
    if cfg.fgsm and "linf" in cfg.norms:
        rec["flip_fgsm"] = FA.flip_sweep(FA.LinfFlipFGSM(), model, x, called, cfg.epsilons_linf,
                                         seeds=_pair_seeds(ctx, ids, names, "fgsm")).flipped
    norm = check_norm(cfg.norms)
    large = rec[f"flipped_{norm}"][:, :, -1].copy()
    if not large.all():
        s = FA.flip_sweep(_flip_attack(cfg, norm), model, x, called, [large_epsilon(cfg, norm, (h, w, c))],
                          seeds=_pair_seeds(ctx, ids, names, "large"))
        large |= s.flipped[:, :, 0]
    rec["flip_large"] = large
    return rec


def _check_records(cfg: AdversarialConfig, model: ModelAdapter, x: np.ndarray, y: np.ndarray, logits: np.ndarray,
                   target: np.ndarray | None, s: SweepResult, ctx: AuditContext, ids: list[str],
                   in_check: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample outcomes of the honesty checks' model work (the checks run in ``reduce``).

    ``large_correct``: still correct under PGD at the large radius (samples that survived
    the grid ``s`` of the checks' norm); ``in_check``: drawn (by id) for the step/restart and
    determinism checks; ``sensitivity`` ``(B, 2)``: broken by 2x steps / one more random
    restart at the middle radius; ``logit_change``, ``logit_drift``, ``logit_scale``: two
    passes compared with each other and with the clean pass; ``grad_finite``, ``grad_zero``:
    the input gradient.
    """
    norm, n = check_norm(cfg.norms), len(y)
    large = np.zeros(n, bool)
    alive = np.flatnonzero(s.correct[:, -1])
    if alive.size:
        res = sweep_attack(cfg, norm)(model, x[alive], y[alive], epsilons=large_epsilon(cfg, norm, x.shape[1:]),
                                      seed=_seeds(ctx, [ids[i] for i in alive], "checks", "large"),
                                      target=_pick(target, alive))
        large[alive] = res.pred == y[alive]
    g = A.loss_gradient(model, x, y, loss=cfg.loss).reshape(n, -1)
    return {"large_correct": large, "in_check": in_check,
            "sensitivity": _sensitivity(cfg, model, x, y, target, s, in_check, ctx, ids),
            **_determinism(model, x, logits, in_check),
            "grad_finite": np.all(np.isfinite(g), axis=1), "grad_zero": np.all(g == 0, axis=1)}


def _sensitivity(cfg: AdversarialConfig, model: ModelAdapter, x: np.ndarray, y: np.ndarray,
                 target: np.ndarray | None, s: SweepResult, in_check: np.ndarray, ctx: AuditContext,
                 ids: list[str]) -> np.ndarray:
    """``(B, 2)``: broken at the middle radius by 2x steps / one more random restart
    (samples drawn for the check and still correct there; False elsewhere)."""
    out = np.zeros((len(y), len(SENSITIVITY)), bool)
    norm, k = check_norm(cfg.norms), len(s.epsilons) // 2
    alive = np.flatnonzero(in_check & s.correct[:, k])
    if not alive.size:
        return out
    # the check asks whether the gradient attacks converged: the ensemble re-runs without Square
    stronger = (sweep_attack(cfg, norm, steps=2 * attack_steps(cfg), restarts=1, square_queries=0),
                sweep_attack(cfg, norm, restarts=1, random_start=True, square_queries=0))
    for j, attack in enumerate(stronger):
        res = attack(model, x[alive], y[alive], epsilons=float(s.epsilons[k]), target=_pick(target, alive),
                     seed=_seeds(ctx, [ids[i] for i in alive], "checks", "sensitivity"))
        out[alive, j] = res.pred != y[alive]
    return out


def _seeds(ctx: AuditContext, ids: list[str], *keys: str) -> np.ndarray:
    """One attack seed per sample ``(B,)``, keyed by ``(seed, study, *keys, sample id)``."""
    return np.array([ctx.seed_for("adversarial", *keys, i) for i in ids], dtype=np.int64)


def _pick(values: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[rows]


def _determinism(model: ModelAdapter, x: np.ndarray, logits: np.ndarray, in_check: np.ndarray) -> dict[str, np.ndarray]:
    """Two passes over the samples drawn for the check: per sample the largest logit change
    between them (``logit_change``), against the clean pass (``logit_drift``) and the largest
    absolute logit (``logit_scale``); 0 for the others."""
    change, drift, scale = (np.zeros(len(x), np.float32) for _ in range(3))
    if in_check.any():
        first, second = model.logits(x[in_check]), model.logits(x[in_check])
        change[in_check] = np.abs(first - second).max(axis=1)
        drift[in_check] = np.abs(first - logits[in_check]).max(axis=1)
        scale[in_check] = np.abs(first).max(axis=1)
    return {"logit_change": change, "logit_drift": drift, "logit_scale": scale}


def _sweep_records(norm: str, s: SweepResult) -> dict[str, np.ndarray]:
    return {f"correct_{norm}": s.correct, f"min_eps_{norm}": s.min_eps, f"adv_pred_{norm}": s.adv_pred.astype(np.int16),
            f"adv_conf_{norm}": s.adv_conf, f"traces_{norm}": s.traces, f"evals_{norm}": s.evals,
            f"by_{norm}": s.broken_by}


def _gallery_records(x: np.ndarray, s: SweepResult | None) -> dict[str, np.ndarray]:
    """Thumbnails of the adversarial image and its magnified perturbation at ``min_eps``
    (``""`` for a sample not kept: clean-wrong or unbroken)."""
    adv_png, delta_png = np.full(len(x), "", dtype=object), np.full(len(x), "", dtype=object)
    for i, adv in (s.kept.items() if s is not None else ()):
        adv_png[i] = png_base64(adv, max_side=96)
        delta_png[i] = png_base64(_magnified(adv - x[i]), max_side=96)
    return {"adv_png": adv_png, "delta_png": delta_png}


def _foolbox_records(cfg: AdversarialConfig, model: ModelAdapter, x: np.ndarray, y: np.ndarray,
                     clean_ok: np.ndarray, ctx: AuditContext, ids: list[str]) -> dict[str, np.ndarray]:
    """Each configured foolbox attack on ``clean_ok`` (the clean-correct samples chosen in ``prepare``), one
    sample at a time (so that its outcome does not depend on its batch): ``fb_chosen`` and per
    attack ``fb_<name>_success``, ``fb_<name>_l2``, ``fb_<name>_linf`` (inf where not run)."""
    if not cfg.foolbox_attacks:
        return {}
    chosen = clean_ok
    out: dict[str, np.ndarray] = {"fb_chosen": chosen}
    for name in cfg.foolbox_attacks:
        success, l2, linf = np.zeros(len(y), bool), np.full(len(y), np.inf), np.full(len(y), np.inf)
        for i in np.flatnonzero(chosen):
            r = A.run_foolbox(name, model, x[i:i + 1], y[i:i + 1], seed=ctx.seed_for("adversarial", "foolbox", name, ids[i]))
            success[i], l2[i], linf[i] = r.success[0], r.l2[0], r.linf[0]
        out.update({f"fb_{name}_success": success, f"fb_{name}_l2": l2, f"fb_{name}_linf": linf})
    return out


def _magnified(delta: np.ndarray) -> np.ndarray:
    """A perturbation shown around mid-grey: 0.5 + 0.5 * delta / max|delta|."""
    scale = float(np.abs(delta).max())
    return 0.5 + 0.5 * delta / scale if scale > 0 else np.full_like(delta, 0.5)
