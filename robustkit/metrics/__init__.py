"""One home for every metric: pure numpy/scipy functions over stored arrays (no TensorFlow).

* :mod:`~robustkit.metrics.classification`: accuracy, confusion, precision/recall/F1, ROC AUC,
  bootstrap intervals;
* :mod:`~robustkit.metrics.calibration`: ECE family, Brier, NLL, temperature scaling,
  selective prediction;
* :mod:`~robustkit.metrics.saliency`: saliency similarity, localisation, deletion;
* :mod:`~robustkit.metrics.paired`: paired statistics for compare (McNemar, paired bootstrap, Holm).
"""

from __future__ import annotations

__all__: list[str] = []
