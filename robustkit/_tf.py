"""The one place robustkit imports TensorFlow and Keras (quietly).

TensorFlow prints a page of oneDNN/CUDA notices from C++ at import time, before its log
level settings apply. robustkit hides the C++ stderr output of the import itself (Python
errors still surface) and sets TensorFlow's log level to warnings-and-errors unless the
user chose one. Set ``ROBUSTKIT_TF_LOGS=1`` to see everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    if os.environ.get("ROBUSTKIT_TF_LOGS") or "tensorflow" in sys.modules:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded, some test runners)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_stderr_fd():
    import keras
    import tensorflow as tf

    tf.config.list_physical_devices()  # the CUDA probe logs here, once

__all__ = ["keras", "tf"]
