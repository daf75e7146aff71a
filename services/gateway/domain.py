"""Gateway domain: what a received DICOM instance must be, its pseudonymous study id, and where it is stored.

Knows nothing of DIMSE or HTTP: the DIMSE SCP (services/gateway/dimse.py) and the STOW-RS endpoint
(services/gateway/stow.py) both hand an encoded instance (a DICOM file, preamble and file meta included)
to `Receiver.receive`, which checks that the pipeline can process it (the acceptance rule, pixel data whole for
its transfer syntax, MAX_IMAGE_BYTES, no other instance under its SOP Instance UID), stores it under
incoming/<study_id>/<instance>.dcm and answers with the stored key, or raises `Refused` carrying the DIMSE status
and a reason of at most 64 characters (an Error Comment) that names an attribute, never a value (docs/phi.md). The object store's PUT returning is the durability point: only then does a
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
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import acceptance, priority
from shared.acceptance import text as _text
from shared.errors import ConfigurationError, RadStreamError, StorageUnavailable
from shared.messages import INCOMING
from shared.pixels import COLOUR, GRAYSCALE, pixel_data_incomplete
from shared.storage import ObjectStore

log = logging.getLogger("radstream.gateway")

# The storage SOP classes and the rule are the pipeline's (shared.acceptance): the gateway never acknowledges what validate refuses.
ACCEPTED_SOP_CLASSES = acceptance.ACCEPTED_SOP_CLASSES

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C.4.2.1.4): what each refusal tells the sending modality. STOW-RS reports
# the same codes as each failed instance's FailureReason (PS3.18 10.5.3).
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported (also refused at association negotiation)
DUPLICATE_SOP_INSTANCE = 0x0111  # Failure: another instance is stored under this SOP Instance UID (PS3.7 C.4)
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources - the store is unavailable; the sender should retry later
DATASET_DOES_NOT_MATCH = 0xA900  # Error: Data Set does not match SOP Class (a required attribute is missing)
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand - a valid instance this service does not process (not a chest)
PROCESSING_FAILURE = 0x0110  # Failure: the gateway itself failed (an unexpected error)
PSEUDONYM_HEX = 20  # 80 bits of each HMAC: collisions are out of reach for any archive's number of studies
COMMENT_MAX = 64  # Error Comment (0000,0902) is LO: 64 characters. Reasons are written to fit, never cut.


class Refused(Exception):
    """An instance the gateway does not store: a DIMSE status and a reason (at most 64 characters) that names no value."""

    def __init__(self, status: int, reason: str) -> None:
        if len(reason) > COMMENT_MAX:
            raise ValueError(f"a refusal's reason must fit the 64-character Error Comment, this one has {len(reason)}")
        super().__init__(reason)
        self.status = status
        self.reason = reason


def oversize(limit: int) -> Refused:
    """The refusal of an instance over MAX_IMAGE_BYTES: the limit validate applies, refused before it is stored."""
    return Refused(CANNOT_UNDERSTAND, f"instance is over the {limit}-byte limit (MAX_IMAGE_BYTES)")


def _short(e: acceptance.NotAccepted, ds: Any) -> str:
    """The acceptance rule's reason, or, where it is longer than an Error Comment, the same said shorter."""
    if len(e.reason) <= COMMENT_MAX:
        return e.reason
    if e.attribute == "Modality":
        allowed = acceptance.MODALITY_OF.get(acceptance.sop_class_of(ds), set(acceptance.MODALITIES))
        return f"Modality must be {' or '.join(sorted(allowed))} for this SOP class"
    if e.attribute == "BodyPartExamined":
        return "BodyPartExamined (or AnatomicRegionSequence) is not CHEST"
    return f"{e.attribute} is not accepted"  # attribute keywords are at most 40 characters


@dataclass(frozen=True)
class Received:
    study_id: str
    key: str
    size: int
    transfer_syntax: str
    # The order's (0040,1003) or the C-STORE request's Priority, the more urgent (shared/priority.py): the queue's order.
    priority: str = priority.DEFAULT


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


DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # Settings.max_image_bytes's default; the gateway is given the setting itself


def _data_set_bytes(data: bytes) -> bytes:
    """The encoded data set after the file meta (group 0002): the file meta is the receiver's (DIMSE) or the sender's
    (STOW) wrapping, so the same instance re-sent over either differs in it and nowhere else."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = io.BytesIO(data)
    try:
        read_preamble(stream, False)
        _read_file_meta_info(stream)
    except Exception:
        return data
    return data[stream.tell() :]


def same_data_set(stored: bytes, received: bytes) -> bool:
    """Whether `received` is a re-send of `stored`: byte-identical once the file meta is set aside."""
    return stored == received or _data_set_bytes(stored) == _data_set_bytes(received)


@dataclass(eq=False)
class Receiver:
    """Checks and stores received instances; `on_stored(key)` runs after each durable store (locally: the pipeline).

    Success means the pipeline can process the instance: the acceptance rule holds, the pixel data is whole for its
    transfer syntax (shared.pixels.pixel_data_incomplete), a single frame in a photometric interpretation decode_dicom
    reads, and the instance is within `max_bytes` (MAX_IMAGE_BYTES, the limit validate applies). An instance never
    replaces a different one stored under the same SOP Instance UID; a re-send (its data set byte-identical; the file meta
    is the transport's) is acknowledged again, and neither stored nor run again.
    """

    store: ObjectStore
    images_bucket: str
    key: bytes
    on_stored: Callable[[Received], None] | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    # Striped locks: the check-then-put of one key is never interleaved with another of the same key in this process.
    _locks: list[threading.Lock] = field(default_factory=lambda: [threading.Lock() for _ in range(64)], init=False, repr=False)

    def check(self, data: bytes, sop_class_uid: str | None = None) -> tuple[str, str]:
        """The instance's (study id, instance name), or Refused. `sop_class_uid`: the one the DIMSE request announced."""
        import pydicom
        from pydicom.errors import InvalidDicomError

        if len(data) > self.max_bytes:
            raise oversize(self.max_bytes)
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, OSError, ValueError, KeyError, AttributeError, EOFError, NotImplementedError) as e:
            raise Refused(CANNOT_UNDERSTAND, "the instance cannot be parsed as DICOM") from e
        try:
            acceptance.accept(ds, sop_class_uid)
        except acceptance.NotAccepted as e:
            status = (
                SOP_CLASS_NOT_SUPPORTED
                if e.by == "sop_class"
                else CANNOT_UNDERSTAND
                if e.attribute == "BodyPartExamined"
                else DATASET_DOES_NOT_MATCH
            )
            raise Refused(status, _short(e, ds)) from e
        missing = [tag for tag in ("StudyInstanceUID", "SOPInstanceUID") if not _text(ds, tag)]
        if missing:
            raise Refused(DATASET_DOES_NOT_MATCH, f"required attribute(s) missing: {', '.join(missing)}")
        self._check_pixels(ds)
        return study_id_for(self.key, _text(ds, "StudyInstanceUID"), _text(ds, "SOPInstanceUID"))

    @staticmethod
    def _check_pixels(ds: Any) -> None:
        """What decode_dicom needs of the image, checked before Success rather than failed in the pipeline."""
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            frames = 0
        if frames != 1:
            raise Refused(CANNOT_UNDERSTAND, "NumberOfFrames is not 1: single-frame images are processed")
        photometric = _text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2"
        if photometric not in GRAYSCALE + COLOUR:
            raise Refused(CANNOT_UNDERSTAND, "PhotometricInterpretation is not grayscale, RGB or YBR")
        incomplete = pixel_data_incomplete(ds)
        if incomplete:
            raise Refused(DATASET_DOES_NOT_MATCH, incomplete)

    def receive(
        self,
        data: bytes,
        *,
        sop_class_uid: str | None = None,
        transfer_syntax: str = "",
        source: dict[str, str] | None = None,
        request_priority: str | None = None,
    ) -> Received:
        """Check, then store; returns only after the object store's PUT returned (the durability point)."""
        study_id, instance = self.check(data, sop_class_uid)
        peer = source or {}
        level = priority.most_urgent(priority.of_dicom_bytes(data), request_priority or priority.DEFAULT)
        key = f"{INCOMING}{study_id}/{instance}.dcm"
        try:
            with self._locks[hash(key) % len(self._locks)]:
                existing = self.store.head(self.images_bucket, key)
                if existing is not None:
                    if same_data_set(self.store.get_bytes(self.images_bucket, key), data):
                        log.info("instance already stored (a re-send)", extra={"study_id": study_id, "bytes": len(data), **peer})
                        return Received(study_id, existing.key, existing.size, transfer_syntax, level)
                    log.warning(
                        "instance refused: another instance is stored under its SOPInstanceUID", extra={"study_id": study_id, **peer}
                    )
                    raise Refused(DUPLICATE_SOP_INSTANCE, "another instance with this SOPInstanceUID is stored")
                if request_priority and priority.rank(request_priority) < priority.rank(priority.DEFAULT):
                    # The sender's priority for the workflow (its own (0040,1003), when it has one, wins there).
                    priority.record_sender(self.store, self.images_bucket, key, request_priority)
                stored = self.store.put_bytes(self.images_bucket, key, data, content_type="application/dicom")
        except RadStreamError as e:
            log.warning("instance not stored", extra={"error_type": e.error_name, "retryable": e.retryable, **peer})
            raise Refused(OUT_OF_RESOURCES, "the images bucket is unavailable; send again later") from e
        received = Received(study_id, stored.key, stored.size, transfer_syntax, level)
        log.info("instance stored", extra={"study_id": study_id, "bytes": stored.size, "transfer_syntax": transfer_syntax, **peer})
        if self.on_stored is not None:
            try:
                self.on_stored(received)
            except (OSError, StorageUnavailable) as e:
                # The acknowledgement could not be journalled (a full or read-only disk): no Success the gateway cannot
                # keep. The stored object stays in incoming/, where resume's scan of the uploads finds it.
                log.error("stored instance not journalled", extra={"study_id": study_id, "error_type": type(e).__name__})
                raise Refused(OUT_OF_RESOURCES, "cannot journal the instance; send again later") from e
            except Exception as e:
                log.error("stored instance not handed on", extra={"study_id": study_id, "error_type": type(e).__name__})
        return received
