"""robustkit: audit trained Keras image classifiers for robustness and reliability.

The public API (TensorFlow is imported only when a function that needs it is called):

* :func:`audit` runs studies on a checkpoint and a dataset and returns an :class:`AuditResult`
  (its options grouped as :class:`ModelSpec`, :class:`DataIntake` and :class:`EngineSpec`);
* :func:`load_results` reads an audit folder; :func:`render_report` writes its HTML report;
* :func:`load_model` / :func:`load_dataset` give the :class:`ModelAdapter` / :class:`Dataset`;
* :func:`generate_phantom` writes the procedural chest X-ray phantom; :func:`train_model` trains.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "AuditResult",
    "DataIntake",
    "Dataset",
    "EngineSpec",
    "ModelAdapter",
    "ModelSpec",
    "StudyResult",
    "__version__",
    "audit",
    "generate_phantom",
    "load_dataset",
    "load_model",
    "load_results",
    "render_report",
    "train_model",
]

_LAZY = {
    "AuditResult": ("robustkit.results", "AuditResult"),
    "StudyResult": ("robustkit.results", "StudyResult"),
    "load_results": ("robustkit.results", "load_results"),
    "render_report": ("robustkit.report", "render_report"),
    "Dataset": ("robustkit.data.dataset", "Dataset"),
    "load_dataset": ("robustkit.data.loader", "load_dataset"),
    "generate_phantom": ("robustkit.data.phantom", "generate_phantom"),
    "ModelAdapter": ("robustkit.model.adapter", "ModelAdapter"),
    "load_model": ("robustkit.model.adapter", "load_model"),
    "audit": ("robustkit.runner", "audit"),
    "ModelSpec": ("robustkit.config", "ModelSpec"),
    "DataIntake": ("robustkit.config", "DataIntake"),
    "EngineSpec": ("robustkit.config", "EngineSpec"),
    "train_model": ("robustkit.model.training", "train"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'robustkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
