"""The letterbox, written once: how a picture becomes a model's square input, and how boxes map back (docs/models.md).

Used by prepare (the pipeline's tensors), the triton service's tests and the quality-flags benchmark.
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.messages import Letterbox


def fitted(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Where a h x w image lands in a letterbox of `size`: (new_w, new_h, pad_x, pad_y)."""
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def letterbox(pixels: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Scale the longer side to `size`, centre, pad with black. Nothing is cropped.

    The scale is the one the picture was resized by (new width / width, after rounding to whole pixels), so that
    x_original = (x_tensor - pad_x) / scale holds for the boxes the models return."""
    h, w = pixels.shape
    new_w, new_h, pad_x, pad_y = fitted(h, w, size)
    interpolation = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((size, size), np.float32)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, Letterbox(scale=new_w / w, pad_x=pad_x, pad_y=pad_y)
