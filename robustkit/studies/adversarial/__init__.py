"""Study ``adversarial``: worst-case robustness, measured fast and checked for honesty.

The attack (``attack``) is the AutoAttack-style ensemble (:mod:`robustkit.model.ensemble`:
APGD-CE, then APGD-DLR, then the minimum-norm FAB-T, then the gradient-free Square, each on the
survivors of the earlier ones; Croce and Hein 2020) in the ``standard`` and ``full`` profiles, and one compiled PGD in
``quick``. It runs an epsilon sweep (Linf and L2; :mod:`robustkit.model.attack_sweep`) in increasing
order, attacking at each radius only the samples that survived the smaller ones, so robust
accuracy is non-increasing by construction and each sample gets its minimal perturbation on
the grid. FGSM runs beside it as a sanity baseline; in the ``full`` profile foolbox's
DeepFool, Carlini-Wagner and a decision-based attack (HopSkipJump) add breadth on a small
subsample. Checks after Carlini et al. 2019 ("On Evaluating Adversarial Robustness") and
Pintor et al. 2022 ("Indicators of Attack Failure") say whether the attack was strong enough
for the numbers to be believed (:mod:`robustkit.studies.adversarial.checks`).

Units: Linf radii are given in pixel units (``2 / 255``, a scalar or a list) and named and
reported in /255 units (``robust_accuracy.linf.2``); L2 radii are the L2 norm of the
perturbation over all pixels and channels of the [0, 1] image (``robust_accuracy.l2.0.5``).

The package's rooms: :mod:`.config` (the options), :mod:`.study` (the plug-in), :mod:`.model_work`
(``map``: every model call), :mod:`.reduce` (pure numpy: nothing from the model side) and
:mod:`.checks` (the honesty checks, pure numpy).
"""

from __future__ import annotations

from robustkit.studies.adversarial.checks import eps_name
from robustkit.studies.adversarial.config import AdversarialConfig
from robustkit.studies.adversarial.study import AdversarialStudy

__all__ = ["AdversarialConfig", "AdversarialStudy", "eps_name"]
