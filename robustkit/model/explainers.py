"""Attribution maps through the ModelAdapter: gradients, SmoothGrad, IG, Grad-CAM, activations.

Every method explains the (pre-softmax) logit of a chosen class and returns a non-negative
relevance map ``(N, H, W)`` at the input size:

* ``vanilla_gradient``: max over channels of |d logit / d x|, min-max scaled per image
  (the original project's map; Simonyan et al. 2014).
* ``smoothgrad``: the same map of the gradient averaged over ``n`` noisy copies, noise
  sigma = ``noise`` x (max - min) of the image (Smilkov et al. 2017).
* ``integrated_gradients``: |sum over channels of (x - b) * mean gradient| along the
  straight path from the baseline ``b`` (black in pixel space) to ``x``, midpoint Riemann
  sum (Sundararajan et al. 2017).
* ``gradcam``: relu(sum_k alpha_k A_k) on a 4-D feature map A, alpha_k the spatial mean
  of d logit / d A_k, bilinearly upsampled (Selvaraju et al. 2017).

The gradient methods share one compiled function with a fixed input signature that builds
the noisy or interpolated points of several images inside the graph and sums their
gradients, so SmoothGrad samples and IG steps run as big batches. SmoothGrad's noise is
drawn per image from that image's own seed (and the sample's number), so an image's map
does not depend on the batch it is explained in.

The cascading model randomisation of Adebayo et al. (2018) lives here too, behind
:meth:`Explainer.randomized`: :func:`block_groups` splits the network into groups, and each
group's random weights are drawn from ``(seed, group label)`` alone, so every shard of an
audit explains with the same randomised network. Weights change in place (the compiled
functions are reused without retracing) and are restored when the context ends.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from robustkit._tf import keras, tf
from robustkit.errors import ConfigError
from robustkit.metrics.saliency import minmax
from robustkit.model.adapter import ModelAdapter

__all__ = [
    "METHODS",
    "Explainer",
    "block_groups",
    "find_gradcam_layer",
    "flat_layers",
    "randomize_weights",
    "restore_weights",
    "snapshot_weights",
]

METHODS = ("vanilla_gradient", "smoothgrad", "integrated_gradients", "gradcam")
Path_ = tuple[str, ...]


# ----------------------------------------------------------------- the layer graph


def _is_container(layer: Any) -> bool:
    return isinstance(layer, keras.Model) and bool(getattr(layer, "_inbound_nodes", None))


def flat_layers(model: keras.Model) -> list[tuple[Path_, Any]]:
    """Every layer in topological order, nested functional models expanded in place.

    Returns:
        ``(path, layer)`` pairs; the path of a layer inside a nested model ``backbone``
        is ``("backbone", name)``.
    """
    out: list[tuple[Path_, Any]] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and hasattr(layer, "layers"):
            out.extend(((layer.name, *p), sub) for p, sub in flat_layers(layer))
        else:
            out.append(((layer.name,), layer))
    return out


def _rank4(layer: Any) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return False
    return len(shape) == 4


def find_gradcam_layer(model: keras.Model) -> str:
    """Name (``a/b`` when nested) of the Grad-CAM layer: the last layer with a 4-D output, or,
    when that map is 1 x 1, the last block output (a layer every path passes) with a map more
    than one pixel high or wide.

    For robustkit's InceptionV3 this is ``mixed10`` (a Concatenate), the last feature map
    before global pooling. Heads that pool and then apply 1 x 1 convolutions (MobileNetV3's
    ``Logits``), or small inputs that pool a network down to 1 x 1 (InceptionV3's ``mixed10``
    at 75 px), end in maps on which Grad-CAM is one uniform value; they are passed over.
    """
    candidates = [(p, layer) for p, layer in flat_layers(model)
                  if _rank4(layer) and not isinstance(layer, keras.layers.InputLayer)]
    if not candidates:
        raise ConfigError(f"{model.name}: expected a layer with a 4-D feature map for Grad-CAM, got none.")
    last, layer = candidates[-1]
    if _spatial(layer):
        return "/".join(last)
    cuts = [p for p, cut in _cut_layers(model, prefix=last[:-1])  # block outputs every path passes through
            if _rank4(cut) and _spatial(cut)
            and not isinstance(cut, (keras.layers.InputLayer, keras.Model, keras.layers.ZeroPadding2D))]
    spatial = [p for p, other in candidates if _spatial(other)]
    return "/".join(cuts[-1] if cuts else spatial[-1] if spatial else last)


def _spatial(layer: Any) -> bool:
    """Whether a 4-D output is more than one pixel high or wide."""
    return any(d is None or d > 1 for d in tuple(layer.output.shape)[1:3])


def _resolve(model: keras.Model, name: str) -> Path_:
    table = [p for p, _ in flat_layers(model)]
    wanted = tuple(name.split("/"))
    hits = [p for p in table if p == wanted or p[-1] == wanted[-1] and len(wanted) == 1]
    if not hits:
        raise ConfigError(
            f"The 'layer' parameter of study 'saliency' must name a layer of {model.name}; got {name!r}. "
            f"Layers with 4-D outputs include: {', '.join('/'.join(p) for p, layer in flat_layers(model) if _rank4(layer))[-400:]}."
        )
    return hits[0]


def _layer_at(model: keras.Model, path: Path_) -> Any:
    layer = model.get_layer(path[0])
    return layer if len(path) == 1 else _layer_at(layer, path[1:])


def _tap(adapter: ModelAdapter, paths: Sequence[Path_]) -> Callable[[Any], tuple[list[Any], Any]]:
    """A traceable function: model input -> ([feature maps at ``paths``], logits)."""
    model = adapter.model
    head_tensor, head_fn = adapter.head()
    inp = model.inputs[0]
    roots = {p[0] for p in paths}
    if all(len(p) == 1 for p in paths):
        trunk = keras.Model(inp, [*(model.get_layer(p[0]).output for p in paths), head_tensor])

        def flat(x: Any) -> tuple[list[Any], Any]:
            *feats, h = trunk(x, training=False)
            return list(feats), head_fn(h)

        return flat
    if len(roots) != 1 or any(len(p) != 2 for p in paths):
        raise ConfigError(f"expected layers of {model.name} at the top level or inside one nested model, got {paths}.")
    nested = model.get_layer(next(iter(roots)))
    node = nested._inbound_nodes[0]
    inner = keras.Model(nested.inputs[0], [*(nested.get_layer(p[1]).output for p in paths), nested.outputs[0]])
    pre = None if node.input_tensors[0] is inp else keras.Model(inp, node.input_tensors[0])
    post = keras.Model(node.output_tensors[0], head_tensor)

    def split(x: Any) -> tuple[list[Any], Any]:
        *feats, out = inner(x if pre is None else pre(x, training=False), training=False)
        return list(feats), head_fn(post(out, training=False))

    return split


# ----------------------------------------------------------------- the explainer


class Explainer:
    """Compiled attribution methods for one adapter.

    Args:
        adapter: the model in pixel space.
        layer: the Grad-CAM layer (``name`` or ``nested/name``); found automatically when empty.

    Attributes:
        grad_points: images whose input gradient was computed (every SmoothGrad sample and
            IG step counts); ``forward_points``: images passed forward only.
    """

    def __init__(self, adapter: ModelAdapter, *, layer: str = "") -> None:
        self.adapter = adapter
        self.layer = "/".join(_resolve(adapter.model, layer or find_gradcam_layer(adapter.model)))
        self.grad_points = 0
        self.forward_points = 0
        h, w, c = adapter.input_shape
        img = tf.TensorSpec((None, h, w, c), tf.float32)
        vec, ints = tf.TensorSpec((None,), tf.float32), tf.TensorSpec((None,), tf.int32)
        flag = tf.TensorSpec((), tf.bool)
        sig = [img, img, vec, vec, vec, ints, tf.TensorSpec((), tf.int32), ints, flag, flag]
        self._groups: dict[int | None, list[tuple[str, list[Any]]]] = {}
        self._baseline: dict[float, np.ndarray] = {}
        self._tapped = _tap(adapter, [tuple(self.layer.split("/"))])
        # one graph for every method: the model and its gradient are traced once per input shape
        self._passes = tf.function(self._passes_graph, input_signature=sig, autograph=False)

    # graphs ---------------------------------------------------------------------------
    def _passes_graph(self, x: Any, base: Any, alphas: Any, weights: Any, sigma: Any, seeds: Any, first: Any,
                      target: Any, noisy: Any, cam: Any):
        """Sum over s of weights[s] * grad at base + alphas[s] (x - base) (+ sigma * noise if ``noisy``),
        the logits at the points and, if ``cam``, the Grad-CAM map of the last point of each image.

        The noise of image i at point s is drawn from the stateless seed ``(seeds[i], first + s)``.
        Vanilla gradient, SmoothGrad, integrated gradients and Grad-CAM are this one graph with
        other inputs (the two flags are graph conditionals), so the model's forward and backward
        pass is traced once per explainer instead of once per method.
        """
        shape = tf.shape(x)
        s = tf.shape(alphas)[0]
        pts = base[None] + alphas[:, None, None, None, None] * (x - base)[None]
        pts = tf.reshape(pts, tf.concat([[s * shape[0]], shape[1:]], 0))

        def add_noise() -> Any:
            pair = tf.stack([tf.tile(seeds, [s]), tf.repeat(first + tf.range(s), shape[0])], axis=1)
            noise = tf.map_fn(lambda sd: tf.random.stateless_normal(shape[1:], sd), pair,
                              fn_output_signature=tf.float32)
            return pts + noise * tf.tile(sigma, [s])[:, None, None, None]

        pts = tf.cond(noisy, add_noise, lambda: pts)
        tgt = tf.tile(target, [s])
        with tf.GradientTape() as tape:
            tape.watch(pts)
            feats, z = self._tapped(self.adapter.scale_input(pts))
            z = tf.cast(z, tf.float32)
            picked = tf.gather(z, tgt, axis=1, batch_dims=1)
        g, g_feat = tape.gradient(picked, [pts, feats[0]])
        g = tf.reshape(g, tf.concat([[s], shape], 0))
        h, w, _ = self.adapter.input_shape

        def cam_map() -> Any:
            fmap = tf.cast(feats[0][-shape[0]:], tf.float32)
            alpha = tf.reduce_mean(tf.cast(g_feat[-shape[0]:], tf.float32), axis=[1, 2], keepdims=True)
            heat = tf.nn.relu(tf.reduce_sum(alpha * fmap, axis=-1, keepdims=True))
            return tf.image.resize(heat, (h, w), method="bilinear")[..., 0]

        maps = tf.cond(cam, cam_map, lambda: tf.zeros([0, h, w], tf.float32))
        return tf.tensordot(weights, g, axes=1), tf.reshape(z, [s, shape[0], -1]), maps

    # numpy API ------------------------------------------------------------------------
    def gradient_sum(
        self, x: np.ndarray, target: np.ndarray, *, alphas: np.ndarray, weights: np.ndarray,
        base: np.ndarray | None = None, sigma: np.ndarray | None = None, seed: int | np.ndarray = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weighted sum of input gradients at ``S`` points per image, in batches of the adapter's size.

        Args:
            seed: the noise seed of every image, or one per image ``(N,)`` (ints in [0, 2**31)):
                image i's noise depends on its seed only, never on its batch.

        Returns:
            ``(N, H, W, C)`` gradient sums and the logits ``(S, N, K)`` at the points.
        """
        x = np.asarray(x, np.float32)
        base = np.zeros_like(x) if base is None else np.broadcast_to(base, x.shape).astype(np.float32)
        noisy = sigma is not None
        sigma = np.zeros(len(x), np.float32) if sigma is None else np.asarray(sigma, np.float32)
        seeds = np.broadcast_to(np.asarray(seed, np.int64) % (2**31 - 1), (len(x),)).astype(np.int32)
        t = np.asarray(target, np.int32)
        s_all, bs = len(alphas), self.adapter.batch_size
        per_img = max(1, bs // s_all)
        step = min(s_all, bs)
        out = np.zeros_like(x)
        logits = np.zeros((s_all, len(x), self.adapter.num_classes), np.float32)
        for i in range(0, len(x), per_img):
            sl = slice(i, min(len(x), i + per_img))
            for j in range(0, s_all, step):
                k = slice(j, min(s_all, j + step))
                g, z, _ = self._passes(x[sl], base[sl], np.asarray(alphas[k], np.float32),
                                       np.asarray(weights[k], np.float32), sigma[sl], seeds[sl], np.int32(j), t[sl],
                                       noisy, False)
                out[sl] += g.numpy()
                logits[k, sl] = z.numpy()
                self.grad_points += (sl.stop - sl.start) * (k.stop - k.start)
        return out, logits

    def vanilla_gradient(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Maps ``(N, H, W)`` and the logits ``(N, K)`` of the images."""
        g, z = self.gradient_sum(x, target, alphas=np.ones(1), weights=np.ones(1), base=x)
        return _minmax(np.abs(g).max(axis=-1)), z[0]

    def smoothgrad(self, x: np.ndarray, target: np.ndarray, *, n: int = 25, noise: float = 0.15,
                   seed: int | np.ndarray = 0) -> np.ndarray:
        """Maps ``(N, H, W)``; ``seed``: one for every image or one per image (see :meth:`gradient_sum`)."""
        sigma = noise * (x.reshape(len(x), -1).max(axis=1) - x.reshape(len(x), -1).min(axis=1))
        g, _ = self.gradient_sum(x, target, alphas=np.ones(n), weights=np.full(n, 1.0 / n), base=x,
                                 sigma=sigma, seed=seed)
        return _minmax(np.abs(g).max(axis=-1))

    def integrated_gradients(self, x: np.ndarray, target: np.ndarray, *, steps: int = 64,
                             baseline: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Maps ``(N, H, W)`` and the attributions ``(N, H, W, C)`` (their sum ~ logit(x) - logit(b))."""
        alphas = (np.arange(steps) + 0.5) / steps
        base = np.full_like(x, baseline)
        g, _ = self.gradient_sum(x, target, alphas=alphas, weights=np.full(steps, 1.0 / steps), base=base)
        attr = (x - base) * g
        return np.abs(attr.sum(axis=-1)), attr

    def gradcam(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Grad-CAM maps ``(N, H, W)`` (relu, upsampled; not rescaled)."""
        out, one = [], np.ones(1, np.float32)
        x = np.asarray(x, np.float32)
        for i in range(0, len(x), self.adapter.batch_size):
            sl = slice(i, i + self.adapter.batch_size)
            n = len(x[sl])
            _, _, maps = self._passes(x[sl], x[sl], one, one, np.zeros(n, np.float32), np.zeros(n, np.int32),
                                      np.int32(0), np.asarray(target[sl], np.int32), False, True)
            out.append(maps.numpy())
            self.grad_points += n
        return np.concatenate(out) if out else np.zeros((0, *self.adapter.input_shape[:2]), np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.forward_points += len(x)
        return self.adapter.logits(x)

    def explain(self, method: str, x: np.ndarray, target: np.ndarray, *, smoothgrad_n: int = 25,
                smoothgrad_noise: float = 0.15, ig_steps: int = 64, seed: int | np.ndarray = 0) -> np.ndarray:
        """The non-negative map ``(N, H, W)`` of ``method`` (one of :data:`METHODS`)."""
        if method == "vanilla_gradient":
            return self.vanilla_gradient(x, target)[0]
        if method == "smoothgrad":
            return self.smoothgrad(x, target, n=smoothgrad_n, noise=smoothgrad_noise, seed=seed)
        if method == "integrated_gradients":
            return self.integrated_gradients(x, target, steps=ig_steps)[0]
        if method == "gradcam":
            return self.gradcam(x, target)
        raise ConfigError(f"expected a saliency method from {', '.join(METHODS)}, got {method!r}.")

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> list[np.ndarray]:
        """Feature maps ``(N, h, w, channels)`` of ``layers`` for a few images (eager)."""
        a = self.adapter
        tap = _tap(a, [_resolve(a.model, name) for name in layers])
        feats, _ = tap(a.scale_input(tf.constant(np.asarray(x, np.float32))))
        self.forward_points += len(x)
        return [np.asarray(f, np.float32) for f in feats]

    def panel_layers(self, n: int) -> list[str]:
        """``n`` layers from the stem to the Grad-CAM layer, for an activation panel."""
        return activation_layers(self.adapter.model, n, self.layer)

    def baseline_logits(self, value: float = 0.0) -> np.ndarray:
        """Logits ``(K,)`` of the constant image ``value`` (computed once per explainer)."""
        if value not in self._baseline:
            self._baseline[value] = self.logits(np.full((1, *self.adapter.input_shape), value, np.float32))[0]
        return self._baseline[value]

    # randomisation --------------------------------------------------------------------
    def randomization_groups(self, steps: int | None) -> list[str]:
        """Labels of the cascade's groups, top (logits) first (see :func:`block_groups`)."""
        return [label for label, _ in self._block_groups(steps)]

    def _block_groups(self, steps: int | None) -> list[tuple[str, list[Any]]]:
        if steps not in self._groups:
            self._groups[steps] = block_groups(self.adapter.model, steps)
        return self._groups[steps]

    @contextmanager
    def randomized(self, *, seed: int, steps: int | None, cascade: bool = True) -> Iterator[Iterator[str]]:
        """Model randomisation (Adebayo et al. 2018), restored on exit.

        Yields an iterator over the group labels, top first; while it stands at a group the
        model's weights are that step's: every group so far randomised (``cascade``), or that
        group alone. Group ``g``'s weights are drawn from ``(seed, g's label)`` only, so every
        process and every shard sees the same randomised network.

        Example:
            >>> with ex.randomized(seed=1, steps=3) as steps:  # doctest: +SKIP
            ...     for label in steps:
            ...         maps = ex.explain("gradcam", x, target)
        """
        model = self.adapter.model
        snap = snapshot_weights(model)
        groups = self._block_groups(steps)

        def walk() -> Iterator[str]:
            for label, layers in groups:
                if not cascade:
                    restore_weights(model, snap)
                randomize_weights(layers, _group_rng(seed, label))
                yield label

        try:
            yield walk()
        finally:
            restore_weights(model, snap)

    @classmethod
    def cached(cls, adapter: ModelAdapter, *, layer: str = "") -> Explainer:
        """The explainer of ``adapter`` and ``layer``, built (and compiled) once per adapter.

        Kept on the adapter itself (not in a module-level table, whose entries would keep
        every adapter and its model alive), so it goes when the adapter goes.
        """
        per_adapter: dict[str, Explainer] = vars(adapter).setdefault("_explainers", {})
        if layer not in per_adapter:
            per_adapter[layer] = cls(adapter, layer=layer)
        return per_adapter[layer]


def _group_rng(seed: int, label: str) -> np.random.Generator:
    """The generator of one randomisation group: a function of the seed and the group's label."""
    digest = hashlib.sha256(label.encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def _minmax(maps: np.ndarray) -> np.ndarray:
    """:func:`robustkit.metrics.saliency.minmax` (the one home of min-max scaling), float32."""
    return minmax(maps).astype(np.float32)


def activation_layers(model: keras.Model, n: int, gradcam_layer: str) -> list[str]:
    """``n`` block outputs spread from the stem to the Grad-CAM layer (4-D cut points)."""
    last = tuple(gradcam_layer.split("/"))
    groups = _cut_layers(model, prefix=last[:-1])
    weighted = [i for i, (_, layer) in enumerate(groups) if layer.weights]
    groups = groups[weighted[0]:] if weighted else groups
    names = [p for p, layer in groups  # nested blocks (ConvNeXt's Sequential stem) are not tapped whole
             if _rank4(layer) and not isinstance(layer, (keras.layers.InputLayer, keras.Model))]
    names = names[: names.index(last) + 1] if last in names else names
    if not names:
        return []
    picks = np.unique(np.linspace(0, len(names) - 1, min(n, len(names))).round().astype(int))
    return ["/".join(names[i]) for i in picks]


# ----------------------------------------------------------------- randomisation


def _cut_layers(model: keras.Model, prefix: Path_ = ()) -> list[tuple[Path_, Any]]:
    """Layers every path through ``model`` passes (no edge jumps over them), in order."""
    container = _layer_at(model, prefix) if prefix else model
    layers = list(container.layers)
    index = {id(layer): i for i, layer in enumerate(layers)}
    span = np.zeros(len(layers) + 1, dtype=int)
    for i, layer in enumerate(layers):
        for node in getattr(layer, "_inbound_nodes", []):
            for t in node.input_tensors:
                j = index.get(id(t._keras_history.operation))
                if j is not None and j < i - 1:
                    span[j + 1] += 1
                    span[i] -= 1
    cuts = np.cumsum(span[:-1]) == 0
    return [((*prefix, layer.name), layer) for layer, cut in zip(layers, cuts) if cut]


def _segments(container: keras.Model) -> list[tuple[str, list[Any]]]:
    """Weighted layers of ``container`` in blocks ending at cut points, bottom up, with labels."""
    cut_ids = {id(layer) for _, layer in _cut_layers(container)}
    blocks: list[tuple[str, list[Any]]] = []
    open_block: list[Any] = []
    for layer in container.layers:
        if _is_container(layer) and hasattr(layer, "layers"):
            blocks.extend(_segments(layer))
            continue
        if layer.weights:
            open_block.append(layer)
        if id(layer) in cut_ids and open_block:
            blocks.append((layer.name, open_block))
            open_block = []
    if open_block:
        blocks.append((open_block[-1].name, open_block))
    merged: list[tuple[str, list[Any]]] = []
    for label, block in blocks:
        if merged and all(isinstance(b, keras.layers.BatchNormalization) for b in block):
            merged[-1][1].extend(block)
        else:
            merged.append((label, block))
    return merged


def block_groups(model: keras.Model, steps: int | None = None) -> list[tuple[str, list[Any]]]:
    """Blocks of weighted layers, top (logits) first, merged into at most ``steps`` groups.

    A block ends at a layer that every path through the network passes (for InceptionV3
    the ``mixed`` concatenations; for a plain CNN every layer), nested models expanded;
    batch normalisation joins the layer before it.

    Returns:
        ``(label, layers)`` pairs, the label naming the group's top and bottom blocks.
    """
    blocks = _segments(model)[::-1]
    if steps is None or steps >= len(blocks):
        return blocks
    parts = np.array_split(np.arange(len(blocks)), steps)
    return [(_label([blocks[i][0] for i in part]), [layer for i in part for layer in blocks[i][1]])
            for part in parts]


def _label(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


def snapshot_weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.weights]


def restore_weights(model: keras.Model, values: list[np.ndarray]) -> None:
    for v, value in zip(model.weights, values):
        v.assign(value)


def _reinit(name: str, shape: tuple[int, ...], rng: np.random.Generator, like: np.ndarray) -> np.ndarray:
    base = name.split("/")[-1]
    if base in ("bias", "beta", "moving_mean"):
        return np.zeros(shape, np.float32)
    if base in ("gamma", "moving_variance"):
        return np.ones(shape, np.float32)
    if len(shape) >= 2 and "kernel" in base:
        rf = math.prod(shape[:-2])
        fan_in, fan_out = rf * shape[-2], rf * shape[-1]
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape).astype(np.float32)
    return (rng.standard_normal(shape) * (like.std() or 1.0)).astype(np.float32)


def randomize_weights(layers: Sequence[Any], rng: np.random.Generator) -> None:
    """Re-initialise every weight of ``layers`` in place (Glorot-uniform kernels, zero biases,
    identity batch normalisation), as in Adebayo et al. (2018)."""
    for layer in layers:
        for v in layer.weights:
            v.assign(_reinit(v.name, tuple(v.shape), rng, np.asarray(v.numpy())))
