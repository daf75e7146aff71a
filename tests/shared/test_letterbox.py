"""The one letterbox (shared/letterbox.py): upscaling a tall picture, the scale boxes map back with."""

from __future__ import annotations

import numpy as np

from shared.letterbox import letterbox


def test_a_tall_picture_is_scaled_up_centred_and_padded():
    square, box = letterbox(np.ones((100, 50), np.float32), 200)
    assert square.shape == (200, 200) and (box.scale, box.pad_x, box.pad_y) == (2.0, 50, 0)
    assert square[:, :50].max() == 0.0 and square[:, 50:150].min() > 0.99 and square[:, 150:].max() == 0.0


def test_the_scale_is_the_one_the_picture_was_resized_by():
    """333 px scaled to 100 is 33.33... px: the picture is resized to 33 px, and 33/333 is the scale boxes map back with."""
    _, box = letterbox(np.ones((999, 333), np.float32), 300)
    assert box.scale == 100 / 333
    _, box = letterbox(np.ones((1000, 333), np.float32), 300)
    assert box.scale == 100 / 333 and box.pad_x == (300 - 100) // 2
