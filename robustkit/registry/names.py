"""robustkit's flat metric names as MLflow metric keys, and back.

MLflow accepts metric keys of letters, digits, ``_ - . / :`` and spaces, at most 250
characters, and refuses path-like keys (``a//b``). robustkit's names hold more (a slice
``slices.accuracy.site=C&view=AP``, a finding's name in any language), so every character
outside ``[A-Za-z0-9_.- ]`` is written as ``:`` and the two hex digits of each of its UTF-8
bytes (``=`` -> ``:3d``, ``&`` -> ``:26``, ``/`` -> ``:2f``, ``:`` itself -> ``:3a``), and so is a
leading ``.`` (MLflow reads a key starting with ``..`` as a path that leaves its folder).
Because ``:`` only ever starts an escape, the mapping is one-to-one: two metric names never
share a key, and :func:`robustkit_name` reads the key back. MLflow keys have at most 250
characters: a key that would pass 242 (room left for ``.ci_high``) keeps its first 230 and ends
in ``:--`` and 9 hex digits of the name's SHA-256 (``audit/metric_names.json`` has the full name).
An interval of ``<name>`` is logged as ``<key>.ci_low`` and ``<key>.ci_high``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from robustkit.errors import RobustkitError

__all__ = ["MAX_KEY", "interval_keys", "mlflow_key", "mlflow_keys", "robustkit_name"]

MAX_KEY = 242  # MLflow's 250, less room for ".ci_high"
_PLAIN = re.compile(r"[A-Za-z0-9_.\- ]")
_ESCAPE = re.compile(r"(?::[0-9a-f]{2})+")


def mlflow_key(name: str) -> str:
    """The MLflow metric key of a robustkit metric name.

    >>> mlflow_key("slices.accuracy.site=C&view=AP")
    'slices.accuracy.site:3dC:26view:3dAP'
    >>> mlflow_key("clean.sensitivity.Viral Pneumonia")
    'clean.sensitivity.Viral Pneumonia'
    """
    out = "".join(_escape(ch) if not _PLAIN.fullmatch(ch) or (i == 0 and ch == ".") else ch for i, ch in enumerate(name))
    if len(out) <= MAX_KEY:
        return out
    return out[: MAX_KEY - 12] + ":--" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:9]


def _escape(ch: str) -> str:
    return "".join(f":{b:02x}" for b in ch.encode("utf-8"))


def robustkit_name(key: str) -> str:
    """The robustkit metric name of an MLflow key written by :func:`mlflow_key`.

    >>> robustkit_name(mlflow_key("ood.auroc.mr/ct:é"))
    'ood.auroc.mr/ct:é'

    Raises:
        RobustkitError: a shortened key (its name is only in the run's ``metric_names.json``).
    """
    if ":--" in key:
        raise RobustkitError(f"{key!r}: expected a metric key robustkit can read back, got a shortened one; "
                             "its full name is in the run's metric_names.json.")
    return _ESCAPE.sub(lambda m: bytes.fromhex(m.group(0).replace(":", "")).decode("utf-8"), key)


def interval_keys(key: str) -> tuple[str, str]:
    """The keys of the low and high end of ``key``'s interval."""
    return f"{key}.ci_low", f"{key}.ci_high"


def mlflow_keys(metrics: Iterable[str], intervals: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """Every MLflow key -> (robustkit metric name, ``value``, ``ci_low`` or ``ci_high``).

    >>> mlflow_keys(["clean.accuracy"], ["clean.accuracy"])["clean.accuracy.ci_low"]
    ('clean.accuracy', 'ci_low')

    Raises:
        RobustkitError: two names would share a key (an interval end spelt like a metric, or
            two shortened names with the same hash): nothing is logged rather than one lost.
    """
    out: dict[str, tuple[str, str]] = {}
    pairs = [(mlflow_key(m), (m, "value")) for m in metrics]
    for name in intervals:
        low, high = interval_keys(mlflow_key(name))
        pairs += [(low, (name, "ci_low")), (high, (name, "ci_high"))]
    for key, entry in pairs:
        if key in out:
            raise RobustkitError(f"metric {entry[0]!r} ({entry[1]}): expected an MLflow key of its own, got {key!r}, "
                                 f"which {out[key][0]!r} ({out[key][1]}) already has; rename one of them.")
        out[key] = entry
    return out
