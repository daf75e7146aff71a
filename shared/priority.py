"""A study's priority, one mapping: the sidecar's `priority`, DICOM's Requested Procedure Priority (0040,1003), and HL7's.

Everything that schedules or reports urgency (the runtime's queue, the gateway's, the workflow state, the result,
telemetry, the exports and the ORU's OBR-5) reads a priority through this module and nowhere else.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

if TYPE_CHECKING:
    from shared.storage import ObjectStore

Priority = Literal["stat", "urgent", "routine"]
PRIORITIES: tuple[Priority, ...] = ("stat", "urgent", "routine")  # most urgent first
DEFAULT: Priority = "routine"

# DICOM PS3.3 C.4.11 / C.4.10: Requested Procedure Priority (0040,1003) and Scheduled Procedure Step Priority
# (0040,0009... in MPPS) take STAT, HIGH, ROUTINE, MEDIUM, LOW. HIGH is what a modality worklist sends for "urgent".
_DICOM: dict[str, Priority] = {"STAT": "stat", "HIGH": "urgent", "ROUTINE": "routine", "MEDIUM": "routine", "LOW": "routine"}
# HL7 v2 table 0027 (OBR-5 / TQ1-9 priority): S = stat, A = ASAP, R = routine. ASAP is the RIS's word for urgent.
_HL7: dict[Priority, str] = {"stat": "S", "urgent": "A", "routine": "R"}


def rank(priority: str) -> int:
    """0 for stat, 1 urgent, 2 routine; an unknown value ranks as routine (the schema refuses it earlier)."""
    return PRIORITIES.index(priority) if priority in PRIORITIES else PRIORITIES.index(DEFAULT)


def from_sidecar(value: object) -> Priority:
    return value if isinstance(value, str) and value in PRIORITIES else DEFAULT


def from_dicom(value: object) -> Priority:
    """(0040,1003)'s code string, any case and padding; absent or unknown is routine."""
    return _DICOM.get(str(value or "").strip().upper(), DEFAULT)


def from_dimse(value: object) -> Priority:
    """A C-STORE request's Priority (0000,0700): 0x0001 HIGH is urgent; MEDIUM (0) and LOW (2) are routine. A modality's
    HIGH is never stat: only the order ((0040,1003) STAT) says stat."""
    return "urgent" if value == 1 else DEFAULT


def of_order(value: object) -> Priority | None:
    """(0040,1003) when the instance carries one (any value: unknown is routine), None when absent or empty: then the
    priority its sender asked for (`of_sender`) is the study's."""
    return from_dicom(value) if str(value or "").strip() else None


# The gateway records the priority an association asked for (C-STORE Priority HIGH) next to the instance it stores,
# incoming/<study_id>/<instance>.priority: neither .json nor .dcm, so it starts no workflow (the template's rule) and
# no scan of the uploads takes it for a study. Written only for a priority above routine (absent: routine).
SENDER_SUFFIX = ".priority"


def sender_key(instance_key: str) -> str:
    return instance_key.removesuffix(".dcm") + SENDER_SUFFIX


def record_sender(store: ObjectStore, bucket: str, instance_key: str, level: str) -> None:
    """Before the instance is stored (so the workflow its upload starts finds it); fsynced, as every object."""
    store.put_bytes(
        bucket, sender_key(instance_key), json.dumps({"priority": from_sidecar(level)}).encode(), content_type="application/json"
    )


def of_sender(store: ObjectStore, bucket: str, instance_key: str) -> Priority | None:
    """What the gateway recorded for the instance's sender, or None (none recorded: a routine association, a STOW-RS
    request, an upload that did not come through the gateway)."""
    from shared.errors import ObjectNotFound

    try:
        return of_sidecar_bytes(store.get_bytes(bucket, sender_key(instance_key)))
    except ObjectNotFound:
        return None


def most_urgent(*priorities: str) -> Priority:
    return PRIORITIES[min(rank(p) for p in priorities)] if priorities else DEFAULT


def to_dicom(priority: str) -> str:
    return {"stat": "STAT", "urgent": "HIGH"}.get(priority, "ROUTINE")


def to_hl7(priority: str) -> str:
    return _HL7.get(from_sidecar(priority), "R")


def to_triton(priority: str) -> int:
    """Triton's request priority (1 is served first): the model configs declare priority_levels 3 with routine's 3 as
    the default, so 0 (the default) for routine. A model without priority levels ignores it (Triton accepts it)."""
    return {"stat": 1, "urgent": 2}.get(priority, 0)


def to_fhir(priority: str) -> str:
    """FHIR request-priority: routine | urgent | asap | stat."""
    return from_sidecar(priority)


def of_dicom_bytes(data: bytes) -> Priority:
    """The priority a DICOM file's header carries (the tag only; see of_dicom_file)."""
    return of_dicom_file(io.BytesIO(data))


# Requested Procedure Priority (0040,1003): a data set's elements come in tag order, so the header is read up to it.
_PRIORITY_TAG = 0x00401003


def _past_priority(tag: Any, vr: str | None, length: int) -> bool:
    return int(tag) > _PRIORITY_TAG


def of_dicom_file(f: BinaryIO) -> Priority:
    """The priority a DICOM file carries, read from an open file up to (0040,1003) and no further: neither the rest of
    the header nor the pixel data is read (the scheduler reads it for every study before a run starts)."""
    from pydicom.filereader import read_partial
    from pydicom.tag import Tag

    try:
        ds = read_partial(f, stop_when=_past_priority, force=True, specific_tags=[Tag(_PRIORITY_TAG)])
        return from_dicom(ds.get("RequestedProcedurePriority"))
    except Exception:
        return DEFAULT  # unreadable here: validate names what is wrong; scheduling only needs an order


def of_sidecar_bytes(data: bytes) -> Priority:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return DEFAULT
    return from_sidecar(doc.get("priority")) if isinstance(doc, dict) else DEFAULT


def of_folder(folder: Path) -> Priority:
    """A study folder's priority, for the scheduler, before anything is uploaded (a sidecar, or one DICOM file)."""
    try:
        for sidecar in sorted(folder.glob("*.json")):
            return of_sidecar_bytes(sidecar.read_bytes())
        for dicom in sorted(folder.glob("*.dcm")):
            with dicom.open("rb") as f:
                return of_dicom_file(f)
    except OSError:
        pass
    return DEFAULT
