"""Study ``adversarial``: worst-case robustness, measured fast and checked for honesty.

The attack (``attack``) is the AutoAttack-style ensemble (:mod:`robustkit.model.ensemble`:
APGD-CE, then APGD-DLR, then the minimum-norm FAB-T, then the gradient-free Square, each on the
survivors of the earlier ones; Croce and Hein 2020) in the ``standard`` and ``full`` profiles, and one compiled PGD in
``quick``. It runs an epsilon sweep (Linf and L2; :mod:`robustkit.model.attacks`) in increasing
order, attacking at each radius only the samples that survived the smaller ones, so robust
accuracy is non-increasing by construction and each sample gets its minimal perturbation on
the grid. FGSM runs beside it as a sanity baseline; in the ``full`` profile foolbox's
DeepFool, Carlini-Wagner and a decision-based attack (HopSkipJump) add breadth on a small
subsample. Checks after Carlini et al. 2019 ("On Evaluating Adversarial Robustness") and
Pintor et al. 2022 ("Indicators of Attack Failure") say whether the attack was strong enough
for the numbers to be believed (:mod:`robustkit.studies.adversarial_checks`).

Units: Linf radii are given in pixel units (``2 / 255``, a scalar or a list) and named and
reported in /255 units (``robust_accuracy.linf.2``); L2 radii are the L2 norm of the
perturbation over all pixels and channels of the [0, 1] image (``robust_accuracy.l2.0.5``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.errors import check_choice, check_range, param_error
from robustkit.metrics import classification as M
from robustkit.metrics.outputs import probabilities
from robustkit.model import attacks as A
from robustkit.model.ensemble import ENSEMBLE_ATTACKS, ENSEMBLE_LABELS, Ensemble
from robustkit.results import StudyResult
from robustkit.studies import register
from robustkit.studies.adversarial_checks import SENSITIVITY, CheckInputs, eps_name, run_checks
from robustkit.studies.base import AuditContext, Study, StudyConfig
from robustkit.task import critical_missing_check

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["AdversarialConfig", "AdversarialStudy", "eps_name"]

NORMS = ("linf", "l2")
ATTACKS = ("pgd", "ensemble")
_WHERE = "study 'adversarial'"


def _as_sorted(values: Any) -> tuple[float, ...]:
    items = values if isinstance(values, (list, tuple)) else [values]
    return tuple(sorted({float(v) for v in items}))


@dataclass(frozen=True)
class AdversarialConfig(StudyConfig):
    """Options of the adversarial study.

    Attributes:
        norms: threat models to sweep, ``linf`` and/or ``l2``.
        attack: ``ensemble`` (APGD-CE -> APGD-DLR -> FAB-T -> Square, per-sample worst case) or ``pgd``.
        apgd_steps: APGD iterations per run in the ensemble (the paper: 100).
        apgd_restarts: APGD runs per sample (the untargeted ones; APGD-T runs once per target).
        n_target_classes: target classes of APGD-T (models with >= 4 classes) and FAB-T (the paper: 9).
        fab_steps: FAB-T's iterations per target class in the ensemble (the paper: 100; 0: no FAB-T).
        square_queries: Square's queries per sample in the ensemble (0: no Square).
        epsilons_linf: Linf radii in pixel units (``0.5 / 255`` ... ``8 / 255``); a scalar
            or a list; sorted and de-duplicated.
        epsilons_l2: L2 radii (norm over all pixels and channels of the [0, 1] image).
        steps: PGD steps per run (``attack: pgd``).
        step_size_factor: PGD step = ``step_size_factor * epsilon / steps``.
        restarts: PGD runs per sample and radius (later runs start at random points and
            attack only the samples still unbroken).
        random_start: start the first run at a random point of the ball.
        loss: ``ce`` (cross-entropy) or ``margin`` (Carlini-Wagner margin on the logits).
        targeted: push each sample to a target class (``target_class``, else its least
            likely class) instead of away from its label.
        target_class: the target class name of a targeted attack.
        fgsm: also run FGSM at the Linf radii (the check "FGSM vs PGD" needs it).
        large_epsilon_linf: the large radius (pixel units) of the check "near zero at a
            large epsilon".
        check_samples: samples used by the step/restart and determinism checks.
        tolerance: allowed change in robust accuracy for the sensitivity checks.
        foolbox_attacks: foolbox minimum-norm attacks to run (``deepfool``,
            ``carlini_wagner``, ``hop_skip_jump``, ``boundary``).
        foolbox_samples: clean-correct samples the foolbox attacks run on.
        n_bootstrap: bootstrap resamples of the 95% intervals.
        n_examples: adversarial examples in the report's gallery.
    """

    max_samples: int | None = 128
    norms: tuple[str, ...] = ("linf", "l2")
    attack: str = "ensemble"
    apgd_steps: int = 20
    apgd_restarts: int = 1
    n_target_classes: int = 9
    fab_steps: int = 10
    square_queries: int = 100
    epsilons_linf: tuple[float, ...] = (0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
    epsilons_l2: tuple[float, ...] = (0.25, 0.5, 1.0)
    steps: int = 20
    step_size_factor: float = 2.5
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    targeted: bool = False
    target_class: str | None = None
    fgsm: bool = True
    large_epsilon_linf: float = 32 / 255
    check_samples: int = 32
    tolerance: float = 0.02
    foolbox_attacks: tuple[str, ...] = ()
    foolbox_samples: int = 16
    n_bootstrap: int = 1000
    n_examples: int = 6

    def __post_init__(self) -> None:
        for key in ("epsilons_linf", "epsilons_l2"):
            value = getattr(self, key)
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in np.atleast_1d(value)):
                object.__setattr__(self, key, _as_sorted(value))
        for key in ("norms", "foolbox_attacks"):
            value = getattr(self, key)
            object.__setattr__(self, key, (value,) if isinstance(value, str) else tuple(value))

    def validate(self) -> None:
        super().validate()
        if not self.norms:
            raise param_error("norms", "a non-empty list from 'linf', 'l2'", list(self.norms), where=_WHERE)
        for norm in self.norms:
            check_choice("norms", norm, NORMS, where=_WHERE)
        self._check_epsilons("epsilons_linf", self.epsilons_linf, high=1.0, needed="linf" in self.norms)
        self._check_epsilons("epsilons_l2", self.epsilons_l2, high=None, needed="l2" in self.norms)
        check_range("steps", self.steps, low=1, integer=True, where=_WHERE)
        check_choice("attack", self.attack, ATTACKS, where=_WHERE)
        check_range("apgd_steps", self.apgd_steps, low=1, integer=True, where=_WHERE)
        check_range("apgd_restarts", self.apgd_restarts, low=1, integer=True, where=_WHERE)
        check_range("n_target_classes", self.n_target_classes, low=1, integer=True, where=_WHERE)
        check_range("fab_steps", self.fab_steps, low=0, integer=True, where=_WHERE)
        check_range("square_queries", self.square_queries, low=0, integer=True, where=_WHERE)
        if self.targeted and self.attack == "ensemble":
            raise param_error("targeted", "false with attack 'ensemble' (set attack: pgd for a targeted attack)",
                              self.targeted, where=_WHERE)
        check_range("step_size_factor", self.step_size_factor, low=0, low_open=True, where=_WHERE)
        check_range("restarts", self.restarts, low=1, integer=True, where=_WHERE)
        check_choice("loss", self.loss, A.LOSSES, where=_WHERE)
        check_range("large_epsilon_linf", self.large_epsilon_linf, low=0, high=1, low_open=True, where=_WHERE)
        check_range("check_samples", self.check_samples, low=1, integer=True, where=_WHERE)
        check_range("tolerance", self.tolerance, low=0, high=1, where=_WHERE)
        for name in self.foolbox_attacks:
            check_choice("foolbox_attacks", name, A.FOOLBOX_ATTACKS, where=_WHERE)
        check_range("foolbox_samples", self.foolbox_samples, low=1, integer=True, where=_WHERE)
        check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where=_WHERE)
        check_range("n_examples", self.n_examples, low=0, integer=True, where=_WHERE)
        if self.target_class is not None and not self.targeted:
            raise param_error("target_class", "None unless 'targeted' is true", self.target_class, where=_WHERE)

    @staticmethod
    def _check_epsilons(key: str, values: tuple[float, ...], *, high: float | None, needed: bool) -> None:
        expected = f"a positive number{' <= 1 (pixel units)' if high else ''} or a list of them"
        if needed and not values:
            raise param_error(key, expected, list(values), where=_WHERE)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 or (
                high is not None and v > high
            ):
                raise param_error(key, expected, v, where=_WHERE)


@register
class AdversarialStudy(Study):
    name = "adversarial"
    description = (
        "How much deliberate, worst-case change to the pixels the classifier survives. An ensemble of "
        "attacks in the manner of AutoAttack (APGD with the cross-entropy loss, then APGD with the DLR "
        "loss, then FAB-T, which looks for the smallest change that flips the image, then the gradient-free "
        "Square attack, each on the images the earlier ones did not break; "
        "the quick profile runs one PGD) searches, for every image, for a perturbation within a budget "
        "epsilon (Linf: no pixel changes by more than epsilon; L2: the perturbation's total "
        "length is at most epsilon) that changes the prediction. Robust accuracy is the share of "
        "images still classified correctly at each budget; the minimal perturbation is the "
        "smallest budget on the grid that broke an image. Read the curve from the left: the "
        "faster it falls, the more fragile the model; a case of the critical class (the audit's "
        "critical_class) turned into another class is the costly error. The checks say whether the attack was strong enough to trust the numbers."
    )
    Config = AdversarialConfig
    profiles = {
        "quick": {"norms": ["linf"], "epsilons_linf": [1 / 255, 2 / 255, 4 / 255], "attack": "pgd", "steps": 10,
                  "max_samples": 32, "n_bootstrap": 300, "check_samples": 16},
        "standard": {},
        "full": {"steps": 40, "restarts": 3, "apgd_steps": 100, "apgd_restarts": 5, "fab_steps": 100,
                 "square_queries": 5000,
                 "max_samples": 256, "n_bootstrap": 2000,
                 "foolbox_attacks": ["deepfool", "carlini_wagner", "hop_skip_jump"]},
    }
    metric_docs = {
        "robust_accuracy": ("share of images still classified correctly under the attack at a budget "
                            "(clean errors count as wrong); the ensemble's per-sample worst case, and per attack "
                            "(`robust_accuracy.<attack>.<norm>.<eps>`, attack `apgd_ce`, `apgd_dlr`, `fab_t` or `square`) "
                            "counting the images broken by the ensemble's attacks up to that one, in AutoAttack's "
                            "order; FGSM alone "
                            "(`robust_accuracy.fgsm.linf.<eps>`)", "higher"),
        "square_only_rate": ("share of correctly classified images that only the gradient-free Square attack "
                             "broke (the gradient attacks failed on them: a sign of masked gradients)", "lower"),
        "attack_success_rate": ("share of correctly classified images the attack broke at a budget", "lower"),
        "min_perturbation": ("smallest budget on the grid that broke an image (Linf in /255; 0: wrong "
                             "when clean; inf: not broken), median and quartiles", "higher"),
        "critical_miss_rate": ("share of the critical class's correctly classified images (the audit's "
                               "`critical_class`) that the attack turned into any other class at a budget "
                               "(`critical_miss_rate.<norm>.<eps>`); not measured without a critical class", "lower"),
        "foolbox": ("foolbox minimum-norm attacks on a subsample: perturbation sizes (L2; Linf in /255) "
                    "and success rate", "higher"),
        "flip_off_rate": ("multi-label: per finding, the share of images with the finding called present whose "
                          "call the attack turned off within a budget (`flip_off_rate.<norm>.<eps>.<finding>`), "
                          "and the macro mean over findings", "lower"),
        "flip_on_rate": ("multi-label: per finding, the share of images with the finding called absent whose "
                         "call the attack turned on within a budget, and the macro mean", "lower"),
        "min_budget_off": ("multi-label: median smallest budget on the grid that turned a present finding off "
                           "(Linf in /255; inf: more than half never flipped), per finding and pooled", "higher"),
        "min_budget_on": ("multi-label: median smallest budget on the grid that turned an absent finding on, "
                          "per finding and pooled", "higher"),
    }
    headline = ("robust_accuracy.linf.1", "robust_accuracy.linf.2", "min_perturbation.linf.median",
                "robust_accuracy.l2.0.5")
    multilabel = True

    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """The samples of the checks and of the foolbox attacks: seeded, stratified subsets of
        exactly ``check_samples`` / ``foolbox_samples`` of the study's samples (foolbox then
        runs on the clean-correct ones among them)."""
        cfg = self.config
        if ctx.model_info.get("output_kind") == "multilabel":  # the per-finding attacks use neither subset
            self._chosen: dict[str, frozenset[str]] = {"checks": frozenset(), "foolbox": frozenset()}
            return
        self._chosen = {
            key: frozenset(str(i) for i in data.ids[
                data.subsample_positions(min(k, len(data)), seed=ctx.seed_for(self.name, key))])
            for key, k in (("checks", cfg.check_samples), ("foolbox", cfg.foolbox_samples))
        } if len(data) else {"checks": frozenset(), "foolbox": frozenset()}

    def _member(self, key: str, ids: list[str]) -> np.ndarray:
        chosen = getattr(self, "_chosen", None)
        if chosen is None:
            raise AssertionError("study 'adversarial': map() before prepare() (no check samples)")
        return np.array([str(i) in chosen[key] for i in ids], dtype=bool)

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
        """Per-sample attack outcomes of ``batch``: the sweeps, FGSM, the check attacks, foolbox.

        Every random start is seeded by ``(seed, study, norm or check, sample id)``, so a
        sample's outcome does not depend on its batch. Records (``B`` the batch): clean logits
        ``(B, K)``; per norm ``correct_<norm>``, ``adv_pred_<norm>``, ``adv_conf_<norm>``
        ``(B, E)``, ``min_eps_<norm>``, ``evals_<norm>`` ``(B,)``, ``traces_<norm>``
        ``(B, E, steps + 1)``; the gallery norm's ``adv_png`` and ``delta_png`` (``""`` where
        the sample is not a clean-correct broken one); ``fgsm_correct``; the check outcomes
        (:meth:`_check_records`) and the foolbox outcomes (:func:`_foolbox_records`).
        """
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        if model.output_kind == "multilabel":  # per finding: the budget that flips its call
            from robustkit.studies.adversarial_findings import finding_records

            return finding_records(cfg, model, batch, ctx)
        h, w, c = model.input_shape
        x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
        y = np.asarray(batch.labels, dtype=np.int64)
        ids = [str(i) for i in batch.ids]
        logits = ctx.clean_logits(model, batch)
        target = _targets(cfg, logits, y, list(batch.class_names))
        clean_ok = logits.argmax(axis=1) == y
        rec: dict[str, np.ndarray] = {"clean_logits": logits}
        sweeps = {}
        for norm in cfg.norms:
            keep = np.flatnonzero(clean_ok).tolist() if norm == _gallery_norm(cfg.norms) and cfg.n_examples else ()
            sweeps[norm] = A.epsilon_sweep(self._attack(norm), model, x, y, self._grid(norm), clean_logits=logits,
                                           target=target, keep=keep, seed=_seeds(ctx, ids, norm))
            rec.update(_sweep_records(norm, sweeps[norm]))
        rec.update(_gallery_records(x, sweeps.get(_gallery_norm(cfg.norms))))
        if cfg.fgsm and "linf" in cfg.norms:
            rec["fgsm_correct"] = A.epsilon_sweep(A.FGSM(loss=cfg.loss, targeted=cfg.targeted), model, x, y,
                                                  cfg.epsilons_linf, clean_logits=logits, target=target).correct
        rec.update(self._check_records(model, x, y, logits, target, sweeps, ctx, ids))
        rec.update(_foolbox_records(cfg, model, x, y, clean_ok & self._member("foolbox", ids), ctx, ids))
        return rec

    def _check_records(self, model: ModelAdapter, x: np.ndarray, y: np.ndarray, logits: np.ndarray,
                       target: np.ndarray | None, sweeps: dict[str, A.SweepResult], ctx: AuditContext,
                       ids: list[str]) -> dict[str, np.ndarray]:
        """Per-sample outcomes of the honesty checks' model work (the checks run in ``reduce``).

        ``large_correct``: still correct under PGD at the large radius (samples that survived
        the grid); ``in_check``: drawn (by id) for the step/restart and determinism checks;
        ``sensitivity`` ``(B, 2)``: broken by 2x steps / one more random restart at the middle
        radius; ``logit_change``, ``logit_drift``, ``logit_scale``: two passes compared with
        each other and with the clean pass; ``grad_finite``, ``grad_zero``: the input gradient.
        """
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        norm = _gallery_norm(cfg.norms)
        s, n = sweeps[norm], len(y)
        large = np.zeros(n, bool)
        alive = np.flatnonzero(s.correct[:, -1])
        if alive.size:
            res = self._attack(norm)(model, x[alive], y[alive], epsilons=_large_epsilon(cfg, norm, x.shape[1:]),
                                     seed=_seeds(ctx, [ids[i] for i in alive], "checks", "large"),
                                     target=_pick(target, alive))
            large[alive] = res.pred == y[alive]
        in_check = self._member("checks", ids)
        g = A.loss_gradient(model, x, y, loss=cfg.loss).reshape(n, -1)
        return {"large_correct": large, "in_check": in_check,
                "sensitivity": self._sensitivity(model, x, y, target, s, in_check, ctx, ids),
                **_determinism(model, x, logits, in_check),
                "grad_finite": np.all(np.isfinite(g), axis=1), "grad_zero": np.all(g == 0, axis=1)}

    def _sensitivity(self, model: ModelAdapter, x: np.ndarray, y: np.ndarray, target: np.ndarray | None,
                     s: A.SweepResult, in_check: np.ndarray, ctx: AuditContext, ids: list[str]) -> np.ndarray:
        """``(B, 2)``: broken at the middle radius by 2x steps / one more random restart
        (samples drawn for the check and still correct there; False elsewhere)."""
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        out = np.zeros((len(y), len(SENSITIVITY)), bool)
        norm, k = _gallery_norm(cfg.norms), len(s.epsilons) // 2
        alive = np.flatnonzero(in_check & s.correct[:, k])
        if not alive.size:
            return out
        # the check asks whether the gradient attacks converged: the ensemble re-runs without Square
        stronger = (self._attack(norm, steps=2 * self._steps(), restarts=1, square_queries=0),
                    self._attack(norm, restarts=1, random_start=True, square_queries=0))
        for j, attack in enumerate(stronger):
            res = attack(model, x[alive], y[alive], epsilons=float(s.epsilons[k]), target=_pick(target, alive),
                         seed=_seeds(ctx, [ids[i] for i in alive], "checks", "sensitivity"))
            out[alive, j] = res.pred != y[alive]
        return out

    def reduce(self, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext) -> StudyResult:
        """Metrics, intervals, curves, checks and gallery from the records of every sample."""
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        if ctx.model_info.get("output_kind") == "multilabel":
            from robustkit.studies.adversarial_findings import finding_result

            return finding_result(cfg, records, data, ctx, self.name)
        y = np.asarray(data.labels, dtype=np.int64)
        logits = records["clean_logits"]
        names = list(data.class_names)
        target = _targets(cfg, logits, y, names)
        sweeps = {norm: _sweep_from(records, norm, self._grid(norm), self._steps()) for norm in cfg.norms}
        fgsm = _fgsm_from(records, cfg.epsilons_linf) if "fgsm_correct" in records else None
        foolbox = _foolbox_from(records, cfg.foolbox_attacks)
        result = StudyResult(name=self.name)
        ensemble = {norm: _by_attack(s, self._attack_names(len(names), norm)) for norm, s in sweeps.items()}
        columns = _fill_metrics(result, sweeps, fgsm, y, target, names, ensemble, ctx.critical_index)
        _fill_foolbox(result, foolbox, sweeps)
        result.intervals = _intervals(result.records["correct"], columns, y, cfg.n_bootstrap,
                                      ctx.seed_for("adversarial", "bootstrap"))
        norm = _gallery_norm(cfg.norms)
        inputs = CheckInputs(y=y, sweeps=sweeps, fgsm=fgsm, foolbox=foolbox,
                             large_epsilon=_large_epsilon(cfg, norm, ctx.input_shape),
                             large_correct=records["large_correct"], subset=np.flatnonzero(records["in_check"]),
                             sensitivity=records["sensitivity"], grad_finite=records["grad_finite"],
                             grad_zero=records["grad_zero"], logit_change=records["logit_change"],
                             logit_drift=records["logit_drift"], logit_scale=records["logit_scale"],
                             tolerance=cfg.tolerance, large_epsilon_linf=cfg.large_epsilon_linf, ensemble=ensemble)
        result.checks, check_data = run_checks(inputs)
        if ctx.critical_index is None:
            result.checks.append(critical_missing_check("the critical miss rate under attack"))
        result.data.update(
            class_names=names,
            clean_accuracy=float(np.mean(logits.argmax(axis=1) == y)) if len(y) else float("nan"),
            curves=_curves(result, sweeps, fgsm, ensemble),
            attack=_attack_summary(cfg, ensemble),
            histograms={norm: _histogram(s, y, names, norm) for norm, s in sweeps.items()},
            gallery=_gallery(data, ctx, records, logits, sweeps, names, cfg.n_examples),
            loss_traces={norm: _nan_list(s.loss_traces) for norm, s in sweeps.items()},
            attack_loss=A.loss_description(cfg.loss, str(ctx.model_info.get("output_kind", "softmax"))),
            gradient_evals={norm: int(s.gradient_evals) for norm, s in sweeps.items()},
            checks_data=check_data,
            correct_metrics=columns,
        )
        return result

    def _attack(self, norm: str, **changes: Any) -> A.SweepAttack:
        """The sweep's attack for ``norm`` (the ensemble or PGD), with ``changes`` to its options."""
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
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

    def _steps(self) -> int:
        """Iterations per run of the sweep's attack (its loss traces have one more entry)."""
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        return cfg.apgd_steps if cfg.attack == "ensemble" else cfg.steps

    def _attack_names(self, num_classes: int, norm: str) -> list[str]:
        """The ensemble's attacks that run for ``norm`` (empty for PGD), in order."""
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        if cfg.attack != "ensemble":
            return []
        ensemble = Ensemble(norm=norm, fab_steps=cfg.fab_steps, square_queries=cfg.square_queries)
        return [name for name, _ in ensemble.attacks(num_classes)]

    def _grid(self, norm: str) -> tuple[float, ...]:
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        return cfg.epsilons_linf if norm == "linf" else cfg.epsilons_l2


# ------------------------------------------------------------------------------ inputs


def _targets(cfg: AdversarialConfig, logits: np.ndarray, y: np.ndarray, names: list[str]) -> np.ndarray | None:
    """Target classes ``(N,)`` of a targeted attack: the configured class, else the least likely."""
    if not cfg.targeted:
        return None
    least = logits.argmin(axis=1)
    if cfg.target_class is None:
        return least
    if cfg.target_class not in names:
        raise param_error("target_class", "one of " + ", ".join(map(repr, names)), cfg.target_class, where=_WHERE)
    k = names.index(cfg.target_class)
    return np.where(y == k, least, k)


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


def _gallery_norm(norms: tuple[str, ...]) -> str:
    """The norm of the gallery and of the checks: Linf if swept, else the first."""
    return "linf" if "linf" in norms else norms[0]


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


def _large_epsilon(cfg: AdversarialConfig, norm: str, shape: tuple[int, ...] | None) -> float:
    """The large radius of the check "near zero at a large epsilon" in ``norm``'s units."""
    if norm == "linf":
        return float(cfg.large_epsilon_linf)
    return float(cfg.large_epsilon_linf * math.sqrt(math.prod(shape))) if shape else float("nan")


def _sweep_records(norm: str, s: A.SweepResult) -> dict[str, np.ndarray]:
    return {f"correct_{norm}": s.correct, f"min_eps_{norm}": s.min_eps, f"adv_pred_{norm}": s.adv_pred.astype(np.int16),
            f"adv_conf_{norm}": s.adv_conf, f"traces_{norm}": s.traces, f"evals_{norm}": s.evals,
            f"by_{norm}": s.broken_by}


def _gallery_records(x: np.ndarray, s: A.SweepResult | None) -> dict[str, np.ndarray]:
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


# ------------------------------------------------------------------------------ from records


@dataclass
class _Found:
    """A minimum-norm attack's outcome on the attacked samples (from the records)."""

    success: np.ndarray
    l2: np.ndarray
    linf: np.ndarray


def _sweep_from(rec: dict[str, np.ndarray], norm: str, grid: tuple[float, ...], steps: int) -> A.SweepResult:
    """The sweep of ``norm`` rebuilt from the records; mean loss traces over the failed runs."""
    traces = rec[f"traces_{norm}"]
    means = np.full((len(grid), steps + 1), np.nan, np.float32)
    for k in range(len(grid)):
        ran = np.any(~np.isnan(traces[:, k]), axis=1)
        if ran.any():
            means[k] = traces[ran, k].mean(axis=0)
    return A.SweepResult(epsilons=np.sort(np.asarray(grid, dtype=np.float64)), correct=rec[f"correct_{norm}"],
                         min_eps=rec[f"min_eps_{norm}"], adv_pred=rec[f"adv_pred_{norm}"],
                         adv_conf=rec[f"adv_conf_{norm}"], loss_traces=means, kept={},
                         gradient_evals=int(rec[f"evals_{norm}"].sum()), traces=traces, evals=rec[f"evals_{norm}"],
                         broken_by=rec[f"by_{norm}"])


def _fgsm_from(rec: dict[str, np.ndarray], grid: tuple[float, ...]) -> A.SweepResult:
    """The FGSM sweep as far as the study reads it: radii and ``correct``."""
    correct = rec["fgsm_correct"]
    n, e = correct.shape
    return A.SweepResult(epsilons=np.sort(np.asarray(grid, dtype=np.float64)), correct=correct,
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


def _by_attack(s: A.SweepResult, attacks: list[str]) -> dict[str, np.ndarray]:
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


def _fill_ensemble(result: StudyResult, s: A.SweepResult, norm: str, by: dict[str, np.ndarray],
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


def _fill_metrics(result: StudyResult, sweeps: dict[str, A.SweepResult], fgsm: A.SweepResult | None,
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
    m["n_samples"] = float(len(y))
    result.records["correct"] = np.stack(correct, axis=1)
    return columns


def _rate(hit: np.ndarray, among: np.ndarray) -> float:
    return float(np.mean(hit[among])) if np.any(among) else float("nan")


def _intervals(correct: np.ndarray, columns: list[str], y: np.ndarray, n_boot: int, seed: int) -> dict[str, list[float]]:
    if len(y) < 2:
        return {}
    lo, hi = M.bootstrap_interval(lambda idx: correct[idx].mean(axis=0), len(y), n_boot=n_boot, seed=seed, strata=y)
    return {name: [float(a), float(b)] for name, a, b in zip(columns, lo, hi)}


def _fill_foolbox(result: StudyResult, foolbox: dict[str, Any], sweeps: dict[str, A.SweepResult]) -> None:
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
        rows.append({"attack": name, "kind": "decision-based" if name in A.DECISION_ATTACKS else "gradient",
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


def _curves(result: StudyResult, sweeps: dict[str, A.SweepResult], fgsm: A.SweepResult | None,
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


def _histogram(s: A.SweepResult, y: np.ndarray, names: list[str], norm: str) -> dict[str, Any]:
    """Counts per class of the minimal perturbation: clean error (0), each radius, not broken (None)."""
    bins = np.r_[0.0, s.epsilons, np.inf]
    counts = {name: [int(np.sum((y == k) & (s.min_eps == b))) for b in bins] for k, name in enumerate(names)}
    unit = 255.0 if norm == "linf" else 1.0
    return {"unit": "/255" if norm == "linf" else "L2",
            "bins": [round(float(b) * unit, 6) if np.isfinite(b) else None for b in bins], "counts": counts}


def _magnified(delta: np.ndarray) -> np.ndarray:
    """A perturbation shown around mid-grey: 0.5 + 0.5 * delta / max|delta|."""
    scale = float(np.abs(delta).max())
    return 0.5 + 0.5 * delta / scale if scale > 0 else np.full_like(delta, 0.5)


def _gallery(data: Dataset, ctx: AuditContext, rec: dict[str, np.ndarray], logits: np.ndarray,
             sweeps: dict[str, A.SweepResult], names: list[str], n: int) -> list[dict[str, Any]]:
    """Clean image, magnified perturbation and adversarial image for a few broken samples,
    chosen among the gallery candidates (:func:`_gallery_candidates`) that the attack broke."""
    if n <= 0 or not sweeps or ctx.input_shape is None:
        return []
    norm = _gallery_norm(tuple(sweeps))
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
