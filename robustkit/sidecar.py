"""The figures sidecar: the images and large arrays of the studies' ``data``, beside results.json.

A study's ``data`` holds what its report view draws: example images as base64 PNG text and
maps as nested lists of numbers. Stored inline they made most of ``results.json``; on save,
:func:`split` moves each of them into ``figures.npz`` (PNG bytes as ``uint8`` arrays, number
grids as arrays) and leaves a small reference in the JSON::

    {"$sidecar": "figures.npz", "key": "png-3f2a9c0d1e4b5a67", "kind": "png"}

The key is a hash of the content, so identical images are stored once and a reference never
names another figure. :func:`join` puts the values back on load, exactly as the JSON would
have given them (same text, same numbers, same Python types); a reference whose figure is
absent (the sidecar deleted or not copied) stays as it is and is counted, so a view skips
that figure and the report says so in one line. Compare and gate read metrics only and never
need the sidecar. This module never imports TensorFlow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["MIN_ARRAY", "REF_KEY", "SIDECAR_FILE", "dump_sidecar", "is_reference", "join", "split"]

SIDECAR_FILE = "figures.npz"
REF_KEY = "$sidecar"
#: lists of fewer numbers than this stay inline (curves, histograms: read as numbers)
MIN_ARRAY = 256
_PNG_B64 = "iVBORw0KGgo"  # the base64 text of the PNG signature
_URI = "data:image/png;base64,"


def is_reference(value: Any) -> bool:
    """Whether ``value`` is a reference to a figure of the sidecar."""
    return isinstance(value, dict) and REF_KEY in value


def split(value: Any, store: dict[str, np.ndarray]) -> Any:
    """Return the JSON tree ``value`` with its figures replaced by references, added to ``store``.

    Args:
        value: a JSON tree (dicts, lists, strings, numbers), as ``StudyResult.to_json`` gives.
        store: filled with ``key -> array`` for every figure moved out.
    """
    if isinstance(value, str):
        return _split_png(value, store)
    if isinstance(value, dict):
        return value if is_reference(value) else {k: split(v, store) for k, v in value.items()}
    if isinstance(value, list):
        arr = _numeric_array(value)
        if arr is None:
            return [split(v, store) for v in value]
        return _reference(arr, "array", store)
    return value


def join(value: Any, arrays: Mapping[str, np.ndarray], missing: list[str]) -> Any:
    """Return ``value`` with every reference replaced by its figure from ``arrays``.

    References not found in ``arrays`` are kept and their keys appended to ``missing``.
    """
    if is_reference(value):
        key, kind = str(value.get("key")), value.get("kind")
        if key not in arrays or kind not in ("png", "png_uri", "array"):
            missing.append(key)
            return value
        arr = np.asarray(arrays[key])
        if kind == "array":
            return arr.tolist()
        text = base64.b64encode(arr.tobytes()).decode("ascii")
        return _URI + text if kind == "png_uri" else text
    if isinstance(value, dict):
        return {k: join(v, arrays, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [join(v, arrays, missing) for v in value]
    return value


def dump_sidecar(store: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of ``figures.npz`` holding ``store`` (compressed: the number grids shrink)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **dict(store))  # type: ignore[arg-type]
    return buf.getvalue()


def _split_png(text: str, store: dict[str, np.ndarray]) -> Any:
    kind = "png_uri" if text.startswith(_URI + _PNG_B64) else "png" if text.startswith(_PNG_B64) else None
    if kind is None:
        return text
    body = text[len(_URI):] if kind == "png_uri" else text
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return text
    if base64.b64encode(raw).decode("ascii") != body:  # not canonical: it would not come back byte for byte
        return text
    return _reference(np.frombuffer(raw, dtype=np.uint8), kind, store)


def _numeric_array(value: list[Any]) -> np.ndarray | None:
    """``value`` as an int64/float64 array when it is a large, rectangular, one-typed grid of
    numbers that :meth:`numpy.ndarray.tolist` gives back exactly; else None."""
    if not value or not isinstance(value[0], (list, int, float)) or isinstance(value[0], bool):
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        return None
    if arr.dtype.kind not in "if" or arr.size < MIN_ARRAY:
        return None
    arr = arr.astype(np.int64 if arr.dtype.kind == "i" else np.float64, copy=False)
    if json.dumps(arr.tolist()) != json.dumps(value):  # mixed ints and floats, or bools
        return None
    return arr


def _reference(arr: np.ndarray, kind: str, store: dict[str, np.ndarray]) -> dict[str, str]:
    digest = hashlib.sha256(f"{kind}{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()).hexdigest()[:16]
    key = f"{kind}-{digest}"
    store[key] = arr
    return {REF_KEY: SIDECAR_FILE, "key": key, "kind": kind}
