"""The saliency study on a multi-label model: a map per finding present, localised against
that finding's own mask (checked against a direct computation with the explainer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robustkit.data.loader import load_dataset
from robustkit.metrics import saliency as SM
from robustkit.results import load_results

FINDINGS = ("Consolidation", "Nodule", "Opacity")
OVERRIDES = {"methods": ["vanilla_gradient", "gradcam"], "max_samples": 24, "stability_samples": 2,
             "randomization_samples": 2, "randomization_steps": 1, "deletion_steps": 4, "n_gallery": 1,
             "n_activation_layers": 1, "n_channels": 1}


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory: pytest.TempPathFactory, toy_multilabel: Path, toy_multilabel_model: Path):
    from robustkit.runner import audit

    out = tmp_path_factory.mktemp("mlsal")
    result = audit(toy_multilabel_model, toy_multilabel, studies=["saliency"], profile="quick", out=out, seed=0,
                   quiet=True, config={"saliency": OVERRIDES})
    return result, out


def test_per_finding_metrics_and_table(ml_run) -> None:
    result, _ = ml_run
    sal = result.studies["saliency"]
    assert sal.status == "ok", sal.error
    for meth in ("vanilla_gradient", "gradcam", "random"):
        for key in ("pointing_game", "mass", "rank_accuracy"):
            # the toy CNN's Grad-CAM maps are flat (a Flatten head): their relevance mass is NaN
            assert meth == "gradcam" or np.isfinite(sal.metrics[f"localization.{key}.{meth}"])
            for f in FINDINGS:
                assert f"localization.{key}.{meth}.{f}" in sal.metrics
    rows = sal.tables["localization per output"]
    assert {(r["output"], r["method"]) for r in rows} >= {(f, "gradcam") for f in FINDINGS}
    assert "top-scoring finding" in sal.data["parameters"]["explained_class"]
    # an image with two findings is shown with the maps of both
    items = [it for g in sal.data["gallery"] for it in g["items"]]
    two = [it for it in items if " | " in it["label"]]
    assert two and all(len({m["output"] for m in it["maps"]}) == it["label"].count("|") + 1 for it in two)


def test_localisation_matches_a_direct_computation(ml_run, toy_multilabel: Path, toy_multilabel_model: Path) -> None:
    """The study's per-finding relevance mass equals the explainer's map of that finding's output
    scored against its mask; and Nodule's map lies more inside Nodule's mask than inside Opacity's."""
    from robustkit.model.adapter import load_model
    from robustkit.model.explainers import Explainer

    result, out = ml_run
    rec = np.load(out / "records.npz")
    index = rec["saliency/index"]
    mass = rec["saliency/localization_mass"]  # (n, K, M + 1)
    data = load_dataset(toy_multilabel)
    pos = {sid: i for i, sid in enumerate(data.ids)}
    rows = np.array([pos[str(result.ids[i])] for i in index])
    model = load_model(toy_multilabel_model)
    ex = Explainer(model)
    x = data.load_images(rows, size=(32, 32), channels=1)
    targets = data.targets[rows]
    k_nod, k_opa = FINDINGS.index("Nodule"), FINDINGS.index("Opacity")
    for k, name in enumerate(FINDINGS):
        have = np.flatnonzero(targets[:, k])
        maps = SM.minmax(ex.vanilla_gradient(x[have], np.full(len(have), k, np.int32))[0])
        masks = data.load_masks(rows[have], size=(32, 32), finding=name)
        np.testing.assert_allclose(mass[have, k, 0], SM.relevance_mass(maps, masks), rtol=1e-4, atol=1e-5)
        assert np.all(np.isnan(mass[~targets[:, k], k, 0]))
    both = np.flatnonzero(targets[:, k_nod] & targets[:, k_opa])
    assert len(both) >= 2
    maps = SM.minmax(ex.vanilla_gradient(x[both], np.full(len(both), k_nod, np.int32))[0])
    inside_nodule = SM.relevance_mass(maps, data.load_masks(rows[both], size=(32, 32), finding="Nodule"))
    inside_opacity = SM.relevance_mass(maps, data.load_masks(rows[both], size=(32, 32), finding="Opacity"))
    area = [m.mean() for m in (data.load_masks(rows[both[:1]], size=(32, 32), finding=f)[0] for f in ("Nodule", "Opacity"))]
    # per unit of mask area: Nodule's map concentrates on Nodule's mask
    assert inside_nodule.mean() / area[0] > inside_opacity.mean() / area[1]
    assert load_results(out).studies["saliency"].records["output_thumbs"].shape[:3] == (len(index), 3, 2)
