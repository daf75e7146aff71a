"""Delivery of a study's SR back to the hospital: DIMSE C-STORE SCU to the PACS, or DICOMweb STOW-RS.

The gateway sits in (or next to) the hospital network, so it is the component that can reach the PACS;
it sends results/<study_id>/report.sr.dcm once the export stage wrote it. Locally `LocalPipeline` calls
`Deliverer.deliver` after a study's run succeeded. Statuses: a DIMSE success or warning (0x0000, 0xB000,
0xB006, 0xB007) is delivered; 0xA7xx (out of resources) or a peer that cannot be reached is
DeliveryUnavailable (send again later); any other failure status is DeliveryRefused. Log lines name the
study id and the peer, never a patient value.
"""
from __future__ import annotations

import io
import logging
import re
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

from shared.errors import ConfigurationError, DeliveryRefused, DeliveryUnavailable, ObjectNotFound
from shared.settings import Settings
from shared.storage import ObjectStore

log = logging.getLogger("radstream.gateway")
_PEER = re.compile(r"^(?P<ae>[ -~]{1,16})@(?P<host>[^:@\s]+):(?P<port>\d{1,5})$")
SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class DicomPeer:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "DicomPeer":
        match = _PEER.match(text.strip())
        if not match:
            raise ConfigurationError("GATEWAY_PACS must be AE_TITLE@host:port, e.g. PACS@10.0.0.5:104")
        return cls(match["ae"].strip(), match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def c_store(peer: DicomPeer, data: bytes, settings: Settings, study_id: str) -> int:
    """Send one DICOM file by C-STORE; the peer's status (success or warning), else DeliveryUnavailable/DeliveryRefused."""
    import pydicom
    from pynetdicom import AE

    from services.gateway.dimse import quiet_pynetdicom

    quiet_pynetdicom()
    ds = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title=settings.gateway_ae_title)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (
        settings.gateway_acse_timeout_s, settings.gateway_dimse_timeout_s, settings.gateway_network_timeout_s)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, max_pdu=settings.gateway_max_pdu)
    if not assoc.is_established:
        raise DeliveryUnavailable(f"no association with {peer} (rejected, aborted or unreachable)", study_id=study_id)
    try:
        response = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if not response or "Status" not in response:
        raise DeliveryUnavailable(f"{peer} sent no C-STORE response (timeout or abort)", study_id=study_id)
    status = int(response.Status)
    if status in SUCCESS_OR_WARNING:
        return status
    if status & 0xFF00 == 0xA700:
        raise DeliveryUnavailable(f"{peer} is out of resources (status 0x{status:04X}); send again later", study_id=study_id)
    raise DeliveryRefused(f"{peer} refused the SR with status 0x{status:04X}", study_id=study_id)


def stow(url: str, data: bytes, study_id: str, timeout: float = 60) -> int:
    """POST one DICOM file to a STOW-RS endpoint (…/studies); the HTTP status, else DeliveryUnavailable/DeliveryRefused."""
    boundary = uuid.uuid4().hex
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}', "Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        if e.code in (408, 429) or e.code >= 500:
            raise DeliveryUnavailable(f"STOW-RS {url} answered {e.code}; send again later", study_id=study_id) from e
        raise DeliveryRefused(f"STOW-RS {url} refused the SR ({e.code})", study_id=study_id) from e
    except (urllib.error.URLError, OSError) as e:
        raise DeliveryUnavailable(f"STOW-RS {url} cannot be reached ({type(e).__name__})", study_id=study_id) from e


class Deliverer:
    """Sends each study's SR to the configured destinations (GATEWAY_PACS, GATEWAY_PACS_STOW_URL)."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store
        self.peer = DicomPeer.parse(settings.gateway_pacs) if settings.gateway_pacs else None
        self.stow_url = settings.gateway_pacs_stow_url

    @property
    def configured(self) -> bool:
        return self.peer is not None or bool(self.stow_url)

    def deliver(self, study_id: str) -> list[str]:
        key = f"results/{study_id}/report.sr.dcm"
        try:
            data = self.store.get_bytes(self.settings.results_bucket, key)
        except ObjectNotFound:
            log.info("nothing to deliver study_id=%s (no SR: not a DICOM study, or not exported)", study_id)
            return []
        delivered = []
        if self.peer is not None:
            status = c_store(self.peer, data, self.settings, study_id)
            log.info("SR delivered by C-STORE study_id=%s to %s status=0x%04X", study_id, self.peer, status)
            delivered.append(f"dimse:{self.peer}")
        if self.stow_url:
            code = stow(self.stow_url, data, study_id)
            log.info("SR delivered by STOW-RS study_id=%s to %s status=%d", study_id, self.stow_url, code)
            delivered.append(f"stow:{self.stow_url}")
        return delivered
