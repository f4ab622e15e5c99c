"""One home for every metric: pure numpy/scipy functions over stored arrays (no TensorFlow).

* :mod:`~robustkit.metrics.classification`: accuracy, confusion, precision/recall/F1, ROC AUC,
  bootstrap intervals;
* :mod:`~robustkit.metrics.calibration`: ECE family, Brier, NLL, reliability bins;
* :mod:`~robustkit.metrics.temperature`: temperature scaling for every output kind;
* :mod:`~robustkit.metrics.selective`: selective prediction (risk-coverage, referral);
* :mod:`~robustkit.metrics.outputs`: logits to probabilities and NLL per output kind;
* :mod:`~robustkit.metrics.saliency`: saliency similarity, localisation, deletion;
* :mod:`~robustkit.metrics.paired`: paired statistics for compare (McNemar, paired bootstrap, Holm).
"""

from __future__ import annotations

__all__: list[str] = []
