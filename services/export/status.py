"""The study's export status, results/<study_id>/exports.json (shared.contracts.ExportStatus): one object per study,
rewritten by each step that changes it (ExportResults, DeliverResults, the dead letters, `radstream export --retry`),
so writing it again is idempotent. The console and `radstream export` read it; the result itself is never touched."""

from __future__ import annotations

from datetime import datetime, UTC
from typing import Any

from shared.contracts import ExportStatus, ObjectRef
from shared.errors import ObjectNotFound
from shared.storage import ObjectStore


def status_key(study_id: str) -> str:
    return f"results/{study_id}/exports.json"


def write_status(store: ObjectStore, bucket: str, study_id: str, execution_id: str, status: str, **fields: Any) -> ObjectRef:
    record = ExportStatus.model_validate(
        {"study_id": study_id, "execution_id": execution_id, "status": status, "updated_at": datetime.now(UTC), **fields}
    )
    stored = store.put_bytes(
        bucket, status_key(study_id), record.model_dump_json(indent=2, exclude_none=True).encode(), content_type="application/json"
    )
    return ObjectRef(bucket=bucket, key=stored.key)


def read_status(store: ObjectStore, bucket: str, study_id: str) -> ExportStatus | None:
    try:
        return ExportStatus.model_validate_json(store.get_bytes(bucket, status_key(study_id)))
    except ObjectNotFound:
        return None
