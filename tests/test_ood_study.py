"""The OOD study end to end: the adapter's features, the CLI, exports, report, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.metrics import roc_auc_score

from robustkit.cli import main
from robustkit.data.loader import load_dataset
from robustkit.data.ood_sets import build_sets
from robustkit.data.phantom import render_effusion
from robustkit.errors import ModelError
from robustkit.gate import gate
from robustkit.model.adapter import load_model
from robustkit.results import load_results

SMALL = ["--set", "ood.sets=['ct','mr','synthetic','effusion','inverted']", "--set", "ood.n_per_set=5",
         "--set", "ood.n_bootstrap=20", "--set", "ood.n_gallery=3"]


@pytest.fixture(scope="module")
def model(toy_model: Path):
    return load_model(toy_model, batch_size=16)


def test_logits_and_features_come_from_one_pass_and_rebuild_the_logits(model) -> None:
    x = np.random.default_rng(0).uniform(0, 1, (5, *model.input_shape)).astype(np.float32)
    calls = model.calls
    z, f = model.logits_and_features(x)
    assert model.calls == calls + 1  # one compiled call for 5 images
    np.testing.assert_allclose(z, model.logits(x), rtol=1e-5, atol=1e-5)
    tap = model.feature_tap()
    assert f.shape == (5, 512) and tap.kernel.shape == (512, 3)
    np.testing.assert_allclose(f @ tap.kernel + tap.bias, z, rtol=1e-4, atol=1e-4)  # features feed the head


def test_a_bad_features_layer_is_one_line(model) -> None:
    with pytest.raises(ModelError, match=r"^--features-layer: expected a layer of .* got 'nope'\.$"):
        model.feature_tap("nope")
    with pytest.raises(ModelError, match=r"vector per image \(N, D\), got 'conv2' with output shape"):
        model.feature_tap("conv2")
    z, f = model.logits_and_features(np.zeros((2, *model.input_shape), np.float32), layer="flatten")
    assert f.shape == (2, 512) and model.feature_tap("flatten").kernel is not None  # the head's input, named


def test_sets_are_deterministic_and_the_effusion_is_inside_a_lung() -> None:
    a = build_sets(["ct", "synthetic"], n_per_set=6, size=32, seed=1)
    b = build_sets(["ct", "synthetic"], n_per_set=6, size=32, seed=1)
    c = build_sets(["ct"], n_per_set=6, size=32, seed=2)
    assert len(a["ct"][0]) == 6 and "CT_small.dcm" in a["ct"][1]
    for x, y in zip(a["ct"][0], b["ct"][0]):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a["ct"][0], c["ct"][0]))
    case = render_effusion(size=128, rng=np.random.default_rng(0), fraction=0.3)
    assert case.mask.any() and not (case.mask & ~case.lungs).any()
    assert case.image[case.mask].mean() > case.image[case.lungs & ~case.mask].mean()  # fluid is denser than air


@pytest.mark.slow
def test_audit_writes_ood_exports_report_and_gateable_metrics(capsys, model, toy_model, toy_data, tmp_path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    mine = sorted(toy_data.rglob("*.png"))[0]  # an ID image passed as a one-image "OOD" set
    shutil.copy(mine, user / "a.png")
    out = tmp_path / "audit"
    code = main(["audit", "--model", str(toy_model), "--data", str(toy_data), "--out", str(out), "--studies",
                 "ood", "--profile", "quick", "--quiet", "--ood", f"mine={user}", "--critical-class", "COVID-19",
                 *SMALL])
    capsys.readouterr()
    assert code == 0
    audit = load_results(out)
    res = audit.studies["ood"]
    rec = res.data["recommended"]
    export = json.loads((out / "ood.json").read_text())
    assert export["score"] == rec and export["statistics"] == "ood_statistics.npz"
    stats = np.load(out / "ood_statistics.npz")
    assert set(stats.files) == set(res.data["statistics_arrays"]) and "ood_statistics" not in res.data
    # the threshold keeps ceil(95%) of the ID test scores (audit samples outside the reference split)
    id_scores = res.records[f"score_{rec}"][~res.records["reference"]].astype(np.float64)
    assert export["threshold"] == pytest.approx(np.sort(id_scores)[::-1][int(np.ceil(0.95 * len(id_scores))) - 1])
    # the ID side and the user's set against the model's own logits
    data = load_dataset(toy_data).with_class_order(model.class_names)
    assert [str(i) for i in audit.ids] == [str(i) for i in data.ids]
    h, w, c = model.input_shape
    test = res.records["index"][~res.records["reference"]]
    z_id = model.logits(data.load_images(test, size=(h, w), channels=c)).astype(np.float64)
    at = [str(s.path) for s in data.samples].index(str(mine))
    z_mine = model.logits(data.load_images(np.array([at]), size=(h, w), channels=c)).astype(np.float64)
    covid = list(model.class_names).index("COVID-19")
    p_id, p_mine = softmax(z_id, axis=1), softmax(z_mine, axis=1)
    assert res.metrics["confident_critical_rate.id"] == pytest.approx(np.mean(p_id[:, covid] >= 0.5))
    assert res.metrics["confident_critical_rate.mine"] == float(p_mine[0, covid] >= 0.5)
    energy_id, energy_mine = logsumexp(z_id, axis=1), logsumexp(z_mine, axis=1)
    np.testing.assert_allclose(res.records["score_energy"][~res.records["reference"]], energy_id, rtol=1e-4)
    # "mine" is one of the ID images: rounding restores the exact tie that batch float noise breaks
    energy_id, energy_mine = np.round(energy_id, 4), np.round(energy_mine, 4)
    auroc_mine = roc_auc_score(np.r_[np.ones(len(z_id)), 0], np.r_[energy_id, energy_mine])
    assert res.metrics["auroc.energy.mine"] == pytest.approx(auroc_mine, abs=1e-6)
    assert res.metrics["fpr95.energy.mine"] == float(energy_mine[0] >= np.sort(energy_id)[::-1][
        int(np.ceil(0.95 * len(energy_id))) - 1])
    for key in ("auroc.mahalanobis.far", "auroc.knn.mine"):
        assert key in res.metrics
    assert res.direction("auroc.energy.ct") == "higher" and res.direction("fpr95.knn.far") == "lower"
    assert res.direction("confident_critical_rate.ct") == "lower" and res.direction("confident_critical_rate.id") == "none"
    html = (out / "report.html").read_text()
    assert "The recommended filter" in html and "mine" in html and "<svg" in html
    passing = {"judge": "point", "rule": [{"metric": "ood.auroc.energy.mine", "min": auroc_mine - 1e-6},
                        {"metric": "ood.confident_critical_rate.id", "max": np.mean(p_id[:, covid] >= 0.5) + 1e-9}]}
    failing = {"judge": "point", "rule": [{"metric": "ood.auroc.energy.mine", "min": auroc_mine + 1e-3}]}
    assert gate(out, passing).exit_code == 0 and gate(out, failing).exit_code == 1


def test_bad_ood_folder_and_reference_without_a_class_are_one_line(capsys, toy_model, toy_data, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["audit", "--model", str(toy_model), "--data", str(toy_data), "--out", str(tmp_path / "o"),
            "--studies", "ood", "--quiet", *SMALL]
    assert main([*base, "--ood", f"blank={empty}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"robustkit: error: --ood blank={empty}: expected a folder with images "
                   "(.png, .jpg, .jpeg, .bmp, .tif, .tiff, .dcm, .dicom), got none."]
    ref = tmp_path / "ref"
    for cls in ("COVID-19", "NORMAL"):
        shutil.copytree(toy_data / cls, ref / cls)
    assert main([*base, "--reference-data", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "robustkit: error:" in err and "Viral Pneumonia" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_ray_engine_gives_the_in_process_result(toy_model, toy_data) -> None:
    ray = pytest.importorskip("ray", reason='the Ray engine needs pip install "robustkit[ray]"')
    from robustkit.runner import audit

    config = {"ood": {"sets": ["ct", "synthetic", "inverted"], "n_per_set": 4, "n_bootstrap": 20, "n_gallery": 0}}
    local = audit(toy_model, toy_data, studies=["ood"], profile="quick", config=config, seed=2, report=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = audit(toy_model, toy_data, studies=["ood"], profile="quick", config=config, seed=2, report=False,
                       engine="ray", workers=1, batch_size=8)
    finally:
        ray.shutdown()
    a, b = local.studies["ood"], remote.studies["ood"]
    assert b.status == "ok" and set(a.metrics) == set(b.metrics)
    for key, value in a.metrics.items():
        assert b.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-5, nan_ok=True), key
