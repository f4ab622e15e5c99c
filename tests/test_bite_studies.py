"""Tests that bite (issue #13), studies: check statuses asserted on the healthy toy model
and on a planted defect, randomisation similarities below their threshold, and a targeted
adversarial study end to end."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from robustkit.data.loader import load_dataset
from robustkit.model.adapter import ModelAdapter, load_model
from robustkit.studies import AuditContext, get_study
from robustkit.studies.adversarial import AdversarialStudy

_SALIENCY = {"methods": ["vanilla_gradient", "gradcam"], "max_samples": 9, "stability_samples": 3, "n_noise": 1,
             "randomization_samples": 3, "deletion_steps": 4, "n_gallery": 0}


def _saliency(model: ModelAdapter, data_root: Path):
    study = get_study("saliency").configure("quick", _SALIENCY)
    return study.execute(model, load_dataset(data_root), AuditContext(seed=4))


def _statuses(result) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


@pytest.fixture(scope="module")
def adapter(toy_model: Path) -> ModelAdapter:
    return load_model(toy_model)


def test_saliency_checks_pass_on_the_healthy_toy_model(adapter: ModelAdapter, toy_data: Path) -> None:
    result = _saliency(adapter, toy_data)
    status = _statuses(result)
    threshold = result.config["randomization_threshold"]
    for method in _SALIENCY["methods"]:
        assert status[f"randomisation sanity: {method}"] == "pass", result.checks
        assert result.metrics[f"randomization.ssim.{method}"] < threshold
    assert all(s != "fail" for s in status.values()), status


def test_saliency_randomisation_check_fails_when_the_model_is_not_randomised(
        adapter: ModelAdapter, toy_data: Path, monkeypatch) -> None:
    """A planted defect: the explainer's randomisation leaves the weights alone."""
    from robustkit.model.explainers import Explainer

    def untouched(self, *, seed, steps, cascade):  # noqa: ARG001
        return contextlib.nullcontext(self.randomization_groups(steps))

    monkeypatch.setattr(Explainer, "randomized", untouched)
    result = _saliency(adapter, toy_data)
    for method in _SALIENCY["methods"]:
        assert _statuses(result)[f"randomisation sanity: {method}"] == "fail"
        assert result.metrics[f"randomization.ssim.{method}"] == pytest.approx(1.0, abs=1e-4)


_ADV = {"epsilons_linf": [8 / 255, 16 / 255], "epsilons_l2": [1.0], "steps": 10, "max_samples": 18,
        "n_bootstrap": 20, "check_samples": 6, "foolbox_attacks": []}
_HEALTHY_PASSES = ("gradients finite and non-zero", "deterministic predictions", "near zero at a large epsilon",
                   "black-box never beats white-box")


def test_adversarial_checks_pass_on_the_healthy_toy_model(adapter: ModelAdapter, toy_data: Path) -> None:
    study = AdversarialStudy.configure("quick", _ADV)
    status = _statuses(study.execute(adapter, load_dataset(toy_data), AuditContext(seed=0)))
    for name in _HEALTHY_PASSES:
        if name in status:
            assert status[name] == "pass", (name, status)
    assert status["gradients finite and non-zero"] == "pass"
    assert "fail" not in status.values(), status


def test_adversarial_checks_flag_a_rounding_input(toy_data: Path) -> None:
    """A planted defect: the input is rounded to quarters, so every input gradient is zero."""
    from robustkit._tf import keras
    from tests.conftest import build_toy_model

    trunk = build_toy_model()
    inp = keras.Input((32, 32, 1))
    model = keras.Model(inp, trunk(keras.layers.Lambda(lambda t: keras.ops.round(t * 4) / 4)(inp)))
    adapter = ModelAdapter(model, class_names=["COVID-19", "NORMAL", "Viral Pneumonia"])
    study = AdversarialStudy.configure("quick", {**_ADV, "max_samples": 9})
    status = _statuses(study.execute(adapter, load_dataset(toy_data), AuditContext(seed=0)))
    assert status["gradients finite and non-zero"] == "warn", status  # all-zero gradients: masking (finite)
    assert status["near zero at a large epsilon"] == "fail", status  # and the attack cannot break the images


def test_targeted_adversarial_study_end_to_end(adapter: ModelAdapter, toy_data: Path) -> None:
    data = load_dataset(toy_data)
    cfg = {**_ADV, "norms": ["linf"], "epsilons_linf": [64 / 255], "targeted": True, "target_class": "Viral Pneumonia"}
    result = AdversarialStudy.configure("quick", cfg).execute(adapter, data, AuditContext(seed=0))
    assert result.status == "ok", result.error
    normal = list(data.class_names).index("Viral Pneumonia")  # the target
    rec = result.records
    labels = np.asarray(data.labels)[rec["index"]]
    others = labels != normal
    assert others.sum() >= 6
    adv = rec["adv_pred_linf"][:, -1]
    assert np.mean(adv[others] == normal) > 0.5, adv[others]  # a large budget: pushed into the target
    untargeted = AdversarialStudy.configure("quick", {**cfg, "targeted": False, "target_class": None})
    plain = untargeted.execute(adapter, data, AuditContext(seed=0)).records["adv_pred_linf"][:, -1]
    assert np.mean(adv[others] == normal) > np.mean(plain[others] == normal)
