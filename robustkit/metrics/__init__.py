"""One home for every metric: pure numpy/scipy functions over stored arrays (no TensorFlow).

* :mod:`~robustkit.metrics.ranking`: the one ranking kernel (ROC curve, AUROC, average
  precision, FPR at a TPR; ties handled once), per output with ``average=``;
* :mod:`~robustkit.metrics.decisions`: the one decision kernel (tp/fp/tn/fn per output ->
  sensitivity, specificity, precision, F1, accuracy), with ``average=``;
* :mod:`~robustkit.metrics.average`: the one nan-aware mean (macro and weighted means);
* :mod:`~robustkit.metrics.resampling`: bootstrap indices (plain, stratified), percentile
  intervals, the paired bootstrap;
* :mod:`~robustkit.metrics.classification`: single-label accuracy, confusion matrix and the
  per-class rates and AUROC read from the kernels above;
* :mod:`~robustkit.metrics.multilabel`: per-finding summaries, Youden thresholds, the
  threshold split and the one reader of the stored thresholds, DeLong's test;
* :mod:`~robustkit.metrics.calibration`: ECE family, Brier, NLL, reliability bins;
* :mod:`~robustkit.metrics.temperature`: temperature scaling for every output kind;
* :mod:`~robustkit.metrics.selective`: selective prediction (risk-coverage, referral);
* :mod:`~robustkit.metrics.outputs`: logits to probabilities and NLL per output kind;
* :mod:`~robustkit.metrics.saliency`: saliency similarity, localisation, deletion;
* :mod:`~robustkit.metrics.paired`: paired statistics for compare (McNemar, paired bootstrap, Holm).
"""

from __future__ import annotations

__all__: list[str] = []
