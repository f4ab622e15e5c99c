"""The declared preprocessing: from robustkit's pixel space [0, 1] to what a model's input expects.

Every study works on images in [0, 1] (attack budgets, noise, saliency); the model sees
``(reorder(x) * scale - mean) / std``, computed inside the graph by the adapter. The presets
are keras.applications' ``preprocess_input`` modes and the plain ranges:

========  =====================================  ======================================
preset    the model sees                         keras.applications families
========  =====================================  ======================================
unit      x in [0, 1]                            robustkit's own checkpoints
255       x * 255 in [0, 255]                    EfficientNet, MobileNetV3, ConvNeXt (their
                                                 own Rescaling/Normalization layers inside)
tf        x * 2 - 1 in [-1, 1]                   InceptionV3, Xception, MobileNetV2
torch     (x - ImageNet mean) / ImageNet std     DenseNet
caffe     BGR, x * 255 - ImageNet BGR mean       ResNet50, VGG16
========  =====================================  ======================================

``--input-mean``/``--input-std`` give any other normalisation, in the units of the base
range (``unit`` or ``255``). No TensorFlow here: :meth:`Preprocess.apply` is arithmetic that
works on NumPy arrays and on tensors alike.

Example:
    >>> p = resolve_preprocess(preset="torch", channels=3)
    >>> [round(float(v), 3) for v in p.apply(np.full((1, 1, 1, 3), 0.5, np.float32)).ravel()]
    [0.066, 0.196, 0.418]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustkit.errors import ConfigError

__all__ = ["CHANNEL_ORDERS", "PRESETS", "Preprocess", "parse_floats", "presets_for", "resolve_preprocess"]

#: preset -> (scale, mean, std, channel order or None for "the model's default")
PRESETS: dict[str, tuple[float, tuple[float, ...], tuple[float, ...], str | None]] = {
    "unit": (1.0, (0.0,), (1.0,), None),
    "255": (255.0, (0.0,), (1.0,), None),
    "tf": (255.0, (127.5,), (127.5,), None),  # keras' mode="tf": x / 127.5 - 1
    "torch": (1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rgb"),
    "caffe": (255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), "bgr"),
}
#: the older ``--input-scale`` names
_ALIASES = {"symmetric": "tf"}
CHANNEL_ORDERS = ("rgb", "bgr", "gray")


@dataclass(frozen=True)
class Preprocess:
    """One model input convention: ``(reorder(x) * scale - mean) / std`` of pixels ``x`` in [0, 1].

    Attributes:
        preset: ``unit``, ``255``, ``tf``, ``torch``, ``caffe`` or ``custom``.
        scale: 1 (the base range [0, 1]) or 255 ([0, 255]).
        mean: per channel (after reordering) or one value for every channel.
        std: likewise.
        channels: ``rgb``, ``bgr`` or ``gray`` (a one-channel model).
        source: where the setting came from (an option, the sidecar, or "assumed").
    """

    preset: str = "unit"
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: str = "rgb"
    source: str = "assumed (no sidecar, no --preprocess): pixels in [0, 1]"

    @property
    def assumed(self) -> bool:
        return self.source.startswith("assumed")

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """``mul`` and ``add`` (float32, per channel) with ``apply(x) = reorder(x) * mul + add``."""
        std = np.asarray(self.std, dtype=np.float64)
        mul = (self.scale / std).astype(np.float32)
        add = (-np.asarray(self.mean, dtype=np.float64) / std).astype(np.float32)
        return mul, add

    def apply(self, x: Any) -> Any:
        """Pixels ``(N, H, W, C)`` in [0, 1] (RGB, or one gray channel) -> the model's input."""
        if self.channels == "bgr":
            x = x[..., ::-1]
        mul, add = self.coefficients()
        if self.preset in ("unit", "255", "tf"):  # scalars: the exact arithmetic of the older input scales
            return x * float(mul[0]) + float(add[0])
        return x * mul + add

    def flags(self) -> str:
        """The command-line flags that declare this setting."""
        if self.preset != "custom":
            return f"--preprocess {self.preset}"
        base = "--preprocess 255 " if self.scale == 255.0 else ""
        return (f"{base}--input-mean {','.join(f'{v:g}' for v in self.mean)} "
                f"--input-std {','.join(f'{v:g}' for v in self.std)}")

    def formula(self) -> str:
        """The mapping in words, e.g. ``(x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]``."""
        x = "x[..., ::-1]" if self.channels == "bgr" else "x"
        if self.scale != 1.0:
            x = f"{x} * {self.scale:g}"
        if any(self.mean):
            m = f"{self.mean[0]:g}" if len(self.mean) == 1 else f"[{', '.join(f'{v:g}' for v in self.mean)}]"
            x = f"({x} - {m})"
        if any(s != 1.0 for s in self.std):
            s = f"{self.std[0]:g}" if len(self.std) == 1 else f"[{', '.join(f'{v:g}' for v in self.std)}]"
            x = f"{x} / {s}"
        return f"{x}, x = pixels in [0, 1]"

    def describe(self) -> dict[str, Any]:
        """JSON-able: the preset, its numbers, the formula and where it came from."""
        return {"preset": self.preset, "scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                "channels": self.channels, "formula": self.formula(), "source": self.source}

    def table(self) -> dict[str, Any]:
        """The keys of the sidecar and the audit config that declare this setting."""
        out: dict[str, Any] = {"preprocess": self.preset if self.preset != "custom" else
                               ("255" if self.scale == 255.0 else "unit"), "channel_order": self.channels}
        if self.preset == "custom":
            out.update(input_mean=list(self.mean), input_std=list(self.std))
        return out


def parse_floats(option: str, text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` (or a list) -> floats; a ConfigError naming ``option`` otherwise."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{option}: expected one number or three comma-separated numbers, got {text!r}.") from None
    if len(values) not in (1, 3) or not all(np.isfinite(values)):
        raise ConfigError(f"{option}: expected one number or three comma-separated finite numbers, got {text!r}.")
    return values


def presets_for(channels: int) -> tuple[str, ...]:
    """The presets that apply to a model with ``channels`` input channels (the probe's candidates)."""
    return tuple(PRESETS) if channels == 3 else ("unit", "255", "tf")


def resolve_preprocess(
    *,
    preset: str | None = None,
    mean: Sequence[float] | str | None = None,
    std: Sequence[float] | str | None = None,
    order: str | None = None,
    channels: int = 3,
    source: str = "--preprocess",
    meta: dict[str, Any] | None = None,
) -> Preprocess:
    """The model's :class:`Preprocess` from the options, else the sidecar's keys, else ``unit``.

    Args:
        preset: ``unit``, ``255``, ``tf`` (``symmetric``), ``torch`` or ``caffe``.
        mean, std: per-channel (or one) values in the units of the base range, for a
            normalisation no preset matches (with ``unit`` or ``255`` only).
        order: ``rgb``, ``bgr`` or ``gray``; default: the preset's (``caffe``: ``bgr``), else
            ``rgb`` for three channels and ``gray`` for one.
        channels: the model's input channels (1 or 3).
        source: how to name the options in messages and in :attr:`Preprocess.source`.
        meta: the checkpoint's sidecar (``preprocess``/``input_scale``/``input_range``, ``input_mean``,
            ``input_std``, ``channel_order``), read when no option is given.
    """
    given = any(v is not None for v in (preset, mean, std, order))
    if not given and meta:
        keys = ("preprocess", "input_scale", "input_range", "input_mean", "input_std", "channel_order")
        if any(k in meta for k in keys):
            ranges = {(0, 1): "unit", (0, 255): "255", (-1, 1): "tf"}  # robustkit train's "input_range"
            by_range = ranges.get(tuple(meta["input_range"])) if isinstance(meta.get("input_range"), list) else None
            return resolve_preprocess(
                preset=meta.get("preprocess", meta.get("input_scale", by_range)), mean=meta.get("input_mean"),
                std=meta.get("input_std"), order=meta.get("channel_order"), channels=channels,
                source="the checkpoint's .meta.json")
    name = _ALIASES.get(str(preset), preset) if preset is not None else "unit"
    if name not in PRESETS:
        raise ConfigError(f"{source}: expected one of {', '.join(PRESETS)}, got {preset!r}.")
    scale, p_mean, p_std, p_order = PRESETS[name]
    m, s = parse_floats("--input-mean", mean), parse_floats("--input-std", std)
    if (m is not None or s is not None) and name not in ("unit", "255"):
        raise ConfigError(f"--input-mean/--input-std: expected them with --preprocess unit or 255 (the base range "
                          f"they are given in), got --preprocess {name}, which sets its own.")
    order = _channel_order(order, p_order, channels, name)
    if channels == 1 and len(m or p_mean) == 3:
        raise ConfigError(f"--preprocess {name}: expected a three-channel model (its mean and std are per RGB "
                          "channel), got a one-channel input; give --input-mean M --input-std S for one channel.")
    custom = m is not None or s is not None
    if custom:
        for opt, v in (("--input-mean", m), ("--input-std", s)):
            if v is not None and len(v) not in (1, channels):
                raise ConfigError(f"{opt}: expected 1 or {channels} values for a {channels}-channel model, got {len(v)}.")
        if s is not None and min(s) <= 0:
            raise ConfigError(f"--input-std: expected positive values, got {list(s)}.")
    text = source if given else "assumed (no sidecar, no --preprocess): pixels in [0, 1]"
    return Preprocess(preset="custom" if custom else name, scale=scale, mean=m or p_mean, std=s or p_std,
                      channels=order, source=text)


def _channel_order(order: str | None, preset_order: str | None, channels: int, name: str) -> str:
    if order is not None and order not in CHANNEL_ORDERS:
        raise ConfigError(f"--channel-order: expected one of {', '.join(CHANNEL_ORDERS)}, got {order!r}.")
    if channels == 1:
        if order not in (None, "gray"):
            raise ConfigError(f"--channel-order {order}: expected gray for a one-channel model, got a colour order.")
        return "gray"
    if order == "gray":
        raise ConfigError("--channel-order gray: expected a one-channel model, got a three-channel input.")
    if order is not None and preset_order is not None and order != preset_order:
        raise ConfigError(f"--channel-order {order}: expected {preset_order} with --preprocess {name}, which fixes it.")
    return order or preset_order or "rgb"
