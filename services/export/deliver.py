"""Delivery of a study's exports to the hospital, and the dead letters of exports that could not be built or delivered.

DeliverResults (template.yaml) runs after ExportResults for DICOM studies. It sends the SR and the overlay
(results/<study_id>/report.sr.dcm, report.overlay.dcm) to the configured destinations: a DICOM node by
C-STORE SCU (EXPORT_DICOM_PEER, AE_TITLE@host:port) and/or a DICOMweb server by STOW-RS (EXPORT_STOW_URL,
…/studies); and POSTs the FHIR bundle (report.fhir.json) to EXPORT_FHIR_URL when set. Statuses: a DIMSE success
or warning (0x0000, 0xB000, 0xB006, 0xB007) or HTTP 2xx is delivered; 0xA7xx (out of resources), HTTP
408/429/5xx or a peer that cannot be reached is DeliveryUnavailable (the template retries it); anything else
DeliveryRefused. Log lines name the study id and the peer, never a patient value.

When the retries are spent (or the peer refused), the workflow's Catch runs the same function with the error
(RecordDeadLetter); when ExportResults itself failed (a header no builder could address, a bug), its Catch does too,
without exports (RecordExportFailure). Either way it writes a dead letter, results/export-failed/<study_id>/<execution>.json
(study id, execution, kind build|delivery, error, the exports' keys or what rebuilds them, the destinations; no
patient value), marks the study's export status (results/<study_id>/exports.json: build_failed or delivery_failed,
with the message to act on), and the study continues to SendTelemetry with its result: an export failure is never a
study failure, and never moves or hides the result. A failed build also returns the export stage's failed telemetry
record, counted in place of ExportResults' own. `radstream export --retry` replays the dead letters
(`replay_dead_letters`): a failed build is built again, then sent like a failed delivery; a letter replayed in full is
removed, a failing one stays (rewritten as a failed delivery once its exports are built).
"""

from __future__ import annotations

import functools
import io
import logging
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any, Literal

from pydantic import BaseModel

from services.export.status import write_status
from shared.contracts import ObjectRef
from shared.dimse import quiet_pynetdicom
from shared.errors import (
    ConfigurationError,
    DeliveryRefused,
    DeliveryUnavailable,
    MalformedEvent,
    ObjectNotFound,
    PermanentError,
    RadStreamError,
    caught_error,
)
from shared.messages import DeliveredResult, DeliverRequest, ExportedResult, ExportRequest, StoredResult, ValidatedStudy
from shared.observability import telemetry_record
from shared.settings import Settings
from shared.storage import ObjectStore

log = logging.getLogger("radstream.export")
_PEER = re.compile(r"^(?P<ae>[ -~]{1,16})@(?P<host>[^:@\s]+):(?P<port>\d{1,5})$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB006, 0xB007}
DEAD_LETTERS = "export-failed/"


@dataclass(frozen=True)
class DicomPeer:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomPeer:
        match = _PEER.match(text.strip())
        if not match:
            raise ConfigurationError("EXPORT_DICOM_PEER must be AE_TITLE@host:port, e.g. PACS@10.0.0.5:104")
        return cls(match["ae"].strip(), match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def c_store(peer: DicomPeer, files: list[bytes], settings: Settings, study_id: str) -> list[int]:
    """Send DICOM files by C-STORE over one association; each peer status (success or warning), else DeliveryUnavailable/Refused.

    Each file's SOP class is proposed with its own transfer syntax and Explicit VR Little Endian: a PACS that does
    not take the compressed overlay (JPEG-LS) gets it decompressed."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    quiet_pynetdicom()
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    ae = AE(ae_title=settings.gateway_ae_title)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (
        settings.gateway_acse_timeout_s,
        settings.gateway_dimse_timeout_s,
        settings.gateway_network_timeout_s,
    )
    for ds in datasets:
        syntaxes = list(dict.fromkeys([str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian]))
        ae.add_requested_context(ds.SOPClassUID, syntaxes)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, max_pdu=settings.gateway_max_pdu)
    except (OSError, RuntimeError) as e:
        raise DeliveryUnavailable(f"no association with {peer} ({type(e).__name__})", study_id=study_id) from e
    if not assoc.is_established:
        raise DeliveryUnavailable(f"no association with {peer} (rejected, aborted or unreachable)", study_id=study_id)
    statuses = []
    try:
        for ds in datasets:
            accepted = {str(c.transfer_syntax[0]) for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID}
            if not accepted:
                raise DeliveryRefused(
                    f"{peer} does not store SOP class {ds.SOPClassUID} (presentation context rejected)", study_id=study_id
                )
            if str(ds.file_meta.TransferSyntaxUID) not in accepted:
                # Lossless to uncompressed is the same instance: its SOP Instance UID stays (pydicom would make a new one).
                ds.decompress(generate_instance_uid=False)
            response = assoc.send_c_store(ds)
            if not response or "Status" not in response:
                raise DeliveryUnavailable(f"{peer} sent no C-STORE response (timeout or abort)", study_id=study_id)
            status = int(response.Status)
            if status & 0xFF00 == 0xA700:
                raise DeliveryUnavailable(f"{peer} is out of resources (status 0x{status:04X}); send again later", study_id=study_id)
            if status not in SUCCESS_OR_WARNING:
                raise DeliveryRefused(f"{peer} refused SOP class {ds.SOPClassUID} with status 0x{status:04X}", study_id=study_id)
            statuses.append(status)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def _post(url: str, body: bytes, content_type: str, accept: str, what: str, study_id: str, timeout: float) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type, "Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        if e.code in (408, 429) or e.code >= 500:
            raise DeliveryUnavailable(f"{what} {url} answered {e.code}; send again later", study_id=study_id) from e
        raise DeliveryRefused(f"{what} {url} refused the request ({e.code})", study_id=study_id) from e
    except (urllib.error.URLError, OSError) as e:
        raise DeliveryUnavailable(f"{what} {url} cannot be reached ({type(e).__name__})", study_id=study_id) from e


def stow(url: str, files: list[bytes], study_id: str, timeout: float = 60) -> int:
    """POST DICOM files in one STOW-RS request (…/studies); the HTTP status, else DeliveryUnavailable/DeliveryRefused."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in files)
    body += f"--{boundary}--\r\n".encode()
    return _post(
        url,
        body,
        f'multipart/related; type="application/dicom"; boundary={boundary}',
        "application/dicom+json",
        "STOW-RS",
        study_id,
        timeout,
    )


def post_fhir(url: str, bundle: bytes, study_id: str, timeout: float = 60) -> int:
    """POST the FHIR bundle (a collection Bundle: to a server's …/Bundle endpoint); the HTTP status, else Unavailable/Refused."""
    return _post(url, bundle, "application/fhir+json", "application/fhir+json", "FHIR", study_id, timeout)


def destinations(settings: Settings) -> list[str]:
    """The configured destinations, as the dead letters name them: dimse:AE@host:port, stow:URL, fhir:URL."""
    found = []
    if settings.export_dicom_peer:
        found.append(f"dimse:{DicomPeer.parse(settings.export_dicom_peer)}")
    if settings.export_stow_url:
        found.append(f"stow:{settings.export_stow_url}")
    if settings.export_fhir_url:
        found.append(f"fhir:{settings.export_fhir_url}")
    return found


def deliver_exports(study_id: str, exported: ExportedResult, store: ObjectStore, settings: Settings) -> list[str]:
    """Send a study's exports to every configured destination; the destinations it reached (all of them, or an error)."""
    wants_dicom = bool(settings.export_dicom_peer or settings.export_stow_url)
    dicom = [store.get_bytes(ref.bucket, ref.key) for ref in (exported.sr, exported.overlay) if ref is not None and wants_dicom]
    delivered = []
    if settings.export_dicom_peer and dicom:
        peer = DicomPeer.parse(settings.export_dicom_peer)
        statuses = c_store(peer, dicom, settings, study_id)
        log.info(
            "exports delivered by C-STORE",
            extra={"study_id": study_id, "destination": str(peer), "statuses": [f"0x{s:04X}" for s in statuses]},
        )
        delivered.append(f"dimse:{peer}")
    if settings.export_stow_url and dicom:
        code = stow(settings.export_stow_url, dicom, study_id, timeout=settings.gateway_network_timeout_s)
        log.info("exports delivered by STOW-RS", extra={"study_id": study_id, "destination": settings.export_stow_url, "status": code})
        delivered.append(f"stow:{settings.export_stow_url}")
    if settings.export_fhir_url and exported.fhir is not None:
        code = post_fhir(
            settings.export_fhir_url,
            store.get_bytes(exported.fhir.bucket, exported.fhir.key),
            study_id,
            timeout=settings.gateway_network_timeout_s,
        )
        log.info("FHIR bundle delivered", extra={"study_id": study_id, "destination": settings.export_fhir_url, "status": code})
        delivered.append(f"fhir:{settings.export_fhir_url}")
    return delivered


# --- dead letters ---
class DeadLetter(BaseModel):
    """An export that kept failing: what to build and/or send again, and why it failed. No patient value (docs/phi.md).

    kind "delivery": the exports were built and could not be sent (RecordDeadLetter); `exported` names them.
    kind "build": ExportResults itself failed (RecordExportFailure); `study` and `stored` are what builds them again."""

    study_id: str
    execution_id: str
    failed_at: datetime
    kind: Literal["build", "delivery"] = "delivery"
    error_type: str
    message: str
    destinations: list[str]
    exported: ExportedResult | None = None
    study: ValidatedStudy | None = None
    stored: StoredResult | None = None
    replay: str = "radstream export --retry"


def dead_letter_key(study_id: str, execution_id: str) -> str:
    execution = _SAFE.sub("_", execution_id.rsplit(":", 1)[-1]) or "execution"
    return f"{DEAD_LETTERS}{study_id}/{execution}.json"


def error_message(error: dict[str, Any], study_id: str, execution_id: str, doing: str = "delivering") -> tuple[str, str]:
    """The Catch's {Error, Cause}: our own errors' messages (they never carry patient values), else only the type."""
    error_type, message = caught_error(error)
    return error_type, message or (
        f"study {study_id}: unexpected {error_type} while {doing}; see the logs of execution {execution_id}; "
        "the result stands and `radstream export --retry` tries again"
    )


def _exports(exported: ExportedResult | None) -> list[ObjectRef]:
    return [ref for ref in (exported.sr, exported.overlay, exported.fhir) if ref is not None] if exported else []


def record_dead_letter(request: DeliverRequest, store: ObjectStore, settings: Settings) -> DeliveredResult:
    """The Catch of DeliverResults (a delivery that kept failing) or of ExportResults (a build that failed): the dead letter,
    the study's export status, and for a failed build the export stage's failed telemetry record. The result stays."""
    study_id = request.study.study_id
    kind: Literal["build", "delivery"] = "build" if request.exported is None else "delivery"
    if kind == "build" and request.stored is None:
        raise MalformedEvent("a failed export build needs the stored result (stored) to be replayed", study_id=study_id)
    error_type, message = error_message(
        request.error or {},
        study_id,
        request.execution_id,
        "building its exports (SR, overlay, FHIR)" if kind == "build" else "delivering its exports",
    )
    letter = DeadLetter(
        study_id=study_id,
        execution_id=request.execution_id,
        failed_at=datetime.now(UTC),
        kind=kind,
        error_type=error_type,
        message=message,
        destinations=destinations(settings),
        exported=request.exported,
        study=request.study if kind == "build" else None,
        stored=request.stored if kind == "build" else None,
    )
    stored = store.put_bytes(
        settings.results_bucket,
        dead_letter_key(study_id, request.execution_id),
        letter.model_dump_json(indent=2, exclude_none=True).encode(),
        content_type="application/json",
    )
    ref = ObjectRef(bucket=settings.results_bucket, key=stored.key)
    write_status(
        store,
        settings.results_bucket,
        study_id,
        request.execution_id,
        f"{kind}_failed",
        exports=_exports(request.exported),
        destinations=letter.destinations,
        error_type=error_type,
        message=message,
        dead_letter=ref,
    )
    log.warning(
        "exports not built or delivered: dead letter written",
        extra={"kind": kind, "study_id": study_id, "error_type": error_type, "dead_letter": stored.key},
    )
    record = None
    if kind == "build":
        record = telemetry_record(
            stage="export", study_id=study_id, execution_id=request.execution_id, status="failed", duration_ms=None, error_type=error_type
        )
    return DeliveredResult(study_id=study_id, dead_letter=ref, bytes_out=stored.size, export_record=record)


def deliver(request: DeliverRequest, store: ObjectStore, settings: Settings) -> DeliveredResult:
    """DeliverResults: send the exports; or, called by a Catch with the error, write the dead letter."""
    if request.error is not None:
        return record_dead_letter(request, store, settings)
    study_id = request.study.study_id
    if request.exported is None:
        raise MalformedEvent("DeliverResults needs the exports (exported) or, from a Catch, the error", study_id=study_id)
    if request.exported.sr is None:
        return DeliveredResult(study_id=study_id, skipped=request.exported.skipped or "nothing was exported")
    if not destinations(settings):
        return DeliveredResult(study_id=study_id, skipped="no destination configured (EXPORT_DICOM_PEER, EXPORT_STOW_URL, EXPORT_FHIR_URL)")
    reached = deliver_exports(study_id, request.exported, store, settings)
    write_status(
        store,
        settings.results_bucket,
        study_id,
        request.execution_id,
        "delivered",
        exports=_exports(request.exported),
        destinations=reached,
    )
    return DeliveredResult(study_id=study_id, destinations=reached)


@dataclass
class Replayed:
    key: str
    study_id: str
    delivered: list[str] | None = None
    rebuilt: bool = False
    error: RadStreamError | None = None


def dead_letters(store: ObjectStore, bucket: str) -> list[str]:
    return sorted(k for k in store.list_keys(bucket, DEAD_LETTERS) if k.endswith(".json"))


def _replay(letter: DeadLetter, outcome: Replayed, store: ObjectStore, settings: Settings) -> None:
    """Build the exports again (a failed build), then send them to the destinations configured now (if any)."""
    from services.export.domain import export_result

    exported = letter.exported
    if letter.kind == "build":
        assert letter.study is not None and letter.stored is not None
        try:
            exported = export_result(
                ExportRequest(study=letter.study, stored=letter.stored, execution_id=letter.execution_id), store, settings.results_bucket
            )
        except RadStreamError:
            raise
        except Exception as e:  # a builder's own bug: named by type (its message could carry header values), the letter kept
            log.error("exports not rebuilt", extra={"study_id": letter.study_id, "error_type": type(e).__name__})
            raise PermanentError(
                f"study {letter.study_id}: the exports still cannot be built (unexpected {type(e).__name__}); see the logs",
                study_id=letter.study_id,
            ) from e
        outcome.rebuilt = True
        if exported.sr is None or not destinations(settings):
            return  # nothing to send (the source cannot be addressed: exports.json says why), or nowhere to send it yet
    elif not destinations(settings):
        raise ConfigurationError("no destination configured to replay to: set EXPORT_DICOM_PEER, EXPORT_STOW_URL or EXPORT_FHIR_URL")
    assert exported is not None
    status = functools.partial(write_status, store, settings.results_bucket, letter.study_id, letter.execution_id)
    try:
        outcome.delivered = deliver_exports(letter.study_id, exported, store, settings)
    except RadStreamError as e:
        # Still not sent (and, for a rebuilt one, from now on a failed delivery of the exports just built): the letter
        # and the study's export status say why, for the next replay.
        failed = letter.model_copy(
            update={
                "kind": "delivery",
                "exported": exported,
                "study": None,
                "stored": None,
                "failed_at": datetime.now(UTC),
                "error_type": e.error_name,
                "message": e.message,
                "destinations": destinations(settings),
            }
        )
        stored = store.put_bytes(
            settings.results_bucket,
            dead_letter_key(letter.study_id, letter.execution_id),
            failed.model_dump_json(indent=2, exclude_none=True).encode(),
            content_type="application/json",
        )
        status(
            "delivery_failed",
            exports=_exports(exported),
            destinations=failed.destinations,
            error_type=e.error_name,
            message=e.message,
            dead_letter=ObjectRef(bucket=settings.results_bucket, key=stored.key),
        )
        raise
    status("delivered", exports=_exports(exported), destinations=outcome.delivered)


def replay_dead_letters(store: ObjectStore, settings: Settings, on_each: Callable[[Replayed], None] | None = None) -> Iterator[Replayed]:
    """Replay each dead letter: a failed build is built again, then (as a failed delivery) sent to the destinations
    configured now; a letter whose replay succeeded is removed, a failing one stays (exports.json says why)."""
    for key in dead_letters(store, settings.results_bucket):
        try:
            letter = DeadLetter.model_validate_json(store.get_bytes(settings.results_bucket, key))
        except ObjectNotFound:
            continue  # replayed meanwhile by someone else
        except ValueError as e:
            outcome = Replayed(
                key=key, study_id=key.split("/")[1], error=ConfigurationError(f"dead letter {key} cannot be read ({type(e).__name__})")
            )
            yield outcome
            continue
        outcome = Replayed(key=key, study_id=letter.study_id)
        try:
            _replay(letter, outcome, store, settings)
            store.delete(settings.results_bucket, key)
        except RadStreamError as e:
            outcome.error = e
        yield outcome
