"""Messages that one stage hands the next through the workflow state (small: Step Functions caps it at 256 KB).

Each stage's request is what template.yaml's Parameters build for it; each response is what its ResultPath
puts into the state. One name and one home for each, so the store and failure paths read the very models
the earlier stages wrote rather than partial copies of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, field_validator

from shared.contracts import Detection, Finding, ModelRef, ObjectRef, QualityFlag, ReportSentence, TelemetryRecord

ImageFormat = Literal["png", "jpeg", "dicom"]
INCOMING = "incoming/"


def study_id_from_key(key: str) -> str:
    """incoming/<study_id>/<sidecar>.json -> <study_id> (the key itself when it has another form)."""
    parts = key.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] + "/" == INCOMING and parts[1] else key


class StageOutput(BaseModel):
    """Base of every stage's output: the study it is about, and what the telemetry record counts."""

    study_id: str
    bytes_in: int = 0
    bytes_out: int = 0
    model: ModelRef | None = None
    # What the telemetry record of a triage-relevant stage carries (store: arrival to result; notify: arrival to notification).
    priority: str | None = None
    since_arrival_ms: float | None = None
    # The telemetry record of the invocation that made this output, set by the StageHandler (never by a stage's domain
    # code); the workflow state carries it at `$.<stage>.telemetry` to SendTelemetry and RecordFailure.
    telemetry: TelemetryRecord | None = None


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


# --- ValidateMetadata ---
class ValidateRequest(BaseModel):
    bucket: str
    key: str
    execution_id: str = "direct-invoke"


class ValidatedStudy(StageOutput):
    metadata: ObjectRef  # the sidecar, or the DICOM file that carried its own metadata
    image: StudyImage
    view_position: str
    modality: str
    priority: str
    site: str | None = None  # the sidecar's source, or a pseudonym of the DICOM institution (services/validate)
    scanner: str | None = None  # DICOM manufacturer and model


# --- PrepareTensors ---
class PrepareRequest(BaseModel):
    study_id: str
    image: StudyImage
    execution_id: str = "direct-invoke"


class OriginalImage(BaseModel):
    width: int
    height: int
    bit_depth: int
    photometric: str
    # Which rule of docs/models.md ("Intensity") turned the stored values into [0, 1], e.g. "png16-percentile".
    intensity_rule: str | None = None
    # What looks wrong with the picture (docs/models.md, "Quality flags"), for the result; never changes findings.
    quality_flags: list[QualityFlag] = []
    exposure: float | None = None  # mean intensity of the picture, 0..1 (services/prepare): watched for drift


class PreparedTensors(StageOutput):
    original: OriginalImage
    tensors: dict[str, TensorRef]
    # How many shadow candidates have a tensor here (docs/model-lifecycle.md): RunModels' Shadow branch runs only then.
    shadow_candidates: int = 0


# --- RunModels (one branch per model) ---
class CandidateSentence(ReportSentence):
    """A report sentence the encoder ranks, with the findings/lesions it asserts and negates (sentence_bank.json)."""

    asserts: list[str] = []
    negates: list[str] = []


class InferenceRequest(BaseModel):
    model: str
    study_id: str
    tensor: TensorRef
    execution_id: str = "direct-invoke"
    priority: str = "routine"  # the study's (shared/priority.py): Triton's request priority


class ModelOutput(StageOutput):
    """One model's outputs for one study, already in the result's terms (which fields are set depends on the kind)."""

    kind: Literal["classifier", "detector", "encoder"]
    # The labels this model decides on (classifier findings, detector lesions): a label it has no box for is a negative.
    labels: list[str] | None = None
    findings: list[Finding] | None = None
    detections: list[Detection] | None = None
    # The encoder's ranked candidates, most similar first; the store stage picks the impression among them,
    # consistent with the classifier's and detector's decisions (the branches run in parallel).
    candidates: list[CandidateSentence] | None = None


# --- StoreResults ---
# --- RunModels' Shadow branch (docs/model-lifecycle.md) ---
class ShadowRequest(BaseModel):
    """The shadow candidates of every model that has one, on this study's tensors (keys `<model>@<version>`)."""

    shadow: Literal[True] = True
    study_id: str
    tensors: dict[str, TensorRef]
    execution_id: str = "direct-invoke"


class ShadowRun(BaseModel):
    model: ModelRef
    kind: Literal["classifier", "detector", "encoder"]
    latency_ms: float
    output: ObjectRef  # results/shadow/<study_id>/<model>/<version>.json: never read by the store, exports or notifications


class ShadowOutput(StageOutput):
    shadow: list[ShadowRun] = []
    lake: ObjectRef | None = None  # the study's model_outputs rows, role=shadow
    skipped: str | None = None  # why nothing ran (no candidate, the study not in any candidate's share)


class StoreRequest(BaseModel):
    study: ValidatedStudy
    tensors: PreparedTensors
    inference: list[ModelOutput]
    execution_id: str = "direct-invoke"
    started_at: datetime | None = None  # the execution's start ($$.Execution.StartTime): the result's end-to-end time
    uploaded_at: datetime | None = None  # the study's arrival (the upload event's time): telemetry's arrival-to-result

    @field_validator("inference", mode="before")
    @classmethod
    def _live_outputs_only(cls, value: Any) -> Any:
        """RunModels' Shadow branch answers beside the live models: its output (or its skip) never reaches the result."""
        if isinstance(value, list):
            return [item for item in value if not (item is None or (isinstance(item, dict) and "shadow" in item))]
        return value


class StoredResult(StageOutput):
    result: ObjectRef
    positive_findings: list[str]


# --- NotifyCriticalFindings (and RecordNotifyDeadLetter) ---
class NotifyRequest(BaseModel):
    study: ValidatedStudy
    stored: StoredResult
    execution_id: str = "direct-invoke"
    uploaded_at: datetime | None = None  # the study's arrival: the upload event's time (the rule's input transformer)
    # Set by the workflow's Catch ({Error, Cause}) once delivery failed for good: the pending notifications are dead letters.
    error: dict[str, Any] | None = None


class NotifiedResult(StageOutput):
    fired: list[str] = []  # the critical-finding rules that fired (results/<study_id>/notifications.json says more)
    delivered: list[str] = []  # what reached its destination in this invocation (hl7:<rule>, event:<rule>)
    dead_letters: list[str] = []  # the rules whose notification is a dead letter (`radstream notify --replay`)


# --- ExportResults (DICOM studies only) ---
class ExportRequest(BaseModel):
    study: ValidatedStudy
    stored: StoredResult
    execution_id: str = "direct-invoke"


class ExportedResult(StageOutput):
    sr: ObjectRef | None = None
    fhir: ObjectRef | None = None
    overlay: ObjectRef | None = None  # the Secondary Capture with the boxes burned in (report.overlay.dcm)
    # Why nothing was exported, when the source cannot be addressed (e.g. it lacks its StudyInstanceUID).
    skipped: str | None = None


# --- DeliverResults (and the dead letters of RecordDeadLetter and RecordExportFailure) ---
class DeliverRequest(BaseModel):
    study: ValidatedStudy
    # What ExportResults wrote; absent when ExportResults itself failed (RecordExportFailure: the build is dead-lettered).
    exported: ExportedResult | None = None
    # The stored result, for a build that failed: what `radstream export --retry` builds the exports from again.
    stored: StoredResult | None = None
    execution_id: str = "direct-invoke"
    # Set by the workflow's Catch ({Error, Cause}) once delivery, or the build, failed for good: record the dead letter instead.
    error: dict[str, Any] | None = None


class DeliveredResult(StageOutput):
    destinations: list[str] = []  # where the exports went (dimse:AE@host:port, stow:URL, fhir:URL)
    dead_letter: ObjectRef | None = None  # results/export-failed/<study_id>/<execution>.json
    skipped: str | None = None  # why nothing was sent (nothing exported, no destination configured)
    # A build that failed: the export stage's telemetry record (status failed), which the workflow counts in place of
    # ExportResults' own (ExportFailed puts it at $.exported.telemetry).
    export_record: TelemetryRecord | None = None


# --- RecordFailure ---
class FailureRequest(BaseModel):
    bucket: str
    key: str
    state: dict[str, Any]
    execution_id: str = "direct-invoke"


class RecordedFailure(StageOutput):
    failure: ObjectRef
    error_type: str
    message: str
    stage: str
    records: list[dict[str, Any]]


# --- SendTelemetry / SendFailureTelemetry ---
class TelemetryRequest(BaseModel):
    study_id: str
    status: Literal["succeeded", "failed"]
    records: list[Any]
    execution_id: str = "direct-invoke"
    started_at: datetime | None = None


class TelemetrySent(StageOutput):
    sent: int
