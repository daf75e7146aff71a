"""The overlay: a DICOM Secondary Capture of the source image with the detector's boxes and labels burned in.

For viewers that do not render SR (many PACS viewers and most web viewers show only images). A Secondary
Capture, not a Grayscale Softcopy Presentation State, because the viewers without SR support are mostly the
ones without GSPS support too: a GSPS such a viewer ignores shows nothing, a Secondary Capture is an image
every viewer displays. The price is a second copy of the pixels (8-bit RGB, JPEG-LS lossless), and that the
annotation cannot be switched off (BurnedInAnnotation YES says so).

The source is decoded exactly as the prepare stage decodes it for the models (shared/pixels.py: every
transfer syntax, modality LUT, VOI window or LUT, MONOCHROME1 inverted), so the picture is the one a
radiologist sees. Boxes are in the source's pixel coordinates, (0,0) the top-left corner of the top-left pixel
(the SR's SCOORD convention); each is drawn on the pixels it covers, in red, with "label score" above it. The
top-left corner says "AI-generated draft, not for clinical use". The patient, study and equipment modules are
copied from the source's header as services/export/header.py cleans it (each value valid for its VR), through
highdicom's from_ref_dataset, in a series of its own; UIDs are deterministic per
study and execution, as the SR's.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from shared.contracts import StudyResult

OVERLAY_SERIES_NUMBER = 9902
BOX_RGB = (255, 32, 32)
TEXT_RGB = (255, 255, 0)


def line_width(rows: int, columns: int) -> int:
    """Boxes and text thick enough to see on a full-size radiograph (~3 px at 2500 px), at least 1 px."""
    return max(1, round(min(rows, columns) / 800))


def box_pixels(box: tuple[float, float, float, float], rows: int, columns: int) -> tuple[int, int, int, int]:
    """The first and last pixel (column, row) a box covers: pixel i spans [i, i+1)."""
    x0, y0, x1, y1 = box
    first_x, first_y = int(np.clip(np.floor(x0), 0, columns - 1)), int(np.clip(np.floor(y0), 0, rows - 1))
    last_x, last_y = int(np.clip(np.ceil(x1) - 1, first_x, columns - 1)), int(np.clip(np.ceil(y1) - 1, first_y, rows - 1))
    return first_x, first_y, last_x, last_y


def draw(gray: np.ndarray, result: StudyResult, draft_label: str) -> np.ndarray:
    """The annotated picture: 8-bit RGB, the boxes' outlines on their outermost pixels, labels above (or inside at the top)."""
    import cv2

    rows, columns = gray.shape
    picture = np.repeat(np.rint(np.clip(gray, 0.0, 1.0) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    picture = np.ascontiguousarray(picture)
    width = line_width(rows, columns)
    scale = max(0.4, min(rows, columns) / 1600)
    for detection in result.detections:
        x0, y0, x1, y1 = box_pixels(detection.box, rows, columns)
        # The outline lies inside the box, on its border pixels: nothing outside the box is touched by it.
        for k in range(width):
            if x0 + k > x1 - k or y0 + k > y1 - k:
                break
            cv2.rectangle(picture, (x0 + k, y0 + k), (x1 - k, y1 - k), BOX_RGB, 1, lineType=cv2.LINE_8)
        text = f"{detection.label.replace('_', ' ')} {detection.score:.2f}"
        (_, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, width)
        y = y0 - baseline - width if y0 - height - baseline - width >= 0 else y0 + height + width
        cv2.putText(picture, text, (x0, y), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_RGB, width, cv2.LINE_AA)
    (_, height), baseline = cv2.getTextSize(draft_label, cv2.FONT_HERSHEY_SIMPLEX, scale, width)
    cv2.putText(picture, draft_label, (4 * width, height + 4 * width), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_RGB, width, cv2.LINE_AA)
    return picture


def build_overlay(
    result: StudyResult,
    source_bytes: bytes,
    header: Any,
    uid: Callable[[str], str],
    series_description: str,
    draft_label: str,
    manufacturer: str,
):
    """The Secondary Capture (highdicom SCImage) of the annotated source, in its own series of the source's study."""
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name the source's UIDs (docs/phi.md)
    from highdicom.sc import SCImage
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

    from shared.pixels import decode_dicom

    picture = draw(decode_dicom(source_bytes, result.study_id).pixels, result, draft_label)
    # `header` is the source's header as services/export/header.py cleans it: every value valid for its VR.
    orientation = header.get("PatientOrientation")

    def secondary_capture(transfer_syntax: str) -> Any:
        return SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=picture,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=uid("overlay-series"),
            series_number=OVERLAY_SERIES_NUMBER,
            sop_instance_uid=uid("overlay"),
            instance_number=1,
            manufacturer=manufacturer,
            # highdicom wants a (single-letter-pair) orientation for the PATIENT coordinate system; the source's own value
            # (Type 2C, possibly compound such as "A\\FR", empty or absent) replaces it below: copied, never invented.
            patient_orientation=("L", "F"),
            laterality=header.get("Laterality") or None,
            transfer_syntax_uid=transfer_syntax,
            series_description=series_description[:64],
        )

    try:
        sc = secondary_capture(JPEGLSLossless)
    except RuntimeError:  # CharLS cannot code a picture of a few pixels ("destination buffer too small"): uncompressed
        sc = secondary_capture(ExplicitVRLittleEndian)
    # The rest of the patient and study modules (PatientAge, PatientIdentityRemoved and its method...), as the SR has them.
    sc.copy_patient_and_study_information(header)
    sc.PatientOrientation = list(orientation) if orientation else []  # Type 2: present, empty when unknown
    sc.ConversionType = "WSD"  # made by a workstation (software), not digitised from film or video
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{draft_label}: detector boxes burned in; the SR in series 9901 holds the findings"
    sc.DerivationDescription = "Source image with AI detection boxes and labels drawn"
    if header.get("BodyPartExamined"):
        sc.BodyPartExamined = header.BodyPartExamined
    return sc


def overlay_bytes(sc: Any) -> bytes:
    buffer = io.BytesIO()
    sc.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
