"""Joining a Ray cluster within a deadline, or a one-line error naming the address and what was tried.

``ray.init(address=...)`` with nothing answering at the address retries for many minutes and
prints a connection warning every few seconds. robustkit first opens a TCP connection to the
address and to Ray's form of it (Ray rewrites ``127.0.0.1:PORT`` to this node's address, which
a head started on ``127.0.0.1`` may not answer on); then it joins once in a child process, killed
at the deadline, so Ray's retries and warnings stay there and the error can quote Ray's last
line; only then does the driver call ``ray.init``. Each of the two steps is bounded by
``--ray-connect-timeout`` (default :data:`CONNECT_TIMEOUT` seconds). A local instance started
by robustkit (no address) is not bounded by it: Ray starts its processes itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

from robustkit.errors import ConfigError, param_error

__all__ = ["CONNECT_TIMEOUT", "check_address", "join_cluster"]

#: seconds to reach a named cluster before giving up (``--ray-connect-timeout``)
CONNECT_TIMEOUT = 30.0
_FORMS = "'auto', 'HOST:PORT' or 'ray://HOST:PORT'"


def _source(given: str | None) -> tuple[str | None, str]:
    """The address to join and where it came from (the option, else ``RAY_ADDRESS``)."""
    if given:
        return given, "--ray-address"
    env = os.environ.get("RAY_ADDRESS") or None
    return env, "RAY_ADDRESS"


def _split(address: str, source: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise param_error(source.lstrip("-").replace("-", "_"), _FORMS, address)
    return host.strip("[]"), int(port)


def _ray_form(address: str, source: str) -> str:
    """The ``HOST:PORT`` Ray itself will dial for ``address`` (``auto`` looked up, localhost rewritten)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without this helper: dial what was given
        return address
    try:
        found = canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise ConfigError(f"ray engine: {source} {address!r}: expected a running Ray cluster on this machine "
                          "(started with 'ray start --head'), found none.") from None
    except ValueError:
        raise param_error(source.lstrip("-").replace("-", "_"), _FORMS, address) from None
    return found or address


def _dial(host: str, port: int, deadline: float) -> str | None:
    """None when a TCP connection to ``host:port`` opens before ``deadline``; else why not."""
    try:
        with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror:
        return "unknown host"
    except TimeoutError:
        return "no answer"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_address(given: str | None, *, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """The address to join (``None``: start a local instance), after checking that it answers.

    Args:
        given: ``--ray-address`` (``None``: ``RAY_ADDRESS``, else none).
        timeout: seconds for all the TCP connections together.

    Raises:
        ConfigError: one line naming the address, the connections tried and their outcome.
    """
    address, source = _source(given)
    if address is None or address == "local":
        return address
    deadline = time.monotonic() + timeout
    tried = [address.removeprefix("ray://")] if address != "auto" else []
    for hostport in tried:
        _split(hostport, source)  # the form first, before Ray looks at it
    if not address.startswith("ray://"):
        tried.append(_ray_form(address, source))
    outcome: dict[str, str | None] = {}
    for hostport in dict.fromkeys(tried):  # the given form, then Ray's (once if they are equal)
        outcome[hostport] = _dial(*_split(hostport, source), deadline)
    if outcome[tried[-1]] is None:  # the form Ray dials answers
        return address
    raise ConfigError(_unreachable(address, source, outcome, timeout))


def _unreachable(address: str, source: str, outcome: dict[str, str | None], timeout: float) -> str:
    said = [f"{hp}{', the form Ray dials,' if k and len(outcome) > 1 else ''} {why or 'answered'}"
            for k, (hp, why) in enumerate(outcome.items())]
    local = address.startswith(("127.", "localhost:"))  # Ray dials this node's address instead
    hint = " On the head machine itself use --ray-address auto." if local else ""
    return (f"ray engine: no Ray cluster answers at {source} {address!r} (TCP connections within {timeout:g} s, "
            f"--ray-connect-timeout: {'; '.join(said)}).{hint}")


#: joins and leaves the cluster in a child process (killed at the deadline: ``ray.init`` can't be cancelled)
_TRIAL = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); ray.shutdown()"


def join_cluster(ray: Any, address: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """``ray.init(address=address)``, once a trial join in a child process has succeeded within
    ``timeout`` seconds (Ray's retries and warnings stay in the child, which is killed at the
    deadline).

    Raises:
        ConfigError: one line: the address, what was tried and Ray's last word on it.
    """
    env = {**os.environ, "RAY_ADDRESS": ""}
    try:
        trial = subprocess.run([sys.executable, "-c", _TRIAL, address], capture_output=True, text=True,
                               timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        said = _last_line(exc.stderr)
        raise ConfigError(f"ray engine: the Ray cluster at {address!r} answered TCP but did not accept a driver "
                          f"within {timeout:g} s (--ray-connect-timeout){said}") from None
    if trial.returncode != 0:
        raise ConfigError(f"ray engine: joining the Ray cluster at {address!r} failed{_last_line(trial.stderr)}")
    ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)


def _last_line(stderr: str | bytes | None) -> str:
    """``; Ray said: <its last line>`` when the trial said something, else ``.``."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr or ""
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]
    return f"; Ray said: {lines[-1][:240]}" if lines else "."
