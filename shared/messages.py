"""Messages that one stage hands the next through the workflow state (small: Step Functions caps it at 256 KB)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from shared.contracts import Detection, Finding, ReportSentence
from shared.observability import StageOutput

ImageFormat = Literal["png", "jpeg", "dicom"]
INCOMING = "incoming/"


def study_id_from_key(key: str) -> str:
    """incoming/<study_id>/<sidecar>.json -> <study_id> (the key itself when it has another form)."""
    parts = key.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] + "/" == INCOMING and parts[1] else key


class StudyImage(BaseModel):
    bucket: str
    key: str
    format: ImageFormat
    sha256: str
    size_bytes: int


class Letterbox(BaseModel):
    """x_original = (x_tensor - pad_x) / scale, likewise for y."""

    scale: float
    pad_x: float
    pad_y: float


class TensorRef(BaseModel):
    bucket: str
    key: str
    shape: list[int]
    letterbox: Letterbox
    original_width: int
    original_height: int


class ModelOutput(StageOutput):
    """One model's outputs for one study, already in the result's terms (which fields are set depends on the kind)."""

    kind: Literal["classifier", "detector", "encoder"]
    findings: list[Finding] | None = None
    detections: list[Detection] | None = None
    impression: list[ReportSentence] | None = None
