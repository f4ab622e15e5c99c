"""Report view of the ``adversarial`` study, for every task kind.

One label per image: robust-accuracy curves, minimal-perturbation histograms, the gallery
(``result.data``: ``curves``, ``histograms``, ``gallery``, ``clean_accuracy``). Several
labels: per output, the flip-rate curves (off and on) and the minimal-budget table
(``result.data["findings_curves"]``, the ``minimal_budgets`` table, the metrics and their
intervals). Reads stored numbers only; never runs a model and never imports TensorFlow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

from robustkit.report import figures
from robustkit.report.figures import PALETTE, STYLE, new_figure, safe_label, to_svg
from robustkit.report.views import fmt, generic_view, table_view, view
from robustkit.results import AuditResult, StudyResult

__all__ = ["adversarial_view", "grouped_bars_svg"]

_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")

_DIRECTION_TEXT = {
    "off": ("Turning present findings off", "images with the finding called present",
            "a present finding (a nodule, an opacity) disappears from the report: a missed finding"),
    "on": ("Turning absent findings on", "images with the finding called absent",
           "an absent finding appears: a false alarm"),
}


def grouped_bars_svg(categories: Sequence[str], groups: Mapping[str, Sequence[float]], *, xlabel: str,
                     ylabel: str) -> str:
    """Bars of several groups (classes) side by side over shared categories (budgets).

    Args:
        categories: the x labels, e.g. ``["clean error", "0.5", ..., "not broken"]``.
        groups: group name -> one count per category.
        xlabel, ylabel: axis labels.
    """
    with matplotlib.rc_context(STYLE):
        fig = new_figure(5.5, 3.2)
        ax = fig.subplots()
        width = 0.8 / max(1, len(groups))
        pos = np.arange(len(categories))
        for i, (name, values) in enumerate(groups.items()):
            ax.bar(pos + (i - (len(groups) - 1) / 2) * width, values, width=width,
                   color=PALETTE[i % len(PALETTE)], label=safe_label(name))
        ax.set_xticks(pos, [safe_label(c) for c in categories], rotation=30, ha="right")
        ax.set_xlabel(safe_label(xlabel))
        ax.set_ylabel(safe_label(ylabel))
        if groups:
            ax.legend(loc="best")
        return to_svg(fig)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _curve_figure(norm: str, curve: Mapping[str, Any], clean: float) -> dict[str, Any]:
    x = [0.0] + [_num(e) for e in curve.get("epsilons", [])]
    main = "ensemble (worst case)" if curve.get("label") == "ensemble" else "PGD"
    series = {main: (x, [clean] + [_num(v) for v in curve.get("pgd", [])])}
    bands = {main: ([clean] + [_num(v) for v in curve.get("low", [])],
                    [clean] + [_num(v) for v in curve.get("high", [])])}
    steps = list(dict(curve.get("attacks", {})).items())[:-1]  # the last one is the ensemble itself
    for i, (name, values) in enumerate(steps):
        series["after " + name if i == 0 else "+ " + name] = (x, [clean] + [_num(v) for v in values])
    if curve.get("fgsm"):
        series["FGSM"] = (x, [clean] + [_num(v) for v in curve["fgsm"]])
    unit = "epsilon (/255, Linf)" if norm == "linf" else "epsilon (L2 norm)"
    return {
        "title": f"Robust accuracy against the {'Linf' if norm == 'linf' else 'L2'} budget",
        "svg": figures.line_chart_svg(series, xlabel=unit, ylabel="robust accuracy", ylim=(0.0, 1.02), bands=bands),
        "caption": "Share of images still classified correctly when an attacker may change them within each "
                   "budget (0: the clean accuracy). The band is the bootstrap 95% interval. " + _running_text(
                       list(series)[1:1 + len(steps)], list(dict(curve.get("attacks", {})))[-1:])
                   + "FGSM (one step) should never lie below the main curve.",
    }


def _running_text(lines: list[str], last: list[str]) -> str:
    """The caption's sentence on the ensemble's running curves (empty for a single attack)."""
    if not last:
        return ""
    named = ", ".join(f"'{line}'" for line in lines)
    return (f"For the ensemble, the lines {named} count the images broken by its attacks up to that one "
            f"(AutoAttack's order); the ensemble line adds {last[0]}: the per-sample worst case. " if lines else
            f"The ensemble ran {last[0]} alone. ")


def _flip_figure(study: StudyResult, norm: str, curve: Mapping[str, Any], direction: str) -> dict[str, Any]:
    """One line per finding and the macro mean (with its bootstrap band) over the budgets."""
    eps = [_num(e) for e in curve.get("epsilons", [])]
    x = [0.0, *eps]
    series = {str(name): (x, [0.0, *(_num(v) for v in d.get(direction, []))])
              for name, d in dict(curve.get("findings", {})).items()}
    macro = [_num(v) for v in dict(curve.get("macro", {})).get(direction, [])]
    series["macro mean"] = (x, [0.0, *macro])
    keys = [f"flip_{direction}_rate.{norm}.{k}.macro" for k in _eps_names(study, norm, direction)]
    lo = [0.0, *(_num(study.intervals.get(k, [None, None])[0]) for k in keys)]
    hi = [0.0, *(_num(study.intervals.get(k, [None, None])[1]) for k in keys)]
    title, among, meaning = _DIRECTION_TEXT[direction]
    unit = "epsilon (/255, Linf)" if norm == "linf" else "epsilon (L2 norm)"
    return {
        "title": f"{title} ({'Linf' if norm == 'linf' else 'L2'})",
        "svg": figures.line_chart_svg(series, xlabel=unit, ylabel="flip rate", ylim=(0.0, 1.02),
                                      bands={"macro mean": (lo, hi)} if len(lo) == len(x) else None),
        "caption": f"Per finding, the share of {among} whose call the attack flipped within each budget "
                   f"(0 at no budget): {meaning}. The macro mean averages the findings; its band is a "
                   "bootstrap 95% interval over images (per-finding Wilson intervals are in the metrics table).",
    }


def _eps_names(study: StudyResult, norm: str, direction: str) -> list[str]:
    """The radius names of ``norm``'s macro flip rates, in stored (increasing) order."""
    prefix = f"flip_{direction}_rate.{norm}."
    return [k[len(prefix):-len(".macro")] for k in study.metrics if k.startswith(prefix) and k.endswith(".macro")]


def _histogram_figure(norm: str, hist: Mapping[str, Any]) -> dict[str, Any]:
    bins = list(hist.get("bins", []))
    cats = ["clean error" if b == 0 else "not broken" if b is None else f"{_num(b):g}" for b in bins]
    counts = {str(k): [_num(v) for v in vals] for k, vals in dict(hist.get("counts", {})).items()}
    unit = "/255" if norm == "linf" else "L2"
    return {
        "title": f"Minimal {'Linf' if norm == 'linf' else 'L2'} perturbation per class",
        "svg": grouped_bars_svg(cats, counts, xlabel=f"smallest budget that broke the image ({unit})",
                                ylabel="images"),
        "caption": "For each class, how many images were broken first at each budget; 'clean error' images "
                   "were wrong without any attack and 'not broken' ones survived the largest budget. Mass on "
                   "the left means a fragile class.",
    }


def _gallery_item(e: Mapping[str, Any]) -> dict[str, Any] | None:
    srcs = {}
    for key in ("clean_png", "delta_png", "adv_png"):
        png = re.sub(r"\s+", "", str(e.get(key, "")))
        if not png or not _BASE64.match(png):
            return None
        srcs[key[:-4]] = "data:image/png;base64," + png
    return {
        "id": str(e.get("id", "")), "label": str(e.get("label", "")), "epsilon": str(e.get("epsilon", "")),
        "clean_pred": str(e.get("clean_pred", "")), "clean_confidence": fmt(e.get("clean_confidence")),
        "adv_pred": str(e.get("adv_pred", "")), "adv_confidence": fmt(e.get("adv_confidence")), **srcs,
    }


def _attack_text(attack: Mapping[str, Any]) -> str:
    """One sentence on what attack ran, from the stored summary (empty for older results)."""
    if attack.get("name") == "ensemble":
        runs = "; ".join(f"{'Linf' if n == 'linf' else 'L2'}: {' -> '.join(map(str, a))}"
                         for n, a in dict(attack.get("attacks", {})).items())
        fab = f"FAB-T {attack['fab_steps']} iterations per target class, " if attack.get("fab_steps") else ""
        return (f"Attack: the AutoAttack-style ensemble ({runs}), each on the images the earlier ones did not "
                f"break; APGD {attack.get('apgd_steps')} iterations x {attack.get('apgd_restarts')} run(s), "
                f"{fab}Square {attack.get('square_queries')} queries. An image counts as robust only if every "
                "attack failed on it.")
    if attack.get("name") == "PGD":
        return f"Attack: PGD, {attack.get('steps')} steps x {attack.get('restarts')} run(s)."
    return ""


@view("adversarial")
def adversarial_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """Curves (robust accuracy, or per-output flip rates), histograms or the minimal-budget table,
    the gallery, the foolbox table, checks and metrics."""
    ctx = generic_view(study, audit)
    data = study.data
    ctx["n_samples"] = fmt(study.metrics.get("n_samples"), "n_samples")
    if data.get("multilabel"):  # per output: the budgets that flip its call
        _flip_content(ctx, study)
        return ctx
    clean = _num(data.get("clean_accuracy"))
    for norm, curve in dict(data.get("curves", {})).items():
        ctx["figures"].append(_curve_figure(str(norm), curve, clean))
    for norm, hist in dict(data.get("histograms", {})).items():
        ctx["figures"].append(_histogram_figure(str(norm), hist))
    ctx["gallery"] = [g for g in (_gallery_item(e) for e in data.get("gallery", [])) if g is not None]
    ctx["clean_accuracy"] = fmt(clean)
    ctx["gradient_evals"] = {str(k): fmt(v, "n") for k, v in dict(data.get("gradient_evals", {})).items()}
    ctx["attack"] = _attack_text(dict(data.get("attack", {})))
    return ctx


def _flip_content(ctx: dict[str, Any], study: StudyResult) -> None:
    """Flip-rate curves (off and on) per norm, the minimal-budget table, the attack and the thresholds."""
    data = study.data
    for norm, curve in dict(data.get("findings_curves", {})).items():
        for direction in _DIRECTION_TEXT:
            ctx["figures"].append(_flip_figure(study, str(norm), curve, direction))
    rows = [{k: float("inf") if v in ("inf", float("inf")) else v for k, v in dict(r).items()}
            for r in study.tables.get("minimal_budgets", [])]
    ctx["tables"] = [table_view("Minimal flipping budgets (median per finding)", rows)] if rows else []
    attack = dict(data.get("attack", {}))
    ctx["findings"] = [str(n) for n in data.get("class_names", [])]
    ctx["gallery"] = []  # misclassified examples exist for one label per image only
    ctx["attack"] = (f"Attack: {attack.get('name', '')}, {attack.get('steps')} steps x {attack.get('restarts')} "
                     f"run(s) per image, finding and budget, maximising the {data.get('attack_loss', '')}.")
    ctx["thresholds"] = ", ".join(f"{n} {fmt(t)}" for n, t in zip(ctx["findings"], data.get("thresholds", [])))
