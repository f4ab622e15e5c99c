"""Conditions on lung-field masks: blank the lungs, or blank everything but the lungs.

The shortcut question of DeGrave et al. 2021 ("AI for radiographic COVID-19 detection
selects shortcuts over signal", Nature Machine Intelligence 3:610-619): does the model read
the lungs or something around them (text, borders, the patient's position)? A model that
reads the lungs falls to near chance with the lungs blanked and holds up with the outside
blanked; a shortcut model does the reverse.

* :func:`blank_lungs` ("lungs blanked"): the lung fields replaced by the mean intensity of
  the image outside them.
* :func:`blank_outside` ("outside blanked"): everything but the lung fields replaced by the
  mean intensity inside them.

Both are vectorised over the batch, per image and channel; an image whose mask is empty is
returned unchanged (there is nothing to tell inside from outside).

Example:
    >>> import numpy as np
    >>> x = np.array([[[[0.2], [1.0]]]], dtype=np.float32)   # (1, 1, 2, 1)
    >>> lungs = np.array([[[False, True]]])
    >>> blank_lungs(x, lungs)[0, 0, :, 0].tolist(), blank_outside(x, lungs)[0, 0, :, 0].tolist()
    ([0.20000000298023224, 0.20000000298023224], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from robustkit.errors import param_error

__all__ = ["MASK_CONDITIONS", "blank_lungs", "blank_outside"]


def _check(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images)
    k = np.asarray(masks, dtype=bool)
    if x.ndim != 4 or k.shape != x.shape[:3]:
        raise param_error("masks", f"a bool (N, H, W) array matching images {x.shape}", k.shape)
    return x, k[..., None]


def _fill(x: np.ndarray, region: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Replace ``region`` of each image by the mean of ``source`` (per image and channel)."""
    n_src = source.sum(axis=(1, 2), keepdims=True)
    mean = (x * source).sum(axis=(1, 2), keepdims=True) / np.maximum(n_src, 1)
    usable = (n_src > 0) & region.any(axis=(1, 2), keepdims=True) & (~region).any(axis=(1, 2), keepdims=True)
    out = np.where(region & usable, mean, x)
    return out.astype(x.dtype, copy=False)


def blank_lungs(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Lung fields replaced by the mean intensity outside them.

    Args:
        images: float (N, H, W, C) in [0, 1].
        masks: bool (N, H, W), True on the lung fields.

    Returns:
        The images, same shape and dtype.
    """
    x, k = _check(images, masks)
    return _fill(x, k, ~k)


def blank_outside(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Everything but the lung fields replaced by the mean intensity inside them.

    Args:
        images: float (N, H, W, C) in [0, 1].
        masks: bool (N, H, W), True on the lung fields.

    Returns:
        The images, same shape and dtype.
    """
    x, k = _check(images, masks)
    return _fill(x, ~k, k)


#: The two lung-mask conditions by name, in report order.
MASK_CONDITIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "lungs_blanked": blank_lungs,
    "outside_blanked": blank_outside,
}
