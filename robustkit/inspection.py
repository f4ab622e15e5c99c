"""``robustkit inspect``: what robustkit reads from a checkpoint before it audits it.

The input shape and channels, the output kind with its reason, the final layer, the
preprocessing layers found inside the model (``Rescaling``, ``Normalization``, ...), the
layers that need ``--trust-model``, the Grad-CAM layer saliency would pick, the sidecar, the
declared setup and, with data, the input probe's table (:mod:`robustkit.model.probe`).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.errors import ModelError
from robustkit.model.adapter import ModelAdapter, load_model

__all__ = ["format_inspection", "inspect_model", "serialized_code_layers"]

_PREPROCESSING = ("Rescaling", "Normalization", "Resizing", "CenterCrop")


def serialized_code_layers(path: Path) -> list[str]:
    """Layers of a ``.keras`` archive that carry code Keras' safe mode will not run (``Lambda``
    layers, classes from outside Keras): read from ``config.json`` without loading the model."""
    if path.suffix.lower() != ".keras" or not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except (KeyError, ValueError):
            return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls, module = node.get("class_name"), str(node.get("module") or "")
            name = (node.get("config") or {}).get("name") if isinstance(node.get("config"), dict) else None
            if cls == "Lambda" or (cls and module and not module.startswith("keras") and "registered_name" in node):
                found.append(f"{name or '?'} ({cls}{'' if cls == 'Lambda' else ' from ' + module})")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config.get("config", {}))
    return found


def inspect_model(path: str | Path, *, data: str | Path | None = None, trust: bool = False,
                  model_options: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The inspection of a checkpoint as a JSON-able dict (``format_inspection`` prints it).

    Args:
        path: the checkpoint.
        data: a dataset folder or manifest: adds the input probe's table.
        trust: load checkpoints with serialized code.
        model_options: ``load_model`` keywords (``preprocess``, ``class_names``, ``input_size``...).
        seed: the probe's seed.
    """
    p = Path(path)
    report: dict[str, Any] = {"file": p.name, "needs_trust_model": serialized_code_layers(p)}
    try:
        adapter = load_model(p, trust=trust, **(model_options or {}))
    except ModelError as exc:
        report.update(loaded=False, error=str(exc))
        return report
    probe = _probe(adapter, data, seed) if data is not None else None  # names the outputs first
    report.update(loaded=True, **_describe(adapter))
    if probe is not None:
        report["input_probe"] = probe
    return report


def _describe(adapter: ModelAdapter) -> dict[str, Any]:
    from robustkit._tf import keras
    from robustkit.model.explainers import find_gradcam_layer, flat_layers

    model = adapter.model
    last = model.layers[-1]
    layers = [("/".join(path), layer) for path, layer in flat_layers(model)]
    inside = [_preprocessing_layer(name, layer) for name, layer in layers if type(layer).__name__ in _PREPROCESSING]
    try:
        gradcam = find_gradcam_layer(model)
    except Exception as exc:  # noqa: BLE001 - a model without a 4-D map: say so
        gradcam = f"none ({exc})"
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    h, w, c = adapter.input_shape
    return {
        "fingerprint": adapter.fingerprint,
        "input": {"height": h, "width": w, "channels": c, "size_given": adapter.input_size_given},
        "output": {"kind": adapter.output_kind, "reason": adapter.output_kind_reason, "outputs": adapter.num_classes,
                   "logits_source": adapter.logits_source},
        "final_layer": {"name": last.name, "class": type(last).__name__, "activation": activation},
        "layers": len(layers), "parameters": int(model.count_params()),
        "preprocessing_layers": inside,
        "preprocessing_hint": _hint(inside),
        "gradcam_layer": gradcam,
        "sidecar": adapter.meta or None,
        "declared": {"preprocess": adapter.preprocess.describe(), "class_names": list(adapter.class_names),
                     "class_order_source": adapter.class_order_source},
        "nested_models": [layer.name for _, layer in layers if isinstance(layer, keras.Model)],
    }


def _preprocessing_layer(name: str, layer: Any) -> dict[str, Any]:
    """A preprocessing layer and the numbers it applies."""
    out: dict[str, Any] = {"name": name, "class": type(layer).__name__}
    if type(layer).__name__ == "Rescaling":
        out.update(scale=_plain(layer.scale), offset=_plain(layer.offset))
    elif type(layer).__name__ == "Normalization":
        mean, var = getattr(layer, "mean", None), getattr(layer, "variance", None)
        out.update(mean=_plain(mean), std=_plain(np.sqrt(np.asarray(var, dtype=np.float64))) if var is not None else None,
                   invert=bool(getattr(layer, "invert", False)))
    return out


def _plain(value: Any) -> Any:
    arr = np.asarray(value, dtype=np.float64).ravel() if value is not None else None
    if arr is None:
        return None
    return float(f"{arr[0]:.8g}") if arr.size == 1 else [float(f"{v:.8g}") for v in arr]


def _hint(inside: list[dict[str, Any]]) -> str:
    """What the preprocessing layers inside the model say about its input."""
    if not inside:
        return ("no preprocessing layer inside: the model takes whatever its training fed it; declare it with "
                "--preprocess (keras.applications' DenseNet: torch, ResNet50: caffe, InceptionV3: tf)")
    first = inside[0]
    scale = first.get("scale")
    offset = first.get("offset")
    if first["class"] == "Rescaling" and isinstance(scale, float) and isinstance(offset, float):
        if abs(scale - 1 / 255) < 1e-6 and offset == 0:
            return "the model rescales by 1/255 itself: it takes pixels in [0, 255] (--preprocess 255)"
        if abs(scale - 1 / 127.5) < 1e-6 and offset == -1:
            return "the model maps [0, 255] to [-1, 1] itself: it takes pixels in [0, 255] (--preprocess 255)"
        if scale == 2 and offset == -1:
            return "the model maps [0, 1] to [-1, 1] itself: it takes pixels in [0, 1] (--preprocess unit)"
    mean = first.get("mean")
    if first["class"] == "Normalization" and mean is not None and float(np.max(mean)) > 2:
        return "the model normalises 0-255 values itself (means above 2): it takes [0, 255] (--preprocess 255)"
    return f"the model starts with a {first['class']} layer; check which range it was trained on"


def _probe(adapter: ModelAdapter, data: str | Path, seed: int) -> dict[str, Any]:
    from robustkit.data.loader import load_dataset
    from robustkit.runner import align_classes, input_probe_table

    dataset = align_classes(adapter, load_dataset(data))
    table = input_probe_table(adapter, dataset, seed=seed)
    table["class_order_source"] = adapter.class_order_source
    return table


def format_inspection(report: dict[str, Any]) -> str:
    """The inspection as text, one fact per line."""
    lines = [f"model            {report['file']}"]
    trust = report.get("needs_trust_model") or []
    lines.append(f"--trust-model    {'needed for ' + ', '.join(trust) if trust else 'not needed (no serialized code)'}")
    if not report.get("loaded"):
        lines.append(f"not loaded       {report.get('error')}")
        return "\n".join(lines)
    i, o, f = report["input"], report["output"], report["final_layer"]
    lines += [
        f"input            {i['height']} x {i['width']} x {i['channels']}"
        + (" (size given with --input-size)" if i.get("size_given") else ""),
        f"output           {o['kind']}, {o['outputs']} outputs: {o['reason']}",
        f"logits           {o['logits_source']}",
        f"final layer      {f['name']} ({f['class']}" + (f", activation {f['activation']})" if f["activation"] else ")"),
        f"layers           {report['layers']} ({report['parameters']:,} parameters)",
    ]
    inside = report["preprocessing_layers"]
    lines.append("preprocessing    " + ("; ".join(_layer_text(x) for x in inside) if inside else "none inside the model"))
    lines.append(f"                 {report['preprocessing_hint']}")
    d = report["declared"]
    lines.append(f"declared         {d['preprocess']['formula']} ({d['preprocess']['source']})")
    lines.append(f"classes          {', '.join(d['class_names'])} ({d['class_order_source']})")
    lines.append(f"Grad-CAM layer   {report['gradcam_layer']}")
    lines.append(f"sidecar          {json.dumps(report['sidecar'], sort_keys=True)[:300] if report['sidecar'] else 'none'}")
    if "input_probe" in report:
        lines += _probe_text(report["input_probe"])
    return "\n".join(lines)


def _layer_text(layer: dict[str, Any]) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in layer.items() if k not in ("name", "class") and v is not None)
    return f"{layer['name']} ({layer['class']}{': ' + extra if extra else ''})"


def _probe_text(probe: dict[str, Any]) -> list[str]:
    out = [f"input probe      {probe['n']} images, {probe['metric']} (chance {probe['chance']:.2f}); "
           f"{probe['verdict']}: {probe['message']}"]
    for row in probe["rows"]:
        order = f"; best order {','.join(row['order'])}: {row['score_in_order']:.2f}" if row["order"] else ""
        out.append(f"  {row['setup']:<9} {row['score']:.2f}  ({row['flags']}{order})")
    return out
