"""The one place robustkit imports TensorFlow and Keras (quietly).

Importing this module sets TensorFlow's C++ log level to warnings-and-errors unless the
user set it, so that a CLI run does not open with a page of oneDNN/CUDA notices.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = ["keras", "tf"]
