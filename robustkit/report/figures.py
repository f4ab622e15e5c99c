"""Figures for the report: plain numbers in, an SVG string (or a PNG data URI) out.

Every function draws on a :class:`matplotlib.figure.Figure` directly, so no pyplot state
and no GUI backend are involved, and returns a standalone ``<svg>`` element that can be
inlined in HTML (XML prologue, DOCTYPE, metadata and comments removed). Text is drawn as
paths, so labels taken from the audit (class names) never appear as markup. Only strings
made here may be inserted into the report unescaped.

Example:
    >>> svg = confusion_matrix_svg([[5, 1], [2, 7]], ["a", "b"])
    >>> svg.startswith("<svg")
    True
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "PALETTE",
    "STYLE",
    "new_figure",
    "safe_label",
    "to_svg",
    "confusion_matrix_svg",
    "image_data_uri",
    "line_chart_svg",
    "roc_curves_svg",
]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_MAX_LABEL = 24
_MAX_LEGEND = 10

STYLE: Any = {  # typed Any: matplotlib types rc keys as a Literal union
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.edgecolor": "#555555",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "svg.fonttype": "path",
    "svg.hashsalt": "robustkit",
}
_PROLOGUE = re.compile(r"^.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)


def safe_label(text: object) -> str:
    """Make an outside string safe for matplotlib text: no mathtext, bounded length."""
    s = str(text)
    if len(s) > _MAX_LABEL:
        s = s[: _MAX_LABEL - 1] + "\u2026"
    return s.replace("\\", "\\\\").replace("$", r"\$")


def to_svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = _PROLOGUE.sub("", buf.getvalue(), count=1)
    text = _METADATA.sub("", text)
    text = _COMMENT.sub("", text)
    return text.strip()


def new_figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=(width, height), layout="constrained")


def confusion_matrix_svg(matrix: Sequence[Sequence[float]], class_names: Sequence[str]) -> str:
    """Draw a confusion matrix as counts and as row-normalised rates, side by side.

    Args:
        matrix: ``(K, K)`` counts, rows the true class, columns the predicted class.
        class_names: ``K`` names.

    Returns:
        An ``<svg>`` element.
    """
    counts = np.asarray(matrix, dtype=float)
    k = counts.shape[0]
    if counts.ndim != 2 or counts.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion matrix: expected a square (K, K) matrix for {len(class_names)} classes, got shape {counts.shape}.")
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(4.6, 2.4 + 0.35 * k)
    with matplotlib.rc_context(STYLE):
        fig = new_figure(2 * side + 0.6, side)
        axes = fig.subplots(1, 2)
        _matrix_panel(axes[0], counts, class_names, "Counts", "{:.0f}")
        _matrix_panel(axes[1], rates, class_names, "Row-normalised (sensitivity)", "{:.2f}", vmax=1.0)
        return to_svg(fig)


def _matrix_panel(ax, values: np.ndarray, names: Sequence[str], title: str, fmt: str, vmax: float | None = None) -> None:
    k = values.shape[0]
    top = vmax if vmax is not None else max(float(values.max()), 1.0)
    ax.imshow(values, cmap="Blues", vmin=0.0, vmax=top, aspect="equal")
    ax.grid(False)
    labels = [safe_label(n) for n in names]
    ax.set_xticks(range(k), labels, rotation=30 if k > 2 else 0, ha="right" if k > 2 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                dark = values[i, j] > 0.55 * top
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                        fontsize=8, color="white" if dark else "#222222")


def roc_curves_svg(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    aucs: Mapping[str, float] | None = None,
    points: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """Draw one-vs-rest ROC curves, one line per class, with the chance diagonal.

    Args:
        curves: class name -> ``(fpr, tpr)``, each a sequence of the same length.
        aucs: optional class name -> area under the curve, shown in the legend.
        points: optional class name -> an operating point ``(fpr, tpr)`` marked on its curve.
    """
    aucs, points = aucs or {}, points or {}
    with matplotlib.rc_context(STYLE):
        fig = new_figure(5.0, 3.6)
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], linestyle=":", color="#888888", linewidth=1)
        for i, (name, (fpr, tpr)) in enumerate(curves.items()):
            auc = aucs.get(name)
            label = safe_label(name) + (f" (AUC {auc:.3f})" if auc is not None and np.isfinite(auc) else "")
            ax.plot(fpr, tpr, color=PALETTE[i % len(PALETTE)], linewidth=1.6,
                    label=label if i < _MAX_LEGEND else None)
            if name in points:
                ax.plot([points[name][0]], [points[name][1]], marker="o", markersize=5, linestyle="none",
                        color=PALETTE[i % len(PALETTE)], markeredgecolor="#222222", markeredgewidth=0.6)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_aspect("equal")
        if curves:
            ax.legend(loc="lower right")
        return to_svg(fig)


def line_chart_svg(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> str:
    """Draw lines (e.g. accuracy against severity), optionally with interval bands.

    Args:
        series: name -> ``(x, y)``.
        xlabel, ylabel: axis labels.
        ylim: optional y range.
        bands: optional name -> ``(low, high)`` over the same x as the series.
    """
    bands = bands or {}
    with matplotlib.rc_context(STYLE):
        fig = new_figure(5.0, 3.5)
        ax = fig.subplots()
        for i, (name, (x, y)) in enumerate(series.items()):
            colour = PALETTE[i % len(PALETTE)]
            ax.plot(x, y, marker="o", markersize=3, color=colour, linewidth=1.5,
                    label=safe_label(name) if i < _MAX_LEGEND else None)
            if name in bands:
                lo, hi = bands[name]
                ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
        ax.set_xlabel(safe_label(xlabel))
        ax.set_ylabel(safe_label(ylabel))
        if ylim is not None:
            ax.set_ylim(*ylim)
        if series:
            ax.legend(loc="best")
        return to_svg(fig)


def image_data_uri(image: np.ndarray) -> str:
    """Encode an image as a ``data:image/png;base64,...`` URI.

    Args:
        image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` floats in [0, 1].
    """
    import matplotlib.image

    arr = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, arr, format="png", cmap="gray", vmin=0.0, vmax=1.0)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
