"""Versioned contracts: what leaves the pipeline (result, failure record, telemetry record, export status).

The JSON Schema files beside this module (schemas/*.v1.schema.json) are generated from these models
(`python -m shared.contracts`) and a test keeps them in step. The sidecar's schema is hand-written,
since it is what users write against.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
NOT_FOR_CLINICAL_USE: Literal["not for clinical use"] = "not for clinical use"
Stage = Literal["validate", "prepare", "inference", "store", "export", "notify", "telemetry", "workflow"]
# Where a study can fail: a workflow stage, or before the workflow (its upload) or around it (the local runtime).
FailureStage = Literal["upload", "validate", "prepare", "inference", "store", "export", "notify", "telemetry", "workflow", "runtime"]


# Input plausibility (docs/models.md, "Quality flags"): read from the picture by prepare, carried into the result,
# shown by the console and the text report. They inform the reader and never change a finding.
QUALITY_FLAGS: dict[str, str] = {
    "polarity_suspicious": "the picture looks inverted: white lung fields (is MONOCHROME1/2 or INVERSE declared the wrong way?)",
    "not_chest_like": "the picture does not look like a frontal chest radiograph (no dark lung fields beside the mediastinum and above the abdomen)",
    "underexposed": "washed out: even the darkest parts are grey on the declared range",
    "overexposed": "burned out: even the brightest parts are dark on the declared range",
    "low_contrast": "the stored values span less than a fifth of the declared range",
}
QualityFlag = Literal["polarity_suspicious", "not_chest_like", "underexposed", "overexposed", "low_contrast"]


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectRef(Contract):
    bucket: str
    key: str


class ModelRef(Contract):
    name: str
    version: str
    # What the model is, from its config.pbtxt (e.g. "reference model trained on synthetic phantoms").
    provenance: str


class TelemetryRecord(Contract):
    """One stage of one study, as it lands in the telemetry lake (one NDJSON line)."""

    schema_version: Literal["1"] = "1"
    event_id: str
    time: datetime
    study_id: str
    execution_id: str
    stage: Stage
    status: Literal["succeeded", "failed"]
    duration_ms: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    error_type: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    cold_start: bool = False
    # Triage (docs/triage.md): the study's priority, and on the store and notify records the milliseconds from the study's
    # arrival (its upload) to its result, or to its first notification delivered; null on every other record.
    priority: str | None = None
    since_arrival_ms: float | None = None


class Finding(Contract):
    label: str
    probability: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0, le=1)
    positive: bool
    high_specificity_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "The model version's high-specificity operating point for this label (its card: specificity >= 0.95 on "
            "validation; metrics.json `high_specificity`), where the card gives one: what a critical-finding rule with "
            'threshold "high-specificity" holds the probability to (docs/triage.md). Not a decision of its own: '
            "`positive` is decided at `threshold`."
        ),
    )


class Detection(Contract):
    label: str
    score: float = Field(ge=0, le=1)
    box: tuple[float, float, float, float] = Field(
        description=(
            "[x_min, y_min, x_max, y_max] in pixels of the original image as uploaded (its full resolution, before any "
            "letterbox), origin at the image's top-left corner, x to the right, y down; x_min < x_max <= width, "
            "y_min < y_max <= height. Boxes never overlap by IoU > 0.5, whatever their labels (non-maximum suppression)."
        )
    )


class ReportSentence(Contract):
    text: str
    similarity: float


class DraftReport(Contract):
    label: Literal["AI-generated draft, not for clinical use"] = "AI-generated draft, not for clinical use"
    findings_text: str
    impression: list[ReportSentence]
    embedding_model: ModelRef


class StudyIdentifiers(Contract):
    """The DICOM identifiers a PACS, RIS or worklist keys on, read from the uploaded DICOM's header by the store
    stage. Identifiers only, never names, birth dates or patient IDs; they appear in the result and nowhere else
    the pipeline writes (docs/phi.md)."""

    StudyInstanceUID: str | None = None
    SeriesInstanceUID: str | None = None
    SOPInstanceUID: str | None = None
    AccessionNumber: str | None = None


class InputDigest(Contract):
    image: ObjectRef
    sha256: str
    size_bytes: int
    width: int
    height: int
    # How the stored values became the [0, 1] picture the models saw (docs/models.md, "Intensity"),
    # e.g. "dicom-12bit-percentile-inverted" or "png16-percentile".
    intensity_rule: str | None = None
    quality_flags: list[QualityFlag] = Field(
        default_factory=list,
        description=(
            "What looks wrong with the input picture (docs/models.md, 'Quality flags'); empty when nothing does. "
            "Flags never change findings."
        ),
    )


class FiredRule(Contract):
    """A critical-finding rule that fired for a study's result (services/notify/critical_findings.json)."""

    rule: str
    label: str
    probability: float
    threshold: float = Field(description="the probability it was held to: the rule's own, or the finding's operating point")
    message_id: str = Field(description="its notification in notifications.json (MSH-10, the event's id)")
    fired_at: datetime = Field(description="when the rule first fired for the study (notifications.json)")


class StudyResult(Contract):
    """results/<study_id>/result.json."""

    schema_version: Literal["1"] = "1"
    study_id: str
    status: Literal["succeeded"] = "succeeded"
    label: Literal["not for clinical use"] = NOT_FOR_CLINICAL_USE
    input: InputDigest
    identifiers: StudyIdentifiers | None = Field(
        None, description="DICOM studies only; null for a sidecar study (its study_id is the key)."
    )
    modality: str = Field(description="CR or DX, from the sidecar or the DICOM header")
    view_position: str = Field(description="PA, AP, LATERAL, LL, RL, or UNKNOWN when a DICOM header leaves it empty")
    priority: Literal["stat", "urgent", "routine"] = Field(
        "routine",
        description="The sidecar's priority, or DICOM's Requested Procedure Priority (0040,1003) mapped by shared/priority.py",
    )
    execution_id: str
    completed_at: datetime
    end_to_end_ms: float | None = Field(
        None,
        description=(
            "From the workflow execution's start to this result being assembled (completed_at), in milliseconds: "
            "validate, prepare, the models and the store stage with their retries. Excludes the time before the "
            "workflow started (upload and event delivery) and the telemetry stage after the result."
        ),
    )
    models: dict[str, ModelRef]
    findings: list[Finding]
    detections: list[Detection]
    report: DraftReport | None
    timings_ms: dict[str, float]
    critical_findings: list[FiredRule] | None = Field(
        None,
        description=(
            "The critical-finding rules that fire for this result, written by NotifyCriticalFindings after StoreResults "
            "(the file replaced atomically, everything before this field unchanged); [] when none fires; null when the "
            "rules have not been evaluated (the notify stage has not run, or failed before them). Delivery, ACKs and "
            "acknowledgements change over time and live in notifications.json, found by message_id."
        ),
    )


class NotificationChannel(Contract):
    """One way a critical-finding notification goes out: hl7 (ORU^R01 over MLLP) or event ("Critical Finding")."""

    status: Literal["pending", "delivered", "dead_letter", "not_configured"] = "pending"
    attempts: int = 0
    # The error's name and our own message (never a patient value); the ACK code (MSA-1) of the RIS: AA, AE or AR.
    last_error: str | None = None
    delivered_at: datetime | None = None
    ack: str | None = None


class NotificationEvent(Contract):
    """One line of a notification's trail: appended, never rewritten or deleted (the audit of who saw what when)."""

    at: datetime
    what: Literal["fired", "delivered", "failed", "dead_letter", "replayed", "acknowledged"]
    channel: str | None = None
    by: str | None = None
    note: str | None = None


class CriticalNotification(Contract):
    rule: str
    label: str
    probability: float
    threshold: float
    priority: Literal["stat", "urgent", "routine"]
    message_id: str = Field(description="MSH-10 and the event's id: from the study and the execution that first fired the rule")
    execution_id: str
    fired_at: datetime
    channels: dict[str, NotificationChannel]
    in_fhir_bundle: bool = Field(False, description="a FHIR Communication for it goes in a DICOM study's bundle")
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    trail: list[NotificationEvent] = Field(default_factory=list)


def notifications_key(study_id: str) -> str:
    """Where a study's critical-finding notifications are recorded, in the results bucket (notify writes, export reads)."""
    return f"results/{study_id}/notifications.json"


class StudyNotifications(Contract):
    """results/<study_id>/notifications.json: the critical-finding rules that fired for a study, and each one's delivery."""

    schema_version: Literal["1"] = "1"
    study_id: str
    priority: Literal["stat", "urgent", "routine"] = "routine"
    arrived_at: datetime | None = Field(None, description="the upload's time (the workflow's uploaded_at)")
    result_at: datetime | None = Field(None, description="the result's completed_at")
    notifications: list[CriticalNotification] = Field(default_factory=list)


class FailureRecord(Contract):
    """failed/<study_id>/error.json: enough for a person to act, and nothing from the image or the patient."""

    schema_version: Literal["1"] = "1"
    study_id: str
    status: Literal["failed"] = "failed"
    stage: FailureStage
    error_type: str
    message: str
    input: ObjectRef
    execution_id: str
    failed_at: datetime
    # A re-run that failed supersedes the study's earlier result (the latest run is what the study says, as the
    # named queries count it); that result is moved here, never deleted.
    superseded_result: ObjectRef | None = None


class ExportStatus(Contract):
    """results/<study_id>/exports.json: what became of a DICOM study's exports (SR, overlay, FHIR bundle) and their
    delivery. The result is the study's record; this says whether its consequences reached the hospital, and if not
    why and what replays them (a dead letter for `radstream export --retry`). No patient value (docs/phi.md)."""

    schema_version: Literal["1"] = "1"
    study_id: str
    execution_id: str = Field(description="the run whose result these exports are of (result.json's execution_id)")
    status: Literal["built", "skipped", "delivered", "build_failed", "delivery_failed"] = Field(
        description=(
            "built: SR, overlay and FHIR bundle written, nothing sent (no destination configured); skipped: the source "
            "cannot be addressed (message says why); delivered: sent to every destination; build_failed / delivery_failed: "
            "dead-lettered, `radstream export --retry` builds and/or sends them again"
        )
    )
    updated_at: datetime
    exports: list[ObjectRef] = []
    destinations: list[str] = []
    error_type: str | None = None
    message: str | None = Field(None, description="the reason a person can act on (never a patient value)")
    dead_letter: ObjectRef | None = None


CONTRACTS: dict[str, type[Contract]] = {
    "result": StudyResult,
    "failure": FailureRecord,
    "telemetry": TelemetryRecord,
    "exports": ExportStatus,
    "notifications": StudyNotifications,
}


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.v1.schema.json"


def generated_schema(name: str) -> str:
    return json.dumps(CONTRACTS[name].model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    for contract_name in CONTRACTS:
        schema_path(contract_name).write_text(generated_schema(contract_name))
        print(f"wrote {schema_path(contract_name)}")
