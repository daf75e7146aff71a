"""Store stage: assemble the study's result (or its failure record) and write it, idempotently.

Inputs: the workflow state: the validated study, the prepared tensors, the three model outputs, the
execution's start time; for a DICOM study, the DICOM identifiers read here from the upload's header (the
only stage that reads them, so they never enter the workflow state: docs/phi.md).
Outputs: results/<study_id>/result.json and report.txt in the results bucket, the draft report's impression
picked among the encoder's candidates consistently with the findings; or, on the failure
path, failed/<study_id>/error.json and a "Study Failed" event. Writing the same study again replaces the object under the same
key, so a retried or re-run study leaves exactly one result.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, UTC
from typing import Any

from shared import priority
from shared.lake_tables import MODEL_OUTPUTS, model_output_rows, put_rows, study_inputs
from shared.contracts import (
    QUALITY_FLAGS,
    Detection,
    DraftReport,
    FailureRecord,
    Finding,
    InputDigest,
    ObjectRef,
    ReportSentence,
    StudyIdentifiers,
    Stage,
    StudyResult,
)
from shared.errors import InvalidImage, ObjectNotFound, PermanentError, caught_error
from shared.events import STUDY_FAILED, EventPublisher
from shared.messages import (
    CandidateSentence,
    FailureRequest,
    ModelOutput,
    RecordedFailure,
    StoredResult,
    StoreRequest,
    StudyImage,
    study_id_from_key,
)
from shared.observability import telemetry_record
from shared.storage import ObjectStore, durable_together, get_validated_bytes

# The workflow state keys each stage writes (ResultPath in template.yaml), in pipeline order, up to the result: after
# StoreResults nothing reaches RecordFailure (an export that fails is dead-lettered, the result stands).
STAGE_KEYS: tuple[tuple[Stage, str], ...] = (("validate", "study"), ("prepare", "tensors"), ("inference", "inference"), ("store", "stored"))
# How many sentences the draft report's impression holds.
REPORT_SENTENCES = 3
# The DICOM attributes downstream systems key on (identifiers only; the patient module is never read).
IDENTIFIER_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber")


def select_impression(
    candidates: list[CandidateSentence], findings: list[Finding], detections: list[Detection], decided: set[str], n: int = REPORT_SENTENCES
) -> list[ReportSentence]:
    """The n most similar candidates that agree with the models' decisions.

    A sentence is kept only if every label it asserts is positive (a classifier finding over its threshold,
    or a lesion the detector boxed) and every label it negates is not, and the models decide on every label
    it names (`decided`; an undecided label cannot be vouched for). Among sentences asserting the same label
    only the most similar is kept ("Small right pleural effusion." and "Bilateral pleural effusions." cannot
    both be true).
    """
    positive = {f.label for f in findings if f.positive} | {d.label for d in detections}
    chosen: list[ReportSentence] = []
    asserted: set[str] = set()
    for c in candidates:
        named = set(c.asserts) | set(c.negates)
        if not named <= decided or not set(c.asserts) <= positive or set(c.negates) & positive or set(c.asserts) & asserted:
            continue
        asserted |= set(c.asserts)
        chosen.append(ReportSentence(text=c.text, similarity=c.similarity))
        if len(chosen) == n:
            break
    return chosen


def dicom_identifiers(store: ObjectStore, image: StudyImage, study_id: str) -> StudyIdentifiers:
    """The identifier attributes of the uploaded DICOM, read from the images bucket (never from the workflow state).

    The bytes must still be the ones validate checked (same sha256): an object replaced since is refused.
    Error messages name the attribute or the problem, never a value.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    data = get_validated_bytes(store, image.bucket, image.key, image.sha256, study_id)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=list(IDENTIFIER_TAGS))
        return StudyIdentifiers(**{tag: _raw_text(ds, tag) for tag in IDENTIFIER_TAGS})
    except (InvalidDicomError, OSError, ValueError, UnicodeDecodeError) as e:
        raise InvalidImage(f"DICOM header cannot be read ({type(e).__name__})", study_id=study_id) from e


def _raw_text(ds: Any, keyword: str) -> str | None:
    """An attribute's text as stored, without pydicom's value conversion: converting validates, and pydicom's
    validation warnings quote the value ("Invalid value for VR UI: '...'") into logs that must not hold it."""
    from pydicom.datadict import tag_for_keyword

    element = ds.get_item(tag_for_keyword(keyword))
    if element is None or element.value is None:
        return None
    value = element.value
    text = value.decode("iso8859-1") if isinstance(value, bytes) else str(value)  # UI and SH: ASCII in practice
    return text.strip(" \x00") or None


def end_to_end_ms(started_at: datetime | None, completed_at: datetime) -> float | None:
    if started_at is None:
        return None
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=UTC)
    return round((completed_at - started_at).total_seconds() * 1000, 1)


def findings_text(findings: list[Finding]) -> str:
    positive = [f.label for f in findings if f.positive]
    if not positive:
        return "No finding above its threshold among " + ", ".join(f.label for f in findings) + "."
    return "Suggested findings: " + ", ".join(positive) + "."


def stage_timings(state_parts: dict[str, Any]) -> dict[str, float]:
    timings: dict[str, float] = {}
    for name, part in state_parts.items():
        for item in part if isinstance(part, list) else [part]:
            if isinstance(item, dict) and "shadow" in item:  # a shadow candidate's time is not the study's
                continue
            record = item.get("telemetry") if isinstance(item, dict) else None
            if record and record.get("duration_ms") is not None:
                label = name if not record.get("model_name") else f"{name}.{record['model_name']}"
                timings[label] = record["duration_ms"]
    return timings


def build_result(request: StoreRequest, raw_state: dict[str, Any], store: ObjectStore) -> StudyResult:
    study_id = request.study.study_id
    by_kind: dict[str, ModelOutput] = {}
    for output in request.inference:
        if output.kind in by_kind:
            raise PermanentError(f"two {output.kind} outputs for one study", study_id=study_id)
        by_kind[output.kind] = output
    missing = {"classifier", "detector", "encoder"} - set(by_kind)
    if missing:
        raise PermanentError(f"model outputs missing for: {', '.join(sorted(missing))}", study_id=study_id)
    classifier, detector, encoder = by_kind["classifier"], by_kind["detector"], by_kind["encoder"]
    if encoder.model is None:
        raise PermanentError("the report encoder's output names no model version", study_id=study_id)
    findings = classifier.findings or []
    detections = detector.detections or []
    decided = {f.label for f in findings} | set(detector.labels or []) | {d.label for d in detections}
    impression = select_impression(encoder.candidates or [], findings, detections, decided)
    image = request.study.image
    identifiers = dicom_identifiers(store, image, study_id) if image.format == "dicom" else None
    completed_at = datetime.now(UTC)
    return StudyResult(
        study_id=study_id,
        input=InputDigest(
            image=ObjectRef(bucket=image.bucket, key=image.key),
            sha256=image.sha256,
            size_bytes=image.size_bytes,
            width=request.tensors.original.width,
            height=request.tensors.original.height,
            intensity_rule=request.tensors.original.intensity_rule,
            quality_flags=request.tensors.original.quality_flags,
        ),
        identifiers=identifiers,
        modality=request.study.modality,
        view_position=request.study.view_position,
        priority=priority.from_sidecar(request.study.priority),
        execution_id=request.execution_id,
        completed_at=completed_at,
        end_to_end_ms=end_to_end_ms(request.started_at, completed_at),
        models={o.model.name: o.model for o in request.inference if o.model},
        findings=findings,
        detections=detections,
        report=DraftReport(findings_text=findings_text(findings), impression=impression, embedding_model=encoder.model),
        timings_ms=stage_timings(raw_state),
        critical_findings=None,  # not evaluated yet: NotifyCriticalFindings fills it (docs/triage.md)
    )


def report_text(result: StudyResult) -> str:
    report = result.report
    lines = [f"RadStream draft report for study {result.study_id}"]
    if report is not None:
        lines += [report.label.upper(), "", report.findings_text]
    if result.detections:
        lines.append("Localized findings: " + "; ".join(f"{d.label} ({d.score:.2f}) at {list(d.box)}" for d in result.detections))
    if report is not None:
        lines += ["", "Impression (retrieved):"] + [f"- {s.text}" for s in report.impression]
    if result.input.quality_flags:  # the reader is told what looks wrong with the input; the findings are as computed
        lines += ["", "Input quality flags (findings unchanged):"] + [
            f"- {flag}: {QUALITY_FLAGS[flag]}" for flag in result.input.quality_flags
        ]
    lines += ["", "Models: " + ", ".join(f"{m.name} v{m.version} ({m.provenance})" for m in result.models.values())]
    return "\n".join(lines) + "\n"


def live_output_rows(request: StoreRequest, raw_state: dict[str, Any], completed_at: datetime) -> list[dict[str, Any]]:
    """The lake's model_outputs rows of the live models (role=live): what the shadow candidates are compared with."""
    latency: dict[str, float] = {}
    for item in raw_state.get("inference") or []:
        record = item.get("telemetry") if isinstance(item, dict) else None
        if record and record.get("model_name") and record.get("duration_ms") is not None:
            latency[record["model_name"]] = record["duration_ms"]
    rows: list[dict[str, Any]] = []
    inputs = study_inputs(request.study, request.tensors.original)
    for output in request.inference:
        name = output.model.name if output.model else ""
        rows += model_output_rows(
            output, role="live", execution_id=request.execution_id, time=completed_at, latency_ms=latency.get(name), inputs=inputs
        )
    return rows


def store_result(
    request: StoreRequest, raw_state: dict[str, Any], store: ObjectStore, results_bucket: str, lake_bucket: str | None = None
) -> StoredResult:
    result = build_result(request, raw_state, store)
    body = result.model_dump_json(indent=2).encode()
    with durable_together():  # one folder, one fsync: both durable before anything below
        stored = store.put_bytes(results_bucket, f"results/{result.study_id}/result.json", body, content_type="application/json")
        report = store.put_bytes(
            results_bucket, f"results/{result.study_id}/report.txt", report_text(result).encode(), content_type="text/plain"
        )
    # One study, one record: an earlier run's failure (an outage since over, a fixed setting) goes once the result is safe.
    store.delete(results_bucket, f"failed/{result.study_id}/error.json")
    if lake_bucket:  # after the result: the lake never holds a live answer the study's record does not
        rows = live_output_rows(request, raw_state, result.completed_at)
        put_rows(store, lake_bucket, MODEL_OUTPUTS, "live", result.completed_at, result.study_id, request.execution_id, rows)
    return StoredResult(
        study_id=result.study_id,
        result=ObjectRef(bucket=results_bucket, key=stored.key),
        positive_findings=[f.label for f in result.findings if f.positive],
        bytes_out=stored.size + report.size,
        priority=result.priority,
        since_arrival_ms=end_to_end_ms(request.uploaded_at, result.completed_at),
    )


def failed_stage(state: dict[str, Any]) -> Stage:
    """The first stage whose output is not in the state is the one that failed (derived, not recorded)."""
    for stage, key in STAGE_KEYS:
        if key not in state:
            return stage
    return "store"


def failure_message(error: dict[str, Any], stage: str, execution_id: str) -> tuple[str, str]:
    error_type, message = caught_error(error)
    # Anything not ours is unexpected: its message may carry data we cannot vouch for, so it stays in the logs.
    return error_type, message or f"unexpected {error_type} in the {stage} stage; see the logs of execution {execution_id}"


def record_failure(request: FailureRequest, store: ObjectStore, results_bucket: str, events: EventPublisher) -> RecordedFailure:
    state = request.state
    study_id = (state.get("study") or {}).get("study_id") or study_id_from_key(request.key)
    stage = failed_stage(state)
    error_type, message = failure_message(state.get("error") or {}, stage, request.execution_id)
    record = FailureRecord(
        study_id=study_id,
        stage=stage,
        error_type=error_type,
        message=message,
        input=ObjectRef(bucket=request.bucket, key=request.key),
        execution_id=request.execution_id,
        failed_at=datetime.now(UTC),
    )
    record.superseded_result = _supersede_result(store, results_bucket, study_id, request.execution_id)
    key = f"failed/{study_id}/error.json"
    repeated = _same_failure(store, results_bucket, key, record)
    stored = store.put_bytes(results_bucket, key, record.model_dump_json(indent=2).encode(), content_type="application/json")
    # After the record is safe, and once per failure: a retried RecordFailure or a re-run that fails the same way
    # (same input, stage and error) rewrites the record but does not page anyone twice.
    if not repeated:
        events.publish(
            STUDY_FAILED,
            record.model_dump(mode="json")
            | {
                "failure": {"bucket": results_bucket, "key": stored.key},
                "event_id": failure_event_id(record),
            },
        )
    # Telemetry: what the stages before the failure reported, plus a record for the failed stage.
    records = [
        item["telemetry"] for _, key in STAGE_KEYS for item in _as_list(state.get(key)) if isinstance(item, dict) and item.get("telemetry")
    ]
    records.append(
        telemetry_record(
            stage=stage,
            study_id=study_id,
            execution_id=request.execution_id,
            status="failed",
            duration_ms=None,
            error_type=error_type,
        ).model_dump(mode="json")
    )
    return RecordedFailure(
        study_id=study_id,
        failure=ObjectRef(bucket=results_bucket, key=stored.key),
        error_type=error_type,
        message=message,
        stage=stage,
        records=records,
        bytes_out=stored.size,
    )


def _supersede_result(store: ObjectStore, bucket: str, study_id: str, execution_id: str) -> ObjectRef | None:
    """One study, one record: a failed re-run moves the earlier result aside (copy, then delete) before its failure record lands.

    Kept under superseded/<study_id>/<execution name>/, named in the failure record, so nothing is lost; a later
    success (resume) writes a new result and removes the failure record.
    """
    result_key = f"results/{study_id}/result.json"
    if store.head(bucket, result_key) is None:
        return None
    folder = f"superseded/{study_id}/{execution_id.rsplit(':', 1)[-1]}/"
    for name in ("result.json", "report.txt"):
        key = f"results/{study_id}/{name}"
        if store.head(bucket, key) is not None:
            store.put_bytes(bucket, folder + name, store.get_bytes(bucket, key))
    for name in ("report.txt", "result.json"):
        store.delete(bucket, f"results/{study_id}/{name}")
    return ObjectRef(bucket=bucket, key=folder + "result.json")


def failure_event_id(record: FailureRecord) -> str:
    """The same failure of the same input always has the same id, so a consumer can drop a repeat."""
    return hashlib.sha256("|".join((record.study_id, record.input.key, record.stage, record.error_type)).encode()).hexdigest()[:32]


def _same_failure(store: ObjectStore, bucket: str, key: str, record: FailureRecord) -> bool:
    try:
        earlier = json.loads(store.get_bytes(bucket, key))
    except ObjectNotFound:
        return False
    except ValueError:
        return False  # an unreadable earlier record is replaced, and this failure announced
    return (earlier.get("stage"), earlier.get("error_type"), earlier.get("input", {}).get("key")) == (
        record.stage,
        record.error_type,
        record.input.key,
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]
