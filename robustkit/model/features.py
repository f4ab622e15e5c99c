"""Penultimate features of a Keras classifier: which layer, and the final linear head over it.

The OOD study's feature scores (Mahalanobis, KNN, ViM, ReAct) read a vector per image. By
default that is the input of the model's final Dense layer (the pooled, head-transformed
features the logits are a linear function of); ``features_layer`` names any layer whose
output is a vector per image instead (InceptionV3's ``global_average_pooling2d``, 2048-d).
ViM and ReAct re-apply the final layer, so they need the default tap (``kernel`` and
``bias`` below are None otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from robustkit._tf import keras
from robustkit.errors import ModelError

__all__ = ["FeatureTap", "feature_tap"]

_HEAD_ACTIVATIONS = ("softmax", "sigmoid", "linear")


@dataclass(frozen=True)
class FeatureTap:
    """Where the features come from.

    Attributes:
        tensor: the symbolic ``(N, D)`` tensor of the features.
        source: a description for results.json ("input of the final Dense layer 'predictions'").
        layer: the name of the layer whose output (or, by default, input) it is.
        kernel: the final layer's ``(D, K)`` kernel when the logits are ``f @ kernel + bias``.
        bias: the final layer's ``(K,)`` bias (zeros when it has none).
    """

    tensor: Any
    source: str
    layer: str
    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None


def _final_dense(model: keras.Model) -> tuple[keras.layers.Dense | None, bool]:
    """The last Dense layer, and whether the logits are its (pre-activation) outputs."""
    layers = list(getattr(model, "layers", []) or [])
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        return None, False
    last = dense[-1]
    after = layers[layers.index(last) + 1:]
    act = getattr(getattr(last, "activation", None), "__name__", "")
    only_activation = all(isinstance(a, (keras.layers.Activation, keras.layers.Softmax)) for a in after)
    return last, act in _HEAD_ACTIVATIONS and only_activation and len(after) <= 1


def feature_tap(model: keras.Model, layer: str | None = None, *, model_name: str = "model") -> FeatureTap:
    """The features tensor of ``model``: ``layer``'s output, or the input of the final Dense layer.

    Raises:
        ModelError: ``layer`` is not a layer of the model, or its output is not ``(N, D)``;
            without ``layer``, a model with no Dense layer.
    """
    last, is_head = _final_dense(model)
    if layer is None:
        if last is None:
            raise ModelError(f"{model_name}: expected a final Dense layer to take features from, got none; "
                             "pass --features-layer NAME (a layer whose output is a vector per image).")
        kernel = np.asarray(last.kernel.numpy(), dtype=np.float64) if is_head else None
        bias = (np.asarray(last.bias.numpy(), dtype=np.float64) if last.bias is not None
                else np.zeros(int(last.units))) if is_head else None
        return FeatureTap(last.input, f"input of the final Dense layer {last.name!r}", last.name, kernel, bias)
    try:
        found = model.get_layer(layer)
    except ValueError:
        names = [x.name for x in model.layers]
        raise ModelError(f"--features-layer: expected a layer of {model_name} (one of {', '.join(names[-6:])}, ...), "
                         f"got {layer!r}.") from None
    shape = tuple(found.output.shape)
    if len(shape) != 2 or not shape[1]:
        raise ModelError(f"--features-layer: expected a layer whose output is a vector per image (N, D), got "
                         f"{layer!r} with output shape {shape}.")
    if last is not None and is_head and found is _producer(last):
        return feature_tap(model, None, model_name=model_name)
    return FeatureTap(found.output, f"output of layer {layer!r}", layer)


def _producer(dense: keras.layers.Dense) -> Any:
    """The layer whose output feeds ``dense`` (None when unknown)."""
    history = getattr(dense.input, "_keras_history", None)
    return getattr(history, "operation", None) if history is not None else None
