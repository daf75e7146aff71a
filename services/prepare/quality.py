"""Input plausibility: quality flags read from the decoded picture (docs/models.md, "Quality flags").

Inputs: the [0, 1] picture prepare made (after the intensity rule) and its exposure levels on the declared range.
Outputs: the names of the flags that fire, in QUALITY_FLAGS order. Flags inform the reader; they never change findings.

Everything is read from a 64 x 64 thumbnail (an area average: well under a millisecond at 1024²) in fractions of the
picture's width and height, so it does not depend on the picture's size or container.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

from shared.contracts import QUALITY_FLAGS, QualityFlag

THUMBNAIL = 64
# Where a PA/AP chest puts things, in fractions of the width and height (the patient's right is the image's left):
LUNG_ROWS = (0.30, 0.60)  # both lung fields, above the domes of the diaphragm
LUNG_COLUMNS = ((0.22, 0.36), (0.64, 0.78))
MEDIASTINUM_COLUMNS = (0.45, 0.55)  # spine, heart and mediastinum, between the lungs
ABDOMEN_ROWS = (0.82, 0.97)  # under the diaphragm, below the lung columns
NECK_ROWS = (0.03, 0.15)  # above the apices, the lung columns: shoulders and neck, or air
# A chest's lungs are darker than the mediastinum between them, and than the abdomen below them or the shoulders above
# them (a film collimated just under the domes has no abdomen), by at least this much of the window. Measured
# 2026-12-07 on 300 phantoms: mediastinum - lungs 0.15 to 0.61, abdomen - lungs 0.08 to 0.49; on noise, ramps and
# limb-like pictures (a limb is the same from top to bottom) the abdomen and the neck differ from the lungs by < 0.01.
MEDIASTINUM_MARGIN = 0.08
VERTICAL_MARGIN = 0.04
# On the declared range (BitsStored, sBIT, ...): the brightest 5% under 0.35 is a dark, burned-out picture; the
# darkest 5% over 0.40 a grey, washed-out one; 0.5th to 99.5th percentile within 0.20 a flat one.
OVEREXPOSED_P95 = 0.35
UNDEREXPOSED_P5 = 0.40
LOW_CONTRAST_SPAN = 0.20


@dataclass(frozen=True)
class Structure:
    """Lungs against what surrounds them, in fractions of the window: positive when the lungs are the darker."""

    mediastinum: float
    abdomen: float
    neck: float
    asymmetry: float


def _band(thumb: np.ndarray, rows: tuple[float, float], columns: tuple[float, float]) -> float:
    h, w = thumb.shape
    return float(thumb[int(rows[0] * h) : int(rows[1] * h), int(columns[0] * w) : int(columns[1] * w)].mean())


def structure(pixels: np.ndarray) -> Structure:
    thumb = cv2.resize(pixels, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)
    right, left = (_band(thumb, LUNG_ROWS, c) for c in LUNG_COLUMNS)
    lungs = (right + left) / 2
    abdomen = sum(_band(thumb, ABDOMEN_ROWS, c) for c in LUNG_COLUMNS) / 2
    neck = sum(_band(thumb, NECK_ROWS, c) for c in LUNG_COLUMNS) / 2
    return Structure(_band(thumb, LUNG_ROWS, MEDIASTINUM_COLUMNS) - lungs, abdomen - lungs, neck - lungs, abs(right - left))


def quality_flags(pixels: np.ndarray, declared_levels: tuple[float, float, float, float]) -> list[QualityFlag]:
    """The flags that fire for this picture; `declared_levels` are its 0.5/5/95/99.5th percentiles on the declared range."""
    fired = set()
    s = structure(pixels)
    above_or_below = max(s.abdomen, s.neck) if s.mediastinum > 0 else min(s.abdomen, s.neck)
    upright = s.mediastinum > MEDIASTINUM_MARGIN and above_or_below > VERTICAL_MARGIN
    inverted = s.mediastinum < -MEDIASTINUM_MARGIN and above_or_below < -VERTICAL_MARGIN
    # Two lungs of one patient (one of them consolidated, or behind an effusion) differ less than they differ from
    # what surrounds them.
    symmetric = s.asymmetry < abs(s.mediastinum) + abs(above_or_below)
    if inverted and symmetric:
        fired.add("polarity_suspicious")  # a chest, but white lungs: MONOCHROME1/2 (or INVERSE) says the wrong way
    elif not (upright and symmetric):
        fired.add("not_chest_like")
    p0_5, p5, p95, p99_5 = declared_levels
    if p95 < OVEREXPOSED_P95:
        fired.add("overexposed")
    if p5 > UNDEREXPOSED_P5:
        fired.add("underexposed")
    if p99_5 - p0_5 < LOW_CONTRAST_SPAN:
        fired.add("low_contrast")
    return [cast("QualityFlag", flag) for flag in QUALITY_FLAGS if flag in fired]
