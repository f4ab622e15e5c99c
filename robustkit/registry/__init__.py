"""robustkit and an MLflow tracking server: log audits, fetch baselines, history across versions.

Only this package imports ``mlflow`` (lazily, through :mod:`robustkit.registry.client`), so
robustkit without the ``mlflow`` extra works as before and ``--mlflow`` says how to install it.
"""

from robustkit.registry.baseline import resolve_baseline
from robustkit.registry.client import RegistryError
from robustkit.registry.gate_log import log_gate
from robustkit.registry.history import history
from robustkit.registry.log import LoggedRun, log_audit
from robustkit.registry.names import mlflow_key, robustkit_name

__all__ = ["LoggedRun", "RegistryError", "history", "log_audit", "log_gate", "mlflow_key", "resolve_baseline",
           "robustkit_name"]
