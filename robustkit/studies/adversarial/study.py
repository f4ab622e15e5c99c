"""The ``adversarial`` study's plug-in: its record (description, profiles, metric docs) and
its three methods, which hand the work to :mod:`~robustkit.studies.adversarial.model_work`
(``map``) and :mod:`~robustkit.studies.adversarial.reduce` (``reduce``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from robustkit.results import StudyResult
from robustkit.studies import register
from robustkit.studies.adversarial import model_work, reduce
from robustkit.studies.adversarial.config import AdversarialConfig, exclusive
from robustkit.studies.base import AuditContext, Study

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["AdversarialStudy"]


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
        if not exclusive(ctx):  # the per-output flip attacks use neither subset
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
        """Per-sample attack outcomes of ``batch`` (:func:`~robustkit.studies.adversarial.model_work.records`)."""
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        ids = [str(i) for i in batch.ids]
        return model_work.records(cfg, model, batch, ctx, in_check=self._member("checks", ids),
                                  in_foolbox=self._member("foolbox", ids))

    def reduce(self, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext) -> StudyResult:
        """Metrics, intervals, curves, checks and report data (:func:`~robustkit.studies.adversarial.reduce.reduce`)."""
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        return reduce.reduce(cfg, records, data, ctx, self.name)
