"""The data side: datasets, layouts, image decoding, transforms and the phantom (no TensorFlow).

* :mod:`~robustkit.data.dataset`: :class:`Dataset` (stable ids, subsampling, fingerprint);
* :mod:`~robustkit.data.loader`: :func:`load_dataset`, over the layouts of
  :mod:`~robustkit.data.layouts` (folder-per-class, CSV manifests);
* :mod:`~robustkit.data.imageio`: decoding PNG/JPEG/BMP/TIFF and DICOM;
* :mod:`~robustkit.data.transforms`: the perturbations and noises, vectorised and seeded;
* :mod:`~robustkit.data.phantom`: the procedural chest X-ray phantom.
"""

from __future__ import annotations

from robustkit.data.dataset import Dataset
from robustkit.data.loader import load_dataset

__all__ = ["Dataset", "load_dataset"]
