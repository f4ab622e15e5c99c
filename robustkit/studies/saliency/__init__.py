"""Study ``saliency``: attribution maps, and checks that they mean something.

Four methods (vanilla gradient, SmoothGrad, Integrated Gradients, Grad-CAM; see
:mod:`robustkit.model.explainers`) explain the logit of the predicted output. The study measures

* stability: similarity of each map with the maps of slightly perturbed copies (Gaussian
  noise, a brightness change, a shift whose map is shifted back), over samples whose
  prediction does not change, plus the max-sensitivity (Yeh et al. 2019);
* the model-randomisation sanity check (Adebayo et al. 2018): weights re-initialised top
  down, block by block; a method passes when its maps stop resembling the original;
* localisation per output present (pointing game, relevance mass, relevance rank accuracy)
  beside a uniform random map, ``localization.<metric>.<method>[.<output>]``: each output's
  map against that output's mask. One path for every task: the outputs present are the
  targets, one-hot for single-label data, whose map is the predicted class's, scored against
  the image's lesion mask; a multi-label model explains every finding present on its own.
  Pairs with an empty mask (a NORMAL image) are left out and counted;
* faithfulness: the deletion curve (most relevant pixels replaced first) and its area.

The package keeps the model work and the reduce apart: :mod:`.map` holds every model pass
(SmoothGrad samples and IG steps run as big compiled batches; every random draw keyed by the
sample id), :mod:`.reduce` turns the records into metrics, curves and checks and
:mod:`.report_data` into the report's small grey images and map pointers; neither imports the
model side. :mod:`.layout` is what both sides agree on (record keys, stored map sizes). The
study never plots: it stores small float maps, and the report colours and draws them.
"""

from __future__ import annotations

from robustkit.studies.saliency.config import SaliencyConfig
from robustkit.studies.saliency.reduce import LUNG_SHARE_WARN
from robustkit.studies.saliency.study import SaliencyStudy

__all__ = ["LUNG_SHARE_WARN", "SaliencyConfig", "SaliencyStudy"]
