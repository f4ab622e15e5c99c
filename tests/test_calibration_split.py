"""The calibration study's temperature is fitted on the calibration half (softmax path):
the split reproduced from its definition, the temperature by scipy's own search of the NLL.

The split (:mod:`robustkit.studies.calibration`): each class ordered by a uniform draw keyed
by (seed, "calibration", "split", sample id), its first ``round(fraction * size)`` (half up,
at least one on each side) in the calibration half.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from robustkit.data.dataset import Sample
from robustkit.data.ood_sets import ArrayDataset
from robustkit.studies.base import AuditContext
from robustkit.studies.calibration import CalibrationStudy
from tests.conftest import CLASSES, SIZE, _pattern

SEED = 3


def _calibration_half(ids: np.ndarray, y: np.ndarray, seed: int, fraction: float = 0.5) -> np.ndarray:
    """Bool ``(N,)``: the calibration half, from the split's definition."""
    ctx = AuditContext(seed=seed)
    keys = np.array([ctx.rng("calibration", "split", str(i)).random() for i in ids])
    cal = np.zeros(len(y), dtype=bool)
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        members = members[np.argsort(keys[members], kind="stable")]
        n = min(max(int(np.floor(fraction * len(members) + 0.5)), 1), len(members) - 1)
        cal[members[:n]] = True
    return cal


def _fitted_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """argmin over T of the mean NLL of softmax(logits / T) (bounded Brent over log T)."""
    def nll(s: float) -> float:
        return float(-log_softmax(logits / np.exp(s), axis=1)[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.01), np.log(100.0)), method="bounded",
                                        options={"xatol": 1e-10}).x))


def _noisy_toy(n_per_class: int = 20, contrast: float = 0.8, noise: float = 0.25, seed: int = 0) -> ArrayDataset:
    """The toy classes at lower contrast under pixel noise: the trained toy model errs on a few
    images of both halves, so that the temperature is identifiable (on the clean toy images it
    errs on none, the NLL has no minimum and both halves give the same bound)."""
    rng = np.random.default_rng(seed)
    samples, arrays = [], {}
    for k in range(len(CLASSES)):
        for i in range(n_per_class):
            sid = f"{CLASSES[k]}/{i:03d}"
            img = np.clip(0.3 + contrast * (_pattern(k, rng)[0] - 0.3) + noise * rng.standard_normal((SIZE, SIZE)), 0, 1)
            arrays[sid] = (img * 255).astype(np.uint8)
            samples.append(Sample(sid, Path(sid), k))
    return ArrayDataset(list(CLASSES), samples, arrays)


@pytest.fixture(scope="module")
def study_and_logits(toy_model: Path):
    from robustkit.model.adapter import load_model

    model = load_model(toy_model)
    data = _noisy_toy()
    study = CalibrationStudy.configure("quick", {"n_bootstrap": 10, "shift_transforms": ["gaussian"],
                                                 "shift_severities": [1]})
    result = study.execute(model, data, AuditContext(seed=SEED))
    h, w, c = model.input_shape
    logits = model.logits(data.load_images(np.arange(len(data)), size=(h, w), channels=c)).astype(np.float64)
    return result, data, logits


def test_softmax_temperature_is_fitted_on_the_calibration_half(study_and_logits) -> None:
    result, data, logits = study_and_logits
    y = np.asarray(data.labels)
    cal = _calibration_half(np.asarray(data.ids), y, SEED)
    index = result.records["index"]
    np.testing.assert_array_equal(result.records["split"] == 0, cal[index])
    assert result.metrics["n_calibration"] == cal.sum()
    t_cal, t_ev = _fitted_temperature(logits[cal], y[cal]), _fitted_temperature(logits[~cal], y[~cal])
    assert abs(np.log(t_cal / t_ev)) > 0.05  # the halves disagree: fitting on the wrong one shows
    assert result.metrics["temperature"] == pytest.approx(t_cal, rel=1e-3)
