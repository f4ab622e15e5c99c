"""Report view of the ``smoothing`` study: the certified-accuracy curve per noise level.

Draws stored numbers only (``result.data``: ``curve``, ``ceilings``, ``n``, ``alpha``); never runs
a model and never imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

from robustkit.report.figures import line_chart_svg
from robustkit.report.views import fmt, generic_view, view
from robustkit.results import AuditResult, StudyResult

__all__ = ["smoothing_view"]


@view("smoothing")
def smoothing_view(study: StudyResult, audit: AuditResult) -> dict[str, Any]:
    """The generic context plus the curve, the radius ceilings and what the audited model was."""
    ctx = generic_view(study, audit)
    d = study.data
    curve = dict(d.get("curve", {}))
    radii = [float(r) for r in curve.get("radii", [])]
    series = {f"s = {s}": (radii, [float(v) for v in ys]) for s, ys in dict(curve.get("accuracy", {})).items()}
    ctx["figures"] = [{
        "title": "Certified accuracy against L2 radius",
        "svg": line_chart_svg(series, xlabel="L2 radius (pixel units, [0, 1] scale)", ylabel="certified accuracy",
                              ylim=(0.0, 1.0)),
        "caption": "Each line is one noise level s: the share of images whose smoothed call is right and certified "
                   "at that radius or more. At radius 0 it is the share certified at all. A line stops rising "
                   "past its radius ceiling (the table below).",
    }] if series else []
    ctx["ceilings"] = [{"sigma": s, "radius": fmt(v)} for s, v in dict(d.get("ceilings", {})).items()]
    ctx["n"], ctx["n0"], ctx["alpha"] = d.get("n"), d.get("n0"), d.get("alpha")
    ctx["multilabel"] = bool(d.get("multilabel"))
    ctx["model_passes"] = d.get("model_passes")
    ctx["check"] = dict(d.get("check") or {})
    noise = d.get("training_noise_sigma")
    ctx["training"] = ("The checkpoint's sidecar does not say whether the model was trained with Gaussian noise."
                       if noise is None else
                       "The model was trained without Gaussian noise augmentation: smoothing such a model usually "
                       "certifies little (robustkit train --noise-sigma S trains with it)." if float(noise) == 0 else
                       f"The model was trained with Gaussian noise augmentation (sigma {float(noise):g}), as the "
                       "method expects.")
    ctx["metrics"] = [m for m in ctx["metrics"] if not str(m.get("name", "")).startswith("certified_rate.")]
    return ctx
