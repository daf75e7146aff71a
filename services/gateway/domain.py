"""Gateway domain: what a received DICOM instance must be, its pseudonymous study id, and where it is stored.

Knows nothing of DIMSE or HTTP: the DIMSE SCP (services/gateway/dimse.py) and the STOW-RS endpoint
(services/gateway/stow.py) both hand an encoded instance (a DICOM file, preamble and file meta included)
to `Receiver.receive`, which checks it, stores it under incoming/<study_id>/<instance>.dcm and answers
with the stored key, or raises `Refused` carrying the DIMSE status and a reason that names an attribute,
never a value (docs/phi.md). The object store's PUT returning is the durability point: only then does a
C-STORE get its success status.

Study ids (docs/gateway.md): one instance is one study for the pipeline (the workflow's rule starts one
run per .dcm, and results are keyed by study id), so the id is HMAC-SHA256(key, StudyInstanceUID) and
HMAC-SHA256(key, SOPInstanceUID), truncated, joined by a dot: the instances of one DICOM study share the
prefix, a re-sent instance maps to the same key, and no UID can be read back without the key.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

from shared import acceptance
from shared.acceptance import text as _text
from shared.errors import ConfigurationError, RadStreamError
from shared.messages import INCOMING
from shared.storage import ObjectStore

log = logging.getLogger("radstream.gateway")

# The storage SOP classes and the rule are the pipeline's (shared.acceptance): the gateway never acknowledges what validate refuses.
ACCEPTED_SOP_CLASSES = acceptance.ACCEPTED_SOP_CLASSES

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C.4.2.1.4): what each refusal tells the sending modality.
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported (also refused at association negotiation)
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources - the store is unavailable; the sender should retry later
DATASET_DOES_NOT_MATCH = 0xA900  # Error: Data Set does not match SOP Class (a required attribute is missing)
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand - a valid instance this service does not process (not a chest)
PSEUDONYM_HEX = 20  # 80 bits of each HMAC: collisions are out of reach for any archive's number of studies


class Refused(Exception):
    """An instance the gateway does not store: a DIMSE status and a reason that names no value."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Received:
    study_id: str
    key: str
    size: int
    transfer_syntax: str


def pseudonym(key: bytes, uid: str) -> str:
    return hmac.new(key, uid.encode("ascii", "replace"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def study_id_for(key: bytes, study_uid: str, sop_instance_uid: str) -> tuple[str, str]:
    """(study id, instance name): pseudonyms of the StudyInstanceUID and SOPInstanceUID under the gateway's key."""
    instance = pseudonym(key, sop_instance_uid)
    return f"{pseudonym(key, study_uid)}.{instance}", instance


def pseudonym_key(value: str | None) -> bytes:
    if not value:
        raise ConfigurationError("GATEWAY_PSEUDONYM_KEY must be set: the gateway derives study ids from DICOM UIDs with it (HMAC-SHA256)")
    return value.encode()


HEADER_TAGS = ["SOPInstanceUID", "StudyInstanceUID", *acceptance.HEADER_KEYWORDS]


class Receiver:
    """Checks and stores received instances; `on_stored(key)` runs after each durable store (locally: the pipeline)."""

    def __init__(self, store: ObjectStore, images_bucket: str, key: bytes, on_stored: Callable[[Received], None] | None = None) -> None:
        self.store = store
        self.images_bucket = images_bucket
        self.key = key
        self.on_stored = on_stored

    def check(self, data: bytes, sop_class_uid: str | None = None) -> tuple[str, str]:
        """The instance's (study id, instance name), or Refused. `sop_class_uid`: the one the DIMSE request announced."""
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except (InvalidDicomError, OSError, ValueError, KeyError, AttributeError) as e:
            raise Refused(CANNOT_UNDERSTAND, f"the instance cannot be parsed as DICOM ({type(e).__name__})") from e
        try:
            acceptance.accept(ds, sop_class_uid)
        except acceptance.NotAccepted as e:
            status = SOP_CLASS_NOT_SUPPORTED if e.by == "sop_class" else CANNOT_UNDERSTAND if e.attribute == "BodyPartExamined" else DATASET_DOES_NOT_MATCH
            raise Refused(status, e.reason) from e
        missing = [tag for tag in ("StudyInstanceUID", "SOPInstanceUID") if not _text(ds, tag)]
        if missing:
            raise Refused(DATASET_DOES_NOT_MATCH, f"required attribute(s) missing: {', '.join(missing)}")
        return study_id_for(self.key, _text(ds, "StudyInstanceUID"), _text(ds, "SOPInstanceUID"))

    def receive(self, data: bytes, *, sop_class_uid: str | None = None, transfer_syntax: str = "", source: str = "") -> Received:
        """Check, then store; returns only after the object store's PUT returned (the durability point)."""
        study_id, instance = self.check(data, sop_class_uid)
        key = f"{INCOMING}{study_id}/{instance}.dcm"
        try:
            stored = self.store.put_bytes(self.images_bucket, key, data, content_type="application/dicom")
        except RadStreamError as e:
            log.warning("instance not stored: %s (%s) from %s", e.error_name, "retryable" if e.retryable else "permanent", source)
            raise Refused(OUT_OF_RESOURCES, "the images bucket is unavailable; send again later") from e
        received = Received(study_id, stored.key, stored.size, transfer_syntax)
        log.info("instance stored study_id=%s bytes=%d transfer_syntax=%s from %s", study_id, stored.size, transfer_syntax, source)
        if self.on_stored is not None:
            try:
                self.on_stored(received)
            except Exception as e:  # noqa: BLE001 - the instance is stored: its status stays success; the run can be resumed
                log.error("stored instance not handed on study_id=%s error_type=%s", study_id, type(e).__name__)
        return received
