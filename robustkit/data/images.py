"""Small image helpers shared by studies (no TensorFlow): encoding examples for the report."""

from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["png_base64"]


def png_base64(image: np.ndarray, *, max_side: int = 160) -> str:
    """Encode an image ``(H, W, C)`` in [0, 1] as a small base64 PNG (for the report)."""
    from PIL import Image

    arr = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    arr = arr[..., 0] if arr.ndim == 3 and (arr.shape[2] == 1 or np.allclose(arr[..., 0], arr[..., -1])) else arr
    pil = Image.fromarray((arr * 255 + 0.5).astype(np.uint8))
    pil.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")
