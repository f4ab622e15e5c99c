"""The saliency study's plug-in: its record (profiles, metric docs, headline) and its three
methods, each a call into :mod:`~robustkit.studies.saliency.map` (model work) or
:mod:`~robustkit.studies.saliency.reduce` (no model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustkit.studies import register
from robustkit.studies.base import AuditContext, Records, Study
from robustkit.studies.saliency.config import SaliencyConfig
from robustkit.studies.saliency.map import map_batch, plan
from robustkit.studies.saliency.reduce import reduce_records

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter
    from robustkit.results import StudyResult

__all__ = ["SaliencyStudy"]


@register
class SaliencyStudy(Study[SaliencyConfig]):
    name = "saliency"
    description = (
        "Which pixels the model's decision rests on, by four attribution methods, and whether those "
        "maps can be trusted: are they stable under small changes of the image, do they change when "
        "the model's weights are randomised (if not, they do not explain the model), do they point "
        "at the lesion, and does removing the pixels they rank highest lower the class probability."
    )
    Config = SaliencyConfig
    profiles = {
        "quick": {"methods": ["vanilla_gradient", "gradcam"], "max_samples": 12, "stability_samples": 12,
                  "randomization_steps": 2, "randomization_samples": 3, "n_gallery": 1, "deletion_steps": 10},
        "standard": {},
        "full": {"max_samples": 90, "stability_samples": None, "randomization_steps": None,
                 "randomization_samples": 6, "independent": True},
    }
    metric_docs = {
        "stability": ("mean similarity (Spearman, SSIM or top-k intersection) of a map with the maps of "
                      "slightly perturbed copies whose prediction did not change", "higher"),
        "max_sensitivity": ("largest relative L2 change of the map under the noise and brightness "
                            "perturbations (Yeh et al. 2019), mean over images", "lower"),
        "randomization": ("similarity of the map with the original after the cascading weight "
                          "randomisation (a trustworthy method drops towards 0)", "lower"),
        "localization": ("agreement of each output's map with that output's mask (pointing game, relevance "
                         "mass, relevance rank accuracy), pooled over the (image, output present) pairs, and "
                         "per output `localization.<metric>.<method>.<output>` (single-label: per class, the "
                         "map of the predicted class against the image's lesion mask); `.random` is a uniform "
                         "random map", "higher"),
        "lung_share": ("share of |attribution| inside the lung fields (lung masks; DeGrave et al. "
                       "2021); `.random` is a uniform random map", "higher"),
        "lung_area_share": ("the lung fields' share of the image (what a uniform map scores)", "none"),
        "deletion_auc": ("area under the class probability as the most relevant pixels are removed "
                         "first (lower: the map found the pixels the decision rests on)", "lower"),
        "completeness_error": ("|sum of IG attributions - logit difference| / |logit difference|, "
                               "pooled over images", "lower"),
        "n_samples": ("number of images explained", "none"),
        "n_localization_excluded": ("(image, output present) pairs left out of localisation because the output's "
                                    "mask is empty (single-label: images with an empty mask)", "none"),
        "n_stability_changed": ("(image, perturbation) pairs left out because the prediction changed", "none"),
    }
    headline = ("localization.mass.gradcam", "randomization.spearman.gradcam", "stability.spearman.gradcam")
    multilabel = True


    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """Which of the study's samples take part in each sub-study (:func:`~.map.plan`), chosen
        on the driver over the whole study's samples, so that every shard and batch agrees."""
        self._sub_studies = plan(data, self.config)

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> Records:
        """Per-sample maps and scores of ``batch``: every model pass of the study happens here."""
        sub_studies = getattr(self, "_sub_studies", None)
        if sub_studies is None:
            raise AssertionError("study 'saliency': map() before prepare() (no sub-study plan)")
        return map_batch(self.config, sub_studies, model, batch, ctx)

    def reduce(self, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
        """Metrics, curves, tables, checks and report data from every sample's records (no model)."""
        return reduce_records(self.config, records, data, ctx)
