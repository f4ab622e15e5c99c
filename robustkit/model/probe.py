"""The input probe: the declared preprocessing and class order checked before any study.

A model from elsewhere comes without robustkit's sidecar; a wrong preprocessing or class
order gives an audit full of numbers that are all wrong. Before the studies, the probe scores
a small stratified probe of the audit data (64 images by default) under the declared setup
and under every preprocessing preset (one forward pass per preset, all through one compiled
graph in the model's input space), and for each the class order that the probe supports best:
an assignment on the confusion matrix (single-label: the most images on the diagonal) or on
the matrix of AUROCs of each output for each finding (multi-label), solved by
:func:`scipy.optimize.linear_sum_assignment`, not by trying K! orders.

The rule (:data:`RULE`): the audit stops when the declared setup is near chance and another
is clearly better; a smaller gap is a warning.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustkit.metrics.paired import mcnemar_exact
from robustkit.metrics.ranking import auroc
from robustkit.model.adapter import ModelAdapter
from robustkit.model.preprocess import Preprocess, presets_for, resolve_preprocess

__all__ = ["PROBE_SIZE", "RULE", "ProbeRow", "run_probe", "setup_advice"]

PROBE_SIZE = 64
#: single-label: accuracy near chance / clearly better; multi-label: macro AUROC
NEAR_CHANCE, CLEARLY_BETTER, WARN_GAP, P_STOP = 0.15, 0.25, 0.10, 0.01
ML_NEAR, ML_BETTER, ML_WARN = 0.60, 0.20, 0.10
ML_GOOD = 0.75
RULE = (f"stop when the declared setup is near chance (single-label: accuracy at most the probe's majority-class "
        f"share + {NEAR_CHANCE}; multi-label: macro AUROC at most {ML_NEAR}) and another setup is clearly better "
        f"(accuracy at least {CLEARLY_BETTER} higher with a one-sided exact McNemar p < {P_STOP} on the probe "
        f"images; macro AUROC at least {ML_BETTER} higher) and good (accuracy at least halfway from chance to 1; "
        f"macro AUROC at least {ML_GOOD}: an untrained model, whose outputs some order always fits a little, is "
        f"not mistaken for a wrong setup); warn when another good setup is better by {WARN_GAP} or more")


@dataclass(frozen=True)
class ProbeRow:
    """One candidate setup on the probe.

    Attributes:
        setup: ``declared`` or the preset's name.
        flags: the command-line flags of its preprocessing.
        score: accuracy (single-label) or macro AUROC (multi-label) in the declared order.
        order: the output names in the order the probe supports best (``None``: the declared one).
        score_in_order: the score in that order.
    """

    setup: str
    flags: str
    score: float
    order: list[str] | None
    score_in_order: float

    def to_json(self) -> dict[str, Any]:
        return {"setup": self.setup, "flags": self.flags, "score": self.score, "order": self.order,
                "score_in_order": self.score_in_order}


def run_probe(model: ModelAdapter, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Score the declared setup and every preset on probe images.

    Args:
        model: the adapter, with its declared preprocessing and class names.
        x: probe images ``(n, H, W, C)`` in [0, 1] (a stratified subsample of the audit data).
        y: their labels ``(n,)`` in the model's class order, or targets ``(n, K)`` of a
            multi-label model.

    Returns the probe table (JSON-able): ``n``, ``metric``, ``chance``, ``rows`` (declared
    first), ``declared``, ``best`` (rows), ``verdict`` (``ok``, ``warn`` or ``stop``),
    ``message``, ``rule`` and ``seconds``.
    """
    start = time.perf_counter()
    multilabel = model.output_kind == "multilabel"
    y = np.asarray(y, dtype=bool) if multilabel else np.asarray(y, dtype=np.int64)
    names = list(model.class_names)
    rows, hits = [], {}
    for label, prep in _candidates(model.preprocess, model.input_shape[2]):
        z = model.logits_of_inputs(np.asarray(prep.apply(x), dtype=np.float32))
        row, hits[label] = (_multilabel_row if multilabel else _exclusive_row)(label, prep, z, y, names)
        rows.append(row)
    table = _verdict(rows, hits, y, multilabel)
    return {"n": len(x), "metric": "macro AUROC" if multilabel else "accuracy", **table,
            "rows": [r.to_json() for r in rows], "rule": RULE, "seconds": time.perf_counter() - start}


def _candidates(declared: Preprocess, channels: int) -> list[tuple[str, Preprocess]]:
    """The declared setup, then each preset that differs from it."""
    out = [("declared", declared)]
    for name in presets_for(channels):
        prep = resolve_preprocess(preset=name, channels=channels, source="the input probe")
        same = (prep.channels == declared.channels and all(
            np.allclose(a, b) for a, b in zip(prep.coefficients(), declared.coefficients(), strict=True)))
        if not same:
            out.append((name, prep))
    return out


def _exclusive_row(label: str, prep: Preprocess, z: np.ndarray, y: np.ndarray,
                   names: list[str]) -> tuple[ProbeRow, np.ndarray]:
    """Accuracy as declared and in the order the confusion matrix's assignment supports; the
    row and its per-image hits ``(2, n)`` (in the declared order, in the supported order)."""
    from scipy.optimize import linear_sum_assignment

    k = len(names)
    pred = z.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    true_of, output = linear_sum_assignment(confusion, maximize=True)  # output[i] answers class true_of[i]
    assigned = int(confusion[true_of, output].sum())
    correct = pred == y
    if assigned <= int(correct.sum()):
        return ProbeRow(label, prep.flags(), float(correct.mean()), None, float(correct.mean())), np.stack([correct] * 2)
    means = np.empty(k, dtype=np.int64)
    means[output] = true_of  # output j means class means[j]
    order = [names[i] for i in means]
    return (ProbeRow(label, prep.flags(), float(correct.mean()), order, assigned / len(y)),
            np.stack([correct, means[pred] == y]))


def _multilabel_row(label: str, prep: Preprocess, z: np.ndarray, y: np.ndarray,
                    names: list[str]) -> tuple[ProbeRow, np.ndarray]:
    """Macro AUROC as declared and in the order the AUROC matrix's assignment supports."""
    from scipy.optimize import linear_sum_assignment

    k = len(names)
    matrix = np.stack([auroc(np.repeat(y[:, [i]], k, axis=1), z, average=None) for i in range(k)])  # (finding, output)
    valid = ~np.isnan(matrix).all(axis=1)
    scores = np.where(np.isnan(matrix), 0.5, matrix)
    declared = float(np.mean(np.diag(scores)[valid])) if valid.any() else 0.5
    finding_of, output = linear_sum_assignment(scores, maximize=True)
    assigned = float(np.mean(scores[finding_of, output][valid[finding_of]])) if valid.any() else 0.5
    if assigned <= declared + 1e-12:
        return ProbeRow(label, prep.flags(), declared, None, declared), np.zeros(0, bool)
    means = np.empty(k, dtype=np.int64)
    means[output] = finding_of
    return ProbeRow(label, prep.flags(), declared, [names[i] for i in means], assigned), np.zeros(0, bool)


def _verdict(rows: list[ProbeRow], hits: dict[str, np.ndarray], y: np.ndarray, multilabel: bool) -> dict[str, Any]:
    """The best row and the rule's verdict, with the message that names the better flags."""
    declared = rows[0]
    best = max(rows, key=lambda r: (round(r.score_in_order, 9), r is declared))
    gap = best.score_in_order - declared.score
    if multilabel:
        chance, good = 0.5, best.score_in_order >= ML_GOOD
        stop = good and declared.score <= ML_NEAR and gap >= ML_BETTER
        warn = good and gap >= ML_WARN
    else:
        chance = float(np.bincount(y).max() / len(y))
        good = best.score_in_order >= chance + 0.5 * (1.0 - chance)
        paired = mcnemar_exact(hits[best.setup][1], hits["declared"][0])  # in its order vs as declared
        from scipy.stats import binom

        p_better = float(binom.sf(paired.b - 1, paired.b + paired.c, 0.5)) if paired.b else 1.0
        stop = good and declared.score <= chance + NEAR_CHANCE and gap >= CLEARLY_BETTER and p_better < P_STOP
        warn = good and gap >= WARN_GAP
    verdict = "stop" if stop else "warn" if warn else "ok"
    tied = [r for r in rows if r is not best and r.order == best.order
            and abs(r.score_in_order - best.score_in_order) < 1e-9]
    return {"chance": chance, "declared": declared.to_json(), "best": best.to_json(), "verdict": verdict,
            "tied": [r.setup for r in tied], "message": setup_advice(declared, best, multilabel, verdict, tied)}


def setup_advice(declared: ProbeRow, best: ProbeRow, multilabel: bool, verdict: str,
                 tied: list[ProbeRow] | None = None) -> str:
    """The probe's finding in one line: what the declared setup scores and what would be better
    (setups the probe cannot tell apart are named together)."""
    metric = "macro AUROC" if multilabel else "accuracy"
    if verdict == "ok":
        return f"the declared setup is the best the probe found ({metric} {declared.score:.2f})"
    presets = [r.setup for r in [best, *(tied or [])] if r.setup != "declared"]
    if any(r.setup == "declared" for r in [best, *(tied or [])]):
        presets = []  # the declared preprocessing does as well: only the order is in question
    which = (f"--preprocess {presets[0]}" if len(presets) == 1 else
             f"--preprocess {' or '.join(presets)} (tied on the probe)" if presets else "")
    flags = " ".join(f for f in (which, f"--model-classes {shlex.quote(','.join(best.order))}" if best.order else "") if f)
    return (f"the model looks like it expects {flags}; {metric} on the probe images {declared.score:.2f} as "
            f"declared, {best.score_in_order:.2f} with those flags")
