"""robustkit's error types and the one error form used at every boundary.

Every user-facing error reads ``<what>: expected <expectation>, got <received>.`` so that
a CLI user, a CI log and a test can all tell which parameter or file was wrong. The CLI
turns any :class:`RobustkitError` into a one-line message and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "ClusterError",
    "ConfigError",
    "DataError",
    "ModelError",
    "RobustkitError",
    "check_choice",
    "check_range",
    "param_error",
]


class RobustkitError(Exception):
    """Base class of every error robustkit raises on purpose (bad input, not a bug)."""

    exit_code = 2


class ConfigError(RobustkitError, ValueError):
    """A bad option, config key or policy value."""


class DataError(RobustkitError, ValueError):
    """A dataset, image or mask that cannot be used."""


class ModelError(RobustkitError, ValueError):
    """A checkpoint that cannot be loaded or is not a classifier."""


class ClusterError(RobustkitError):
    """A compute cluster failed mid-audit (not bad input: exit 1); a re-run resumes."""

    exit_code = 1


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)


def param_error(name: str, expected: str, got: Any, *, where: str = "") -> ConfigError:
    """Build the standard error for a bad parameter value.

    >>> str(param_error("n_bins", "an int in [1, inf)", 0))
    "The 'n_bins' parameter must be an int in [1, inf). Got 0 instead."
    """
    place = f" of {where}" if where else ""
    return ConfigError(f"The {name!r} parameter{place} must be {expected}. Got {_show(got)} instead.")


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
    where: str = "",
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a number in the given range."""
    kind = "an int" if integer else "a number"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    expected = f"{kind} in {'(' if low_open or low is None else '['}{lo}, {hi}{']' if high is not None and not high_open else ')'}"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise param_error(name, expected, value, where=where)
    if value != value:  # NaN
        raise param_error(name, expected, value, where=where)
    if low is not None and (value < low or (low_open and value == low)):
        raise param_error(name, expected, value, where=where)
    if high is not None and (value > high or (high_open and value == high)):
        raise param_error(name, expected, value, where=where)


def check_choice(name: str, value: Any, choices: tuple[str, ...] | list[str], *, where: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        expected = "one of " + ", ".join(repr(c) for c in choices)
        raise param_error(name, expected, value, where=where)
