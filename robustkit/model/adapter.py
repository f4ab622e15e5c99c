"""ModelAdapter: a trained Keras classifier seen in pixel space, with compiled passes.

Every study hands the adapter float32 images in [0, 1], NHWC. The adapter adds the model's
own input scaling, finds the logits before a final softmax or sigmoid (so that attacks and
temperature scaling do not saturate), detects the output kind (``softmax``, ``sigmoid``,
``logits``; ``multilabel`` when asked for) that says how probabilities come from those logits
(:func:`robustkit.metrics.outputs.probabilities`), and gives compiled, batched ``logits``,
``probs`` and input gradients. No study calls ``model.predict`` itself.

Example:
    >>> adapter = load_model("demo.keras")                      # doctest: +SKIP
    >>> adapter.probs(images).argmax(axis=1)                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robustkit._tf import keras, tf
from robustkit.errors import ModelError, check_choice
from robustkit.metrics.outputs import OUTPUT_KINDS, is_sigmoid, probabilities
from robustkit.model.preprocess import Preprocess, resolve_preprocess

__all__ = [
    "INPUT_SCALES",
    "OUTPUT_KINDS",
    "ModelAdapter",
    "detect_output_kind",
    "file_fingerprint",
    "load_model",
    "logits_head",
    "softmax",
    "with_input_size",
    "without_single_label_advice",
]

INPUT_SCALES = ("unit", "255", "symmetric")  # --input-scale: aliases of --preprocess unit, 255, tf
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file, or of every file under a folder (sorted by relative path)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _meta_path(path: Path) -> Path:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(stem + ".meta.json")


def _read_meta(path: Path) -> dict[str, Any]:
    meta = _meta_path(path)
    if not meta.is_file():
        return {}
    try:
        obj = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta}: expected a JSON object of model metadata, got unreadable content ({exc}).") from exc
    if not isinstance(obj, dict):
        raise ModelError(f"{meta}: expected a JSON object of model metadata, got {type(obj).__name__}.")
    return obj


def _load_keras(path: Path, *, trust: bool) -> keras.Model:
    if path.is_dir():
        return _load_saved_model(path)
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelError(
            f"{path}: expected a Keras checkpoint (.keras, .h5, .hdf5 or a SavedModel folder), "
            f"got a {path.suffix or 'suffix-less'} file."
        )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not trust)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one clear error
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text or "arbitrary code" in text:
            raise ModelError(
                f"{path}: the checkpoint holds serialized code (for example a Lambda layer), which "
                "robustkit does not run by default; pass --trust-model (trust=True) if you trust its source."
            ) from exc
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise ModelError(f"{path}: expected a loadable Keras model, got an error while loading: {first[:300]}") from exc


def _load_saved_model(path: Path) -> keras.Model:
    if not (path / "saved_model.pb").is_file():
        raise ModelError(f"{path}: expected a SavedModel folder (with saved_model.pb), got a folder without it.")
    try:
        layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
        spec = _saved_model_input_spec(path)
        inp = keras.Input(shape=spec[1:], dtype="float32")
        out = layer(inp)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return keras.Model(inp, out)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: expected a SavedModel with a serving_default signature, got: {exc}") from exc


def _saved_model_input_spec(path: Path) -> tuple[int | None, ...]:
    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    specs = list(fn.structured_input_signature[1].values())
    if len(specs) != 1 or specs[0].shape.rank != 4:
        raise ModelError(f"{path}: expected one image input of rank 4, got {specs}.")
    return tuple(specs[0].shape.as_list())


_ACTIVATIONS = ("softmax", "sigmoid")


def _final_activation(model: keras.Model) -> tuple[str, Any] | None:
    """The final layer's activation (``softmax``/``sigmoid``/``linear``) and the layer, if known."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    if isinstance(last, keras.layers.Softmax):
        return "softmax", last
    name = getattr(getattr(last, "activation", None), "__name__", "")
    if isinstance(last, (keras.layers.Activation, keras.layers.Dense)) and name in (*_ACTIVATIONS, "linear"):
        return name, last
    return None


def logits_head(model: keras.Model) -> tuple[Any, Callable[[Any], Any], str] | None:
    """Where a softmax- or sigmoid-ended model's logits are: a symbolic tensor, the function
    from it to the logits, and a description; ``None`` when the model ends in neither.

    A final ``Softmax``/``Activation('softmax'|'sigmoid')`` layer: its input. A final Dense
    layer with a softmax or sigmoid activation: its pre-activation ``h @ kernel + bias``, from
    the Dense layer's input.
    """
    found = _final_activation(model)
    if found is None or found[0] not in _ACTIVATIONS:
        return None
    last = found[1]
    if not isinstance(last, keras.layers.Dense):
        return last.input, (lambda t: t), f"input of the final {type(last).__name__} layer"
    kernel, bias = last.kernel, last.bias

    def dense(t: Any) -> Any:
        z = tf.matmul(t, kernel)
        return z + bias if bias is not None else z

    return last.input, dense, f"pre-activation of the final Dense layer {last.name!r}"


#: where a detected sigmoid head's reason starts advising ``--output multilabel``
_SINGLE_LABEL_ADVICE = "; scored as single-label"


def without_single_label_advice(reason: str) -> str:
    """A sigmoid head's detection reason without its "pass --output multilabel" advice, for
    when the model is read as multi-label after all."""
    return reason.split(_SINGLE_LABEL_ADVICE)[0]


def detect_output_kind(model: keras.Model, probe: np.ndarray | None = None) -> tuple[str, str]:
    """The output kind of a model and why: from its final layer, else from a probe's outputs.

    A final softmax -> ``softmax``; a final sigmoid -> ``sigmoid`` (single-label, scored
    one-vs-rest; ``multilabel`` only when asked for); a final linear Dense -> ``logits``.
    Without a recognisable last layer, the outputs ``probe`` ``(N, K)`` decide: rows summing
    to 1 -> ``softmax``, values in [0, 1] otherwise -> ``sigmoid``, anything else -> ``logits``.
    """
    found = _final_activation(model)
    if found is not None:
        act, layer = found
        where = f"the final {type(layer).__name__} layer {layer.name!r}"
        if act == "softmax":
            return "softmax", f"{where} ends in a softmax"
        if act == "sigmoid":
            return "sigmoid", (f"{where} ends in a sigmoid{_SINGLE_LABEL_ADVICE} (one class per image, "
                               "outputs one-vs-rest); pass --output multilabel for several findings per image")
        return "logits", f"{where} has no activation: its outputs are logits"
    p = np.asarray(probe) if probe is not None else np.empty((0, 0))
    if p.size and np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        return "softmax", "no softmax layer found, but the outputs on a probe are >= 0 and sum to 1"
    if p.size and np.all((p >= 0) & (p <= 1)):
        return "sigmoid", ("no sigmoid layer found, but the outputs on a probe lie in [0, 1] and do not sum to 1; "
                           "pass --output softmax|logits|multilabel if that is wrong")
    return "logits", "no final activation found and the outputs are not probabilities: taken as logits"


class ModelAdapter:
    """A Keras image classifier in pixel space with compiled batched passes.

    Args:
        model: the Keras model (input NHWC, output ``(N, K)`` probabilities or logits).
        class_names: the K class names in output order.
        name: a display name (the checkpoint's file name).
        fingerprint: sha256 of the checkpoint file.
        preprocess: what the model's input expects (:class:`~robustkit.model.preprocess.Preprocess`:
            a keras.applications preset, a mean/std, a channel order); robustkit always passes
            pixels in [0, 1] and applies it inside the graph. Default: ``input_scale``, else the
            sidecar's keys, else ``unit`` (stated as assumed).
        input_scale: the older name of the plain presets: ``unit`` [0, 1], ``255`` [0, 255] or
            ``symmetric`` [-1, 1] (``tf``).
        batch_size: images per compiled call; chosen from the input size when omitted.
        path: where the checkpoint came from.
        meta: the checkpoint's sidecar metadata (``<stem>.meta.json``), if any.
        output: the output kind (``softmax``, ``sigmoid``, ``multilabel``, ``logits``);
            default: the sidecar's ``output``, else detected from the final layer
            (:func:`detect_output_kind`). ``output_kind_reason`` says which and why.
        features_layer: the layer :meth:`logits_and_features` reads, whose output must be a
            vector per image; default: the input of the final Dense layer.
        thresholds: multi-label models: the decision threshold of each finding (a finding is
            called present when its probability is >= its threshold); the audit runner sets
            them (given, or chosen on a calibration half) and ``threshold_source`` says how.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        class_names: list[str] | None = None,
        name: str = "model",
        fingerprint: str = "",
        preprocess: Preprocess | None = None,
        input_scale: str | None = None,
        batch_size: int | None = None,
        path: Path | None = None,
        meta: dict[str, Any] | None = None,
        output: str | None = None,
        features_layer: str | None = None,
        thresholds: list[float] | np.ndarray | None = None,
        threshold_source: str = "",
    ) -> None:
        if input_scale is not None:
            check_choice("input_scale", input_scale, INPUT_SCALES)
        if output is not None:
            check_choice("output", output, OUTPUT_KINDS)
        self.model = model
        self.name = name
        self.path = path
        self.fingerprint = fingerprint
        self.meta = dict(meta or {})
        noise = self.meta.get("noise_sigma", 0.0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise ModelError(f"{name}: expected the sidecar's 'noise_sigma' to be a number >= 0, got {noise!r}.")
        self._check_input()
        self.preprocess = preprocess or resolve_preprocess(
            preset=input_scale, channels=self.input_shape[2], source="--input-scale/input_scale", meta=self.meta)
        self.num_classes = self._check_output()
        self.class_names, self.class_order_source = self._resolve_class_names(class_names)
        self.batch_size = batch_size or self._default_batch_size()
        self.output_kind, self.output_kind_reason = self._resolve_output_kind(output)
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self.threshold_source = threshold_source
        self.logits_source, self._raw_logits = self._find_logits()
        spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
        self._logits_tf = tf.function(self.logits_graph, input_signature=[spec], autograph=False)
        self._grad_tf = tf.function(
            self._gradient_graph, input_signature=[spec, tf.TensorSpec((None,), tf.int32)], autograph=False
        )
        self._inputs_tf: Any = None  # logits_of_inputs' compiled pass, built on first use
        self.input_probe: dict[str, Any] | None = None  # the runner's probe table (robustkit.model.probe)
        self.input_size_given: tuple[int, int] | None = None  # --input-size, when load_model fixed it
        self.calls = 0
        self.features_layer = features_layer
        self._features: dict[str | None, tuple[Any, Any]] = {}  # layer -> (FeatureTap, compiled call)
        if features_layer is not None:
            self.feature_tap()  # a bad layer name fails at load time, in one line

    # -- construction helpers -------------------------------------------------------------
    def _check_input(self) -> None:
        shape = tuple(self.model.inputs[0].shape) if getattr(self.model, "inputs", None) else None
        if len(getattr(self.model, "inputs", []) or []) != 1 or shape is None or len(shape) != 4:
            raise ModelError(
                f"{self.name}: expected a model with one image input of shape (N, H, W, C), got inputs {shape}."
            )
        h, w, c = shape[1:]
        if h is None or w is None:
            raise ModelError(f"{self.name}: expected a fixed input size, got input shape {shape} (undefined height "
                             "or width); pass --input-size H,W (input_size=(H, W)) to audit it at that size.")
        if c not in (1, 3):
            raise ModelError(f"{self.name}: expected an input with 1 or 3 channels, got input shape {shape}.")
        self.input_shape: tuple[int, int, int] = (int(h), int(w), int(c))

    def _check_output(self) -> int:
        outputs = getattr(self.model, "outputs", None) or []
        shape = tuple(outputs[0].shape) if outputs else None
        if len(outputs) != 1 or shape is None or len(shape) != 2 or not shape[1] or shape[1] < 2:
            raise ModelError(
                f"{self.name}: expected a classifier whose output is a vector of class scores (N, K) "
                f"with K >= 2, got output shape {shape}."
            )
        return int(shape[1])

    def _resolve_class_names(self, class_names: list[str] | None) -> tuple[list[str], str]:
        """The output names and where their order came from (``--model-classes``, the sidecar,
        or not known yet: the runner then takes the data's class names and says so)."""
        source = ("declared (--model-classes or the config's [model] table)" if class_names is not None
                  else "the checkpoint's .meta.json")
        names = class_names if class_names is not None else self.meta.get("class_names")
        if names is None:
            return [f"class_{k}" for k in range(self.num_classes)], "unknown (no sidecar, no --model-classes)"
        names = [str(n) for n in names]
        if len(names) != self.num_classes or len(set(names)) != len(names):
            raise ModelError(
                f"{self.name}: expected {self.num_classes} distinct class names for its {self.num_classes} outputs "
                f"(from {source}), got {len(names)}: {names}."
            )
        return names, source

    @property
    def input_scale(self) -> str:
        """The preprocessing preset's name (``custom`` for a declared mean/std)."""
        return self.preprocess.preset

    def assumptions(self) -> list[str]:
        """What robustkit assumed about this model rather than read from a declaration."""
        out = []
        if self.preprocess.assumed:
            out.append("preprocessing assumed: the model takes pixels in [0, 1] (no sidecar, no --preprocess)")
        if self.class_order_source.startswith("assumed"):
            out.append(f"class order {self.class_order_source}")
        return out

    def _default_batch_size(self) -> int:
        h, w, c = self.input_shape
        target = 4_000_000 / (h * w * c)
        return int(min(64, max(4, 2 ** math.floor(math.log2(max(target, 1.0))))))

    def head(self) -> tuple[Any, Callable[[Any], Any]]:
        """The symbolic tensor of the model the logits come from, and the function to them.

        For tools that tap inner layers (Grad-CAM): ``keras.Model(model.inputs, [layer.output,
        tensor])`` then ``fn(tensor_value)`` gives the same logits as :meth:`logits_graph`.
        """
        found = logits_head(self.model)
        if found is not None:
            return found[0], found[1]
        if self.logits_source.startswith("log of"):
            return self.model.outputs[0], lambda t: tf.math.log(tf.maximum(t, 1e-12))
        if self.logits_source.startswith("logit of"):
            return self.model.outputs[0], _logit
        return self.model.outputs[0], lambda t: t

    def scale_input(self, x: Any) -> Any:
        """Pixel space [0, 1] -> what the model's input expects (:attr:`preprocess`; traceable)."""
        return self.preprocess.apply(x)

    def _probe(self) -> np.ndarray:
        """The model's outputs ``(2, K)`` on two fixed images (a ramp), for detection."""
        x = np.linspace(0, 1, 2 * int(np.prod(self.input_shape)), dtype=np.float32).reshape(2, *self.input_shape)
        return np.asarray(self.model(self.scale_input(x), training=False))

    def _resolve_output_kind(self, output: str | None) -> tuple[str, str]:
        """The output kind and the reason: the argument, else the sidecar, else detection."""
        probe = None if logits_head(self.model) is not None else self._probe()
        detected, why = detect_output_kind(self.model, probe)
        if detected == "sigmoid" and "multilabel" in (output, self.meta.get("output")):
            why = without_single_label_advice(why)
        if output is not None:
            return output, f"set by --output/output={output!r} (detected: {detected}, as {why})"
        meta_kind = self.meta.get("output")
        if meta_kind is not None:
            if meta_kind not in OUTPUT_KINDS:
                raise ModelError(f"{self.name}: expected 'output' in its .meta.json to be one of "
                                 f"{', '.join(OUTPUT_KINDS)}, got {meta_kind!r}.")
            return str(meta_kind), f"set by the checkpoint's .meta.json (detected: {detected}, as {why})"
        return detected, why

    def _find_logits(self) -> tuple[str, Callable[[Any], Any]]:
        found = logits_head(self.model)
        if found is not None:
            tensor, fn, source = found
            trunk = keras.Model(self.model.inputs, tensor)
            return source, lambda x: fn(trunk(x, training=False))
        p = self._probe()
        if is_sigmoid(self.output_kind) and bool(np.all((p >= 0) & (p <= 1))):
            return ("logit of the output probabilities (sigmoid layer not found)",
                    lambda x: _logit(self.model(x, training=False)))
        looks_like_probs = bool(np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-3))
        if looks_like_probs and not is_sigmoid(self.output_kind):
            def log_probs(x: Any) -> Any:
                return tf.math.log(tf.maximum(self.model(x, training=False), 1e-12))

            return "log of the output probabilities (softmax layer not found)", log_probs
        return "model output (taken as logits)", lambda x: self.model(x, training=False)

    # -- graphs ---------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert  # plain graph code; autograph trips on the lambdas
    def logits_graph(self, x: Any) -> Any:
        """Pixel-space images ``(N, H, W, C)`` in [0, 1] -> logits ``(N, K)``; traceable."""
        z = self._raw_logits(self.scale_input(x))
        return tf.cast(z, tf.float32)

    def _gradient_graph(self, x: Any, target: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = self.logits_graph(x)
            picked = tf.gather(z, target, axis=1, batch_dims=1)
        return tape.gradient(picked, x)

    # -- batched numpy API ----------------------------------------------------------------
    def _check_batch(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ModelError(
                f"{self.name}: expected images of shape (N, {', '.join(map(str, self.input_shape))}), got {x.shape}."
            )
        return x

    def _chunks(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(n, start + self.batch_size))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, K)`` of pixel-space images ``(N, H, W, C)``, computed in batches."""
        x = self._check_batch(x)
        out = np.empty((len(x), self.num_classes), dtype=np.float32)
        for sl in self._chunks(len(x)):
            out[sl] = self._logits_tf(tf.constant(x[sl])).numpy()
            self.calls += 1
        return out

    def logits_of_inputs(self, z: np.ndarray) -> np.ndarray:
        """Logits ``(N, K)`` of inputs already in the model's own input space (no preprocessing):
        the input probe's one compiled pass for every candidate preprocessing."""
        z = np.asarray(z, dtype=np.float32)
        if self._inputs_tf is None:
            spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
            self._inputs_tf = tf.function(lambda t: tf.cast(self._raw_logits(t), tf.float32),
                                          input_signature=[spec], autograph=False)
        out = np.empty((len(z), self.num_classes), dtype=np.float32)
        for sl in self._chunks(len(z)):
            out[sl] = self._inputs_tf(tf.constant(z[sl])).numpy()
            self.calls += 1
        return out

    def probs(self, x: np.ndarray) -> np.ndarray:
        """The model's probabilities ``(N, K)`` (float32) of pixel-space images, per its output
        kind (:func:`robustkit.metrics.outputs.probabilities`: softmax or elementwise sigmoid)."""
        return probabilities(self.logits(x), self.output_kind).astype(np.float32)

    def gradient(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Input gradient ``(N, H, W, C)`` of the logit of class ``target[i]`` for each image."""
        x = self._check_batch(x)
        t = np.asarray(target, dtype=np.int32).reshape(-1)
        out = np.empty_like(x)
        for sl in self._chunks(len(x)):
            out[sl] = self._grad_tf(tf.constant(x[sl]), tf.constant(t[sl])).numpy()
            self.calls += 1
        return out

    # -- features (the OOD study) ----------------------------------------------------------
    def feature_tap(self, layer: str | None = None) -> Any:
        """The :class:`~robustkit.model.features.FeatureTap` of ``layer`` (default:
        ``features_layer``, else the input of the final Dense layer); its compiled
        logits-and-features call is built once per layer."""
        return self._feature_call(layer)[0]

    def _feature_call(self, layer: str | None) -> tuple[Any, Any]:
        layer = layer if layer is not None else self.features_layer
        if layer not in self._features:
            from robustkit.model.features import feature_tap

            tap = feature_tap(self.model, layer, model_name=self.name)
            tensor, fn = self.head()
            both = keras.Model(self.model.inputs, [tap.tensor, tensor])

            def graph(x: Any) -> Any:
                f, t = both(self.scale_input(x), training=False)
                return tf.cast(fn(t), tf.float32), tf.cast(f, tf.float32)

            spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
            self._features[layer] = (tap, tf.function(graph, input_signature=[spec], autograph=False))
        return self._features[layer]

    def logits_and_features(self, x: np.ndarray, *, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(N, K)`` and features ``(N, D)`` (of :meth:`feature_tap`'s layer) of
        pixel-space images, both from one compiled forward pass."""
        x = self._check_batch(x)
        tap, call = self._feature_call(layer)
        d = int(tap.tensor.shape[-1])
        z_out = np.empty((len(x), self.num_classes), dtype=np.float32)
        f_out = np.empty((len(x), d), dtype=np.float32)
        for sl in self._chunks(len(x)):
            z, f = call(tf.constant(x[sl]))
            z_out[sl], f_out[sl] = z.numpy(), f.numpy()
            self.calls += 1
        return z_out, f_out

    def features(self, x: np.ndarray, layer: str | None = None) -> np.ndarray:
        """Features ``(N, D)`` of pixel-space images (the input of the final Dense layer, or the
        vector output of ``layer``): :meth:`logits_and_features` without the logits."""
        return self.logits_and_features(x, layer=layer)[1]

    def load_spec(self, *, trust: bool) -> dict[str, Any]:
        """The keywords of :func:`load_model` that rebuild this adapter from its checkpoint
        elsewhere (a Ray worker): the same classes, preprocessing, size, output and thresholds."""
        if self.path is None:
            raise ModelError(f"{self.name}: expected an adapter loaded from a checkpoint path, got an in-memory model.")
        return {"path": str(self.path), "class_names": list(self.class_names),
                "preprocess": self.preprocess.describe(), "input_size": self.input_size_given, "trust": trust,
                "batch_size": self.batch_size, "output": self.output_kind,
                "thresholds": None if self.thresholds is None else self.thresholds.tolist(),
                "threshold_source": self.threshold_source}

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance for results.json."""
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "fingerprint": self.fingerprint,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            **({"input_size_given": list(self.input_size_given)} if self.input_size_given else {}),
            "input_scale": self.input_scale,
            "preprocess": self.preprocess.describe(),
            "class_order_source": self.class_order_source,
            "assumptions": self.assumptions(),
            **({"input_probe": self.input_probe} if self.input_probe is not None else {}),
            "logits_source": self.logits_source,
            "output_kind": self.output_kind,
            "output_kind_reason": self.output_kind_reason,
            "parameters": int(self.model.count_params()),
            "arch": self.meta.get("arch", self.model.name),
            "batch_size": self.batch_size,
            **({"training_noise_sigma": float(self.meta["noise_sigma"])} if "noise_sigma" in self.meta else {}),
            **({"thresholds": dict(zip(self.class_names, map(float, self.thresholds), strict=True)),
                "threshold_source": self.threshold_source} if self.thresholds is not None else {}),
        }


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``(N, K)`` as float32 (computed in float64 by
    :func:`robustkit.metrics.outputs.probabilities`)."""
    return probabilities(z, "softmax").astype(np.float32)


def _logit(p: Any) -> Any:
    """``log p - log(1 - p)`` of sigmoid outputs (traceable), clipped away from 0 and 1."""
    q = tf.clip_by_value(tf.cast(p, tf.float32), 1e-7, 1.0 - 1e-7)
    return tf.math.log(q) - tf.math.log1p(-q)


def load_model(
    path: str | Path,
    *,
    class_names: list[str] | None = None,
    input_scale: str | None = None,
    preprocess: Preprocess | dict[str, Any] | str | None = None,
    input_mean: Any = None,
    input_std: Any = None,
    channel_order: str | None = None,
    input_size: tuple[int, int] | None = None,
    trust: bool = False,
    batch_size: int | None = None,
    output: str | None = None,
    features_layer: str | None = None,
    thresholds: list[float] | None = None,
    threshold_source: str = "",
) -> ModelAdapter:
    """Load a checkpoint (``.keras``, legacy ``.h5``/``.hdf5``, SavedModel folder) as an adapter.

    Class names and preprocessing come from the arguments, else from the sidecar
    ``<stem>.meta.json`` that ``robustkit train`` writes, else defaults (``class_0``..., the
    data's names put on them by the runner; ``unit``), each default stated as assumed. The
    output kind likewise: ``output``, else the sidecar's ``output``, else detected from the
    final layer. Keras safe mode stays on unless ``trust`` is set. ``preprocess`` is a preset
    name (with ``input_mean``, ``input_std``, ``channel_order``: see
    :func:`~robustkit.model.preprocess.resolve_preprocess`), a
    :class:`~robustkit.model.preprocess.Preprocess` or its ``describe()`` dict; ``input_size`` fixes the height and width of a model built for any size.
    ``features_layer`` names the layer :meth:`ModelAdapter.logits_and_features` reads
    (default: the input of the final Dense layer).
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: expected a model checkpoint, got no such file.")
    meta = _read_meta(p)  # a SavedModel folder reads <folder>.meta.json too
    model = _load_keras(p, trust=trust)
    if input_size is not None:
        model = with_input_size(model, input_size, name=p.name)
    preprocess = _declared_preprocess(model, preprocess, input_scale, input_mean, input_std, channel_order)
    adapter = ModelAdapter(
        model,
        class_names=class_names,
        name=p.name,
        fingerprint=file_fingerprint(p),
        preprocess=preprocess,
        input_scale=input_scale,
        batch_size=batch_size,
        path=p,
        meta=meta,
        output=output,
        features_layer=features_layer,
        thresholds=thresholds,
        threshold_source=threshold_source,
    )
    adapter.input_size_given = None if input_size is None else (int(input_size[0]), int(input_size[1]))
    return adapter


def _declared_preprocess(model: keras.Model, preprocess: Preprocess | dict[str, Any] | str | None,
                         input_scale: str | None, mean: Any, std: Any, channels: str | None) -> Preprocess | None:
    """load_model's preprocessing arguments as one :class:`Preprocess` (None: the adapter reads
    the sidecar or assumes ``unit``)."""
    if isinstance(preprocess, Preprocess):
        return preprocess
    if isinstance(preprocess, dict):
        d = preprocess
        return Preprocess(preset=str(d["preset"]), scale=float(d["scale"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                          channels=str(d["channels"]), source=str(d["source"]))
    if preprocess is not None and input_scale is not None and preprocess != input_scale:
        raise ModelError(f"--input-scale {input_scale} and --preprocess {preprocess}: expected one of them, got both.")
    preset = preprocess or input_scale
    if preset is None and mean is None and std is None and channels is None:
        return None
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    c = int(shape[-1]) if len(shape) == 4 and shape[-1] in (1, 3) else 3
    return resolve_preprocess(preset=preset, mean=mean, std=std, order=channels, channels=c,
                              source="declared (--preprocess or the config's [model] table)")


def with_input_size(model: keras.Model, size: tuple[int, int], *, name: str = "model") -> keras.Model:
    """The same model (same layers, same weights) with its input fixed to ``size`` = (H, W).

    For a model built for any size (``Input(shape=(None, None, C))`` and a global pooling):
    its config is rebuilt with the input layer's shape set, so the layers stay flat (Grad-CAM
    and feature taps find them) rather than nested in a wrapper model.
    """
    h, w = (int(v) for v in size)
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if len(shape) != 4:
        raise ModelError(f"{name}: expected one image input of rank 4 to fix its size, got {shape}.")
    if shape[1] is not None and shape[2] is not None:
        if (shape[1], shape[2]) != (h, w):
            raise ModelError(f"--input-size {h},{w}: expected it only for a model without a fixed input size, "
                             f"got a model fixed at {shape[1]}x{shape[2]}.")
        return model
    config = model.get_config()
    for layer in config.get("layers", []):
        if layer.get("class_name") == "InputLayer":
            layer["config"]["batch_shape"] = [None, h, w, shape[3]]
    try:
        fixed = model.__class__.from_config(config)
        fixed.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - a model Keras cannot rebuild: one line
        raise ModelError(f"{name}: expected a functional or Sequential model to fix its input at {h}x{w}, got an "
                         f"error rebuilding it: {str(exc).splitlines()[0][:200]}") from exc
    return fixed
