"""A study's critical-finding notification record (results/<study_id>/notifications.json): read, written, acknowledged.

The notify service writes it (services/notify); the export stage reads it for the FHIR bundle; the console reads it
and appends acknowledgements. An acknowledgement adds to the trail and never removes or rewrites an entry.
"""

from __future__ import annotations

from datetime import datetime, UTC

from shared.contracts import CriticalNotification, NotificationEvent, StudyNotifications, notifications_key
from shared.errors import NotificationRejected, ObjectNotFound
from shared.storage import ObjectStore


def load(store: ObjectStore, bucket: str, study_id: str) -> StudyNotifications | None:
    try:
        return StudyNotifications.model_validate_json(store.get_bytes(bucket, notifications_key(study_id)))
    except ObjectNotFound:
        return None


def save(store: ObjectStore, bucket: str, record: StudyNotifications) -> None:
    """Written whole, atomically and fsynced by the store (a promised file)."""
    store.put_bytes(bucket, notifications_key(record.study_id), record.model_dump_json(indent=2).encode(), content_type="application/json")


def acknowledge(store: ObjectStore, bucket: str, study_id: str, rule: str, by: str) -> CriticalNotification:
    """A person saw the notification: who and when, appended to its trail (the first acknowledgement also sets
    acknowledged_by/at); nothing is ever removed."""
    who = by.strip()[:64]
    if not who:
        raise NotificationRejected("an acknowledgement names who acknowledges")
    record = load(store, bucket, study_id)
    match = next((n for n in record.notifications if n.rule == rule), None) if record else None
    if record is None or match is None:
        raise ObjectNotFound(f"no notification for rule {rule!r}", study_id=study_id)
    now = datetime.now(UTC)
    if match.acknowledged_at is None:
        match.acknowledged_by, match.acknowledged_at = who, now
    match.trail.append(NotificationEvent(at=now, what="acknowledged", by=who))
    save(store, bucket, record)
    return match
