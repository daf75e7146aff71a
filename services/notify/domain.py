"""NotifyCriticalFindings: after StoreResults, the critical-finding rules over the study's result; each rule that fires
is recorded (results/<study_id>/notifications.json, before anything is sent), then sent: an HL7 ORU^R01 over MLLP to
the RIS and a "Critical Finding" event. Inputs: the validated study and the stored result. Output: the rules that
fired, what was delivered, what is a dead letter.

Once per study and rule: the record is written first and names the message id (from the study and the execution
that first fired the rule); a channel marked delivered is never sent again, by a retry, a re-run of the study or a
replay; one sent but not yet marked (the notifier killed between the RIS's ACK and the record) is sent again with
the same MSH-10, which the RIS drops as a repeat.
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, UTC
from typing import Any

from services.notify import hl7
from services.notify.rules import Rule, fired, load_rules
from shared.contracts import (
    ObjectRef,
    CriticalNotification,
    Finding,
    FiredRule,
    NotificationChannel,
    NotificationEvent,
    StudyNotifications,
    StudyResult,
)
from shared.errors import RadStreamError, caught_error
from shared.events import EventPublisher
from shared.messages import NotifiedResult, NotifyRequest, StudyImage, ValidatedStudy
from shared.priority import from_sidecar
from shared import notifications
from shared.settings import Settings
from shared.sidecar import parse_sidecar_bytes
from shared.storage import ObjectStore

CRITICAL_FINDING = "Critical Finding"


def message_id(study_id: str, execution_id: str, rule: str) -> str:
    """MSH-10 (at most 20 characters in v2.5.1): a digest of the study, the execution and the rule."""
    return hashlib.sha256(f"{study_id}\n{execution_id}\n{rule}".encode()).hexdigest()[:20].upper()


load_ledger, save_ledger = notifications.load, notifications.save


def _fire(
    rule: Rule, threshold: float, probability: float, result: StudyResult, execution_id: str, settings: Settings
) -> CriticalNotification:
    now = datetime.now(UTC)
    channels = {}
    for channel in rule.send:
        if channel == "hl7":
            channels["hl7"] = NotificationChannel(status="pending" if settings.notify_mllp_peer else "not_configured")
        elif channel == "event":
            channels["event"] = NotificationChannel()
    return CriticalNotification(
        rule=rule.name,
        label=rule.label,
        probability=probability,
        threshold=threshold,
        priority=result.priority,
        message_id=message_id(result.study_id, execution_id, rule.name),
        execution_id=execution_id,
        fired_at=now,
        channels=channels,
        in_fhir_bundle="fhir" in rule.send,
        trail=[NotificationEvent(at=now, what="fired", note=f"{rule.label} {probability:.3f} >= {threshold:.3f}")],
    )


def notify(request: NotifyRequest, store: ObjectStore, events: EventPublisher, settings: Settings) -> NotifiedResult:
    study_id, bucket = request.study.study_id, settings.results_bucket
    result = StudyResult.model_validate_json(store.get_bytes(request.stored.result.bucket, request.stored.result.key))
    ledger = load_ledger(store, bucket, study_id) or StudyNotifications(
        study_id=study_id, priority=from_sidecar(result.priority), arrived_at=request.uploaded_at, result_at=result.completed_at
    )
    known = {n.rule for n in ledger.notifications}
    firing = fired(load_rules(settings.notify_rules), result.findings, result.priority)
    new = [
        _fire(rule, threshold, finding.probability, result, request.execution_id, settings)
        for rule, finding, threshold in firing
        if rule.name not in known
    ]
    if new:
        ledger.notifications.extend(new)
        save_ledger(store, bucket, ledger)  # the intent, fsynced, before anything goes out
    record_in_result(result, firing, ledger, store, request.stored.result)
    if request.error is not None:
        return dead_letter(ledger, request.error, store, bucket)
    return deliver(ledger, result, request.study, store, events, settings)


def record_in_result(
    result: StudyResult, firing: list[tuple[Rule, Finding, float]], ledger: StudyNotifications, store: ObjectStore, ref: ObjectRef
) -> None:
    """The study's result says which rules fire for it (`critical_findings`), each naming its notification's message id.

    result.json is the study's record and the exports are built from it, so the fact lands there: the file is written
    whole again (atomically, fsynced: the store's put), with every field StoreResults wrote unchanged and the section
    that was null filled. Written after the record of intent (notifications.json) and before anything is sent; skipped
    when it already says so (a retry, a replay)."""
    notifications = {n.rule: n for n in ledger.notifications}
    section = [
        FiredRule(
            rule=rule.name,
            label=rule.label,
            probability=finding.probability,
            threshold=threshold,
            message_id=notifications[rule.name].message_id,
            fired_at=notifications[rule.name].fired_at,
        )
        for rule, finding, threshold in firing
    ]
    if result.critical_findings == section:
        return
    result.critical_findings = section
    store.put_bytes(ref.bucket, ref.key, result.model_dump_json(indent=2).encode(), content_type="application/json")


def deliver(
    ledger: StudyNotifications, result: StudyResult, study: ValidatedStudy, store: ObjectStore, events: EventPublisher, settings: Settings
) -> NotifiedResult:
    """Send every pending channel of every notification; the record is saved after each. The first failure is raised
    once the others have had their turn (the workflow's Retry sends only what is still pending)."""
    bucket = settings.results_bucket
    delivered: list[str] = []
    first_delivery: datetime | None = None
    failure: RadStreamError | None = None
    patient: hl7.Patient | None = None
    for notification in ledger.notifications:
        for name, channel in notification.channels.items():
            if channel.status not in ("pending", "dead_letter"):
                continue
            channel.attempts += 1
            try:
                if name == "event":
                    events.publish(CRITICAL_FINDING, event_detail(ledger, notification))
                    channel.ack = None
                else:
                    patient = patient or source_patient(study, store)
                    classifier = result.models.get("chest_xray_classifier")
                    er7 = hl7.build_oru(ledger.study_id, notification, result.findings, classifier, patient, datetime.now(UTC))
                    channel.ack = hl7.send(str(settings.notify_mllp_peer), er7, notification.message_id, settings.notify_timeout_s)
            except RadStreamError as e:  # NotificationUnavailable, NotificationRejected, StorageUnavailable (the bus)…
                channel.last_error = f"{type(e).__name__}: {e}"
                notification.trail.append(NotificationEvent(at=datetime.now(UTC), what="failed", channel=name, note=type(e).__name__))
                failure = failure or e
            else:
                channel.status, channel.delivered_at, channel.last_error = "delivered", datetime.now(UTC), None
                notification.trail.append(NotificationEvent(at=channel.delivered_at, what="delivered", channel=name, note=channel.ack))
                delivered.append(f"{name}:{notification.rule}")
                first_delivery = first_delivery or channel.delivered_at
            save_ledger(store, bucket, ledger)
    if failure is not None:
        raise failure
    since = (first_delivery - ledger.arrived_at).total_seconds() * 1000 if first_delivery and ledger.arrived_at else None
    return NotifiedResult(
        study_id=ledger.study_id,
        fired=[n.rule for n in ledger.notifications],
        delivered=delivered,
        bytes_out=len(delivered),
        priority=ledger.priority,
        since_arrival_ms=round(since, 1) if since is not None else None,
    )


def dead_letter(ledger: StudyNotifications, error: dict[str, Any], store: ObjectStore, bucket: str) -> NotifiedResult:
    """Delivery failed for good (the workflow's Catch): every channel still pending becomes a dead letter, with why."""
    error_type, message = caught_error(error)
    dead = []
    for notification in ledger.notifications:
        for name, channel in notification.channels.items():
            if channel.status == "pending":
                channel.status = "dead_letter"
                channel.last_error = f"{error_type}: {message}" if message else error_type
                notification.trail.append(NotificationEvent(at=datetime.now(UTC), what="dead_letter", channel=name, note=error_type))
                dead.append(notification.rule)
    save_ledger(store, bucket, ledger)
    return NotifiedResult(study_id=ledger.study_id, fired=[n.rule for n in ledger.notifications], dead_letters=sorted(set(dead)))


def event_detail(ledger: StudyNotifications, notification: CriticalNotification) -> dict[str, Any]:
    """The "Critical Finding" event: ids, the finding and the priority; nothing that identifies a patient."""
    return {
        "study_id": ledger.study_id,
        "message_id": notification.message_id,
        "execution_id": notification.execution_id,
        "rule": notification.rule,
        "label": notification.label,
        "probability": round(notification.probability, 4),
        "threshold": round(notification.threshold, 4),
        "priority": notification.priority,
    }


def source_patient(study: ValidatedStudy, store: ObjectStore) -> hl7.Patient:
    """PID-3 and OBR-18 from the source: a DICOM file's PatientID and AccessionNumber (read here, sent only to the RIS,
    written nowhere: docs/phi.md), or the sidecar's pseudonymous id."""
    if study.image.format == "dicom":
        import pydicom

        data = store.get_bytes(study.image.bucket, study.image.key)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["PatientID", "AccessionNumber", "IssuerOfPatientID"])
        return hl7.Patient(
            str(ds.get("PatientID") or "") or None,
            str(ds.get("AccessionNumber") or "") or None,
            str(ds.get("IssuerOfPatientID") or "") or "HOSPITAL",
        )
    sidecar = parse_sidecar_bytes(store.get_bytes(study.metadata.bucket, study.metadata.key))
    patient = sidecar.get("patient") if isinstance(sidecar, dict) else None
    pseudo = patient.get("pseudo_id") if isinstance(patient, dict) else None
    return hl7.Patient(str(pseudo) if pseudo else None, None, "RADSTREAM")


def pending_ledgers(store: ObjectStore, bucket: str) -> list[StudyNotifications]:
    """Every study's record with a channel not yet delivered (pending after a kill, or a dead letter): what replay sends."""
    return [ledger for key in ledger_keys(store, bucket) if (ledger := pending_ledger(store, bucket, key)) is not None]


def ledger_keys(store: ObjectStore, bucket: str) -> list[str]:
    return [key for key in store.list_keys(bucket, "results/") if key.endswith("/notifications.json")]


def pending_ledger(store: ObjectStore, bucket: str, key: str) -> StudyNotifications | None:
    ledger = StudyNotifications.model_validate_json(store.get_bytes(bucket, key))
    return ledger if any(c.status in ("pending", "dead_letter") for n in ledger.notifications for c in n.channels.values()) else None


def study_of(result: StudyResult, store: ObjectStore, images_bucket: str) -> ValidatedStudy:
    """The part of the workflow state the ORU needs again, from the stored result: where the source and its metadata are."""
    image = result.input.image
    dicom = image.key.endswith(".dcm")
    metadata = (
        image.key
        if dicom
        else next((k for k in store.list_keys(images_bucket, f"incoming/{result.study_id}/") if k.endswith(".json")), image.key)
    )
    return ValidatedStudy(
        study_id=result.study_id,
        metadata=ObjectRef(bucket=image.bucket, key=metadata),
        image=StudyImage(
            bucket=image.bucket,
            key=image.key,
            format="dicom" if dicom else "png",
            sha256=result.input.sha256,
            size_bytes=result.input.size_bytes,
        ),
        view_position=result.view_position,
        modality=result.modality,
        priority=result.priority,
    )


def replay(store: ObjectStore, events: EventPublisher, settings: Settings) -> list[NotifiedResult]:
    """`radstream notify --replay` (and `resume`): send again what is pending (a notifier killed mid-delivery) or a dead
    letter. A failure stays a dead letter, with its new error, for the next replay."""
    out = []
    for key in ledger_keys(store, settings.results_bucket):
        study_id = key.split("/")[1]
        try:
            ledger = pending_ledger(store, settings.results_bucket, key)
            if ledger is None:
                continue
            result = StudyResult.model_validate_json(store.get_bytes(settings.results_bucket, f"results/{study_id}/result.json"))
            for notification in ledger.notifications:
                notification.trail.append(NotificationEvent(at=datetime.now(UTC), what="replayed"))
            try:
                out.append(deliver(ledger, result, study_of(result, store, settings.images_bucket), store, events, settings))
            except RadStreamError as e:
                for notification in ledger.notifications:
                    for channel in notification.channels.values():
                        if channel.status == "pending":
                            channel.status = "dead_letter"
                save_ledger(store, settings.results_bucket, ledger)
                out.append(NotifiedResult(study_id=study_id, fired=[n.rule for n in ledger.notifications], dead_letters=[type(e).__name__]))
        except RadStreamError as e:
            # The record could not be read or written back (a storage outage): it stays as it was, for the next replay;
            # one study's record never stops the others'.
            out.append(NotifiedResult(study_id=study_id, fired=[], dead_letters=[type(e).__name__]))
    return out
