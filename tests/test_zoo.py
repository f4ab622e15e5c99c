"""The keras.applications zoo: six families as a user brings them (weights=None, small inputs).

Each loads with its family's preset, gives the probabilities of ``model.predict`` on images
preprocessed by keras.applications' own ``preprocess_input``, and audits with the clean,
saliency studies with Grad-CAM's layer found without ``--layer`` (and the adversarial study for
the two families in :data:`ATTACKED`: tracing an attack loop through a deep graph costs up to
20 s a model, and the path through the preprocessing, a channel reorder and the model's own
preprocessing layers is the same for every family). MobileNetV3,
EfficientNet and ConvNeXt carry their own preprocessing layers (Keras 3), so their preset is
``255``; ResNet50 runs at a non-square size (one-channel models: every toy model of the suite).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robustkit._tf import keras

# family -> (factory, its preprocess_input module, our preset, input (H, W, C))
ZOO = {
    "DenseNet121": ("DenseNet121", "densenet", "torch", (32, 32, 3)),
    "ResNet50": ("ResNet50", "resnet", "caffe", (32, 48, 3)),
    "EfficientNetB0": ("EfficientNetB0", "efficientnet", "255", (32, 32, 3)),
    "MobileNetV3Small": ("MobileNetV3Small", "mobilenet_v3", "255", (32, 32, 3)),
    "ConvNeXtTiny": ("ConvNeXtTiny", "convnext", "255", (64, 64, 3)),
    "InceptionV3": ("InceptionV3", "inception_v3", "tf", (75, 75, 3)),
}
# the attacked families: ResNet50 (caffe: reorder to BGR, mean; non-square) and MobileNetV3Small
# (preprocessing layers of its own inside the graph)
ATTACKED = ("ResNet50", "MobileNetV3Small")
# the leanest settings that still run every part of the three studies
LEAN = {"clean": {"n_bootstrap": 20},
        "adversarial": {"max_samples": 3, "steps": 2, "epsilons_linf": [0.01], "check_samples": 3, "fgsm": False,
                        "n_bootstrap": 20},
        "saliency": {"methods": ["gradcam"], "max_samples": 3, "stability_samples": 3, "randomization_samples": 1,
                     "randomization_steps": 1, "deletion_steps": 2, "n_gallery": 1, "n_activation_layers": 1,
                     "n_channels": 1}}


@pytest.fixture(scope="module")
def zoo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("zoo") / "data", per_class=3)


def _build(name: str, tmp: Path) -> tuple[Path, keras.Model]:
    factory, _, _, shape = ZOO[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, factory)(weights=None, input_shape=shape, classes=3)
    path = tmp / f"{name}.keras"
    model.save(path)
    return path, model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_loads_predicts_like_keras_and_audits(name: str, zoo_data: Path, tmp_path: Path) -> None:
    import importlib

    from robustkit import audit
    from robustkit.model.adapter import load_model
    from robustkit.model.explainers import find_gradcam_layer

    _, module, preset, (h, w, c) = ZOO[name]
    path, model = _build(name, tmp_path)
    adapter = load_model(path, preprocess=preset)
    x = np.random.default_rng(0).random((2, h, w, c), dtype=np.float32)
    own = importlib.import_module(f"keras.applications.{module}").preprocess_input(x * 255.0)
    np.testing.assert_allclose(adapter.probs(x), model.predict(own, verbose=0), rtol=1e-4, atol=1e-5)

    layer = find_gradcam_layer(model)
    studies = ["clean", "adversarial", "saliency"] if name in ATTACKED else ["clean", "saliency"]
    result = audit(path, zoo_data, studies=studies, profile="quick", config=LEAN, preprocess=preset, input_probe=False)
    assert {s: r.status for s, r in result.studies.items()} == dict.fromkeys(studies, "ok")
    assert result.studies["saliency"].data["parameters"]["gradcam_layer"] == layer
    assert result.model["preprocess"]["preset"] == preset and result.model["input_shape"] == [h, w, c]
    spatial = tuple(model.get_layer(layer.split("/")[-1]).output.shape[1:3]) if "/" not in layer else (2, 2)
    assert max(spatial) > 1  # a feature map, not a 1 x 1 head convolution
