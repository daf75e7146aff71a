"""DIMSE side of the gateway: a pynetdicom Storage SCP (C-STORE) and Verification SCP (C-ECHO).

Only the acceptance rule's storage contexts (CR, DX, Secondary Capture) are offered at association negotiation
(any transfer syntax pydicom knows, so compressed instances are stored as sent): a modality proposing another SOP
class gets that presentation context rejected ("abstract syntax not supported", PS3.8), the standard's first refusal.
An association is rejected when its called AE title is not the gateway's, or when GATEWAY_ALLOWED_CALLING_AES is set
and its calling AE title (with the peer's address, where an entry names a host) is not in it; each rejection is
logged once, with the peer. A C-STORE whose data set still does not fit gets the status `Receiver.check` chose, with
an Error Comment (at most 64 characters) that names the problem, never a value.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from typing import Any

from collections.abc import Iterator

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.gateway.archive import MATCHABLE, Archive
from services.gateway.domain import ACCEPTED_SOP_CLASSES, PROCESSING_FAILURE, Receiver, Refused
from shared import priority
from shared.acceptance import SECONDARY_CAPTURE
from shared.dimse import quiet_pynetdicom
from shared.settings import Settings

log = logging.getLogger("radstream.gateway")
SUCCESS = 0x0000


class SlotLimitedAE(AE):
    """An AE whose association limit counts associations that were let in, not every connection alive.

    pynetdicom 3.0.4 rejects an A-ASSOCIATE-RQ when its acceptor threads alive (those still negotiating, and
    those about to be rejected, included) outnumber `maximum_associations`. Under a burst of reconnecting
    modalities the arrivals can reject each other: with pynetdicom's own check, the load test (200 associations
    retrying within 2 s, limit 10) stored 470 of 2,000 instances and then nothing for 3 minutes. Here the check (ACSE reads `maximum_associations` once, on the
    association's own thread, during negotiation) takes one of `limit` slots under a lock: a slot is held until
    that association's thread ends; an arrival finding none is rejected (transient, local limit exceeded) and
    holds nothing. Read anywhere else, the property is the limit itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots_lock = threading.Lock()
        self._slot_holders: set[Association] = set()
        super().__init__(*args, **kwargs)

    @property
    def maximum_associations(self) -> int:
        current = threading.current_thread()
        if not (isinstance(current, Association) and current.is_acceptor and current.ae is self):
            return self._maximum_associations
        with self._slots_lock:
            self._slot_holders = {t for t in self._slot_holders if t.is_alive()}
            if current in self._slot_holders or len(self._slot_holders) < self._maximum_associations:
                self._slot_holders.add(current)
                return sys.maxsize  # acceptors alive never exceed it: let in
            return 0  # at least this one is alive: rejected

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        AE.maximum_associations.fset(self, value)  # type: ignore[attr-defined]

    @property
    def associations_admitted(self) -> int:
        """Associations holding a slot now (admitted and not yet ended)."""
        with self._slots_lock:
            return sum(t.is_alive() for t in self._slot_holders)


@dataclass(frozen=True)
class AllowedPeer:
    """One GATEWAY_ALLOWED_CALLING_AES entry: a calling AE title, and where `AE@host` names one, the addresses it may
    associate from (an IP address, a CIDR network, or a host name resolved once, at start)."""

    ae_title: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowedPeer:
        title, _, host = entry.partition("@")
        if not host:
            return cls(title.strip())
        try:
            networks: tuple[Any, ...] = (ipaddress.ip_network(host.strip(), strict=False),)
        except ValueError:
            try:
                infos = socket.getaddrinfo(host.strip(), None, proto=socket.IPPROTO_TCP)
            except OSError as e:
                from shared.errors import ConfigurationError

                raise ConfigurationError("GATEWAY_ALLOWED_CALLING_AES names a host that does not resolve") from e
            networks = tuple({ipaddress.ip_network(info[4][0]) for info in infos})
        return cls(title.strip(), networks)

    def admits(self, ae_title: str, address: str) -> bool:
        if ae_title.strip() != self.ae_title:
            return False
        if self.networks is None:
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(peer in network for network in self.networks)


class GatewayAE(SlotLimitedAE):
    """The gateway's AE: the called AE title must be its own, and with an allow-list only the listed calling AEs (from
    their hosts, where an entry names one) are let in. pynetdicom's ACSE reads `require_calling_aet` on the association's
    own thread after it set the requestor's AE title; here that read answers for this peer: [] (admitted) or a list
    that holds no AE title (rejected: "calling AE title not recognised", PS3.8 A-ASSOCIATE-RJ reason 3)."""

    allowed_peers: tuple[AllowedPeer, ...] = ()

    @property
    def require_calling_aet(self) -> list[str]:
        current = threading.current_thread()
        if not self.allowed_peers or not (isinstance(current, Association) and current.is_acceptor and current.ae is self):
            return []
        return [] if self.admits(current) else [""]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        AE.require_calling_aet.fset(self, ae_titles)  # type: ignore[attr-defined]

    def admits(self, assoc: Association) -> bool:
        """Whether the allow-list (if any) lets this association's calling AE title and address in."""
        if not self.allowed_peers:
            return True
        address = assoc.requestor.address if assoc.requestor.address_info else ""
        return any(peer.admits(assoc.requestor.ae_title, address) for peer in self.allowed_peers)


def peer_of(assoc: Association) -> dict[str, str]:
    """The requestor as log fields: its AE title and address (no patient data)."""
    requestor = assoc.requestor
    where = f"{requestor.address}:{requestor.port}" if requestor.address_info else "unknown"
    return {"protocol": "DIMSE", "calling_ae": requestor.ae_title.strip() or "-", "peer": where}


def handle_rejected(event: Any) -> None:
    """One line per rejected association, with the peer (AE titles and addresses are no patient data)."""
    assoc = event.assoc
    called = str(assoc.requestor.primitive.called_ae_title).strip() if assoc.requestor.primitive is not None else ""
    ae = assoc.ae
    if called != ae.ae_title.strip():
        reason = "called AE title is not this gateway's"
    elif isinstance(ae, GatewayAE) and not ae.admits(assoc):
        reason = "calling AE title (or its host) is not in GATEWAY_ALLOWED_CALLING_AES"
    else:
        reason = "association limit reached (GATEWAY_MAX_ASSOCIATIONS)"
    log.warning("association rejected", extra={"reason": reason, "called_ae": called or "-", **peer_of(assoc)})


def build_ae(settings: Settings) -> AE:
    quiet_pynetdicom()
    ae = GatewayAE(ae_title=settings.gateway_ae_title)
    ae.require_called_aet = True  # a modality configured for another AE reached the wrong node: tell it at association
    for uid in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    # Query/retrieve of what RadStream made: Study Root C-FIND and C-GET. C-GET sends the SR and the overlay (a
    # Secondary Capture) back on the same association, so the requestor may take the SCP role for those classes.
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for uid, syntaxes in (
        (Comprehensive3DSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (SECONDARY_CAPTURE, ALL_TRANSFER_SYNTAXES),
    ):
        ae.add_supported_context(uid, syntaxes, scu_role=True, scp_role=True)
    ae.maximum_pdu_size = settings.gateway_max_pdu
    ae.maximum_associations = settings.gateway_max_associations
    ae.acse_timeout = settings.gateway_acse_timeout_s
    ae.dimse_timeout = settings.gateway_dimse_timeout_s
    ae.network_timeout = settings.gateway_network_timeout_s
    ae.allowed_peers = tuple(AllowedPeer.parse(entry) for entry in settings.gateway_allowed_ae_list)
    return ae


def status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment  # LO: Refused's reasons are written to fit its 64 characters
    return ds


def handle_store(event: Any, receiver: Receiver) -> Dataset:
    """C-STORE: success only once the object store's PUT returned."""
    calling = peer_of(event.assoc)
    try:
        data = event.encoded_dataset(include_meta=True)
        receiver.receive(
            data,
            sop_class_uid=str(event.request.AffectedSOPClassUID),
            transfer_syntax=str(event.context.transfer_syntax),
            source=calling,
            request_priority=priority.from_dimse(getattr(event.request, "Priority", None)),
        )
    except Refused as e:
        log.warning("C-STORE refused", extra={"status": f"0x{e.status:04X}", "reason": e.reason, **calling})
        return status(e.status, e.reason)
    except Exception as e:
        log.error("C-STORE failed unexpectedly", extra={"error_type": type(e).__name__, **calling})
        return status(PROCESSING_FAILURE, "processing failure in the gateway")
    return status(SUCCESS)


def handle_echo(event: Any) -> int:
    log.info("C-ECHO", extra=peer_of(event.assoc))
    return SUCCESS


# C-FIND / C-GET statuses (PS3.4 C.4.1.1.4, C.4.3.1.4)
PENDING, CANCELLED = 0xFF00, 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
LEVELS = ("STUDY", "SERIES", "IMAGE")


def _identifier_text(element: Any) -> str:
    value = element.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def handle_find(event: Any, archive: Archive) -> Iterator[tuple[int, Dataset | None]]:
    """Study Root C-FIND at STUDY, SERIES or IMAGE level: one pending response per match, each with the keys asked for
    (a key this archive does not hold comes back empty, as PS3.4 C.2.2.1.2 allows)."""
    identifier = event.identifier
    level = str(identifier.get("QueryRetrieveLevel", "")).upper()
    if level not in LEVELS:
        log.warning("C-FIND refused: QueryRetrieveLevel is not STUDY, SERIES or IMAGE", extra=peer_of(event.assoc))
        yield IDENTIFIER_DOES_NOT_MATCH, None
        return
    requested = [e for e in identifier if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet") and e.keyword]
    filters = {e.keyword: _identifier_text(e) for e in requested if e.keyword in MATCHABLE[level] and _identifier_text(e)}
    try:
        answers = archive.search(level, filters)  # type: ignore[arg-type]
    except Exception as e:
        log.error("C-FIND failed", extra={"error_type": type(e).__name__, **peer_of(event.assoc)})
        yield UNABLE_TO_PROCESS, None
        return
    log.info("C-FIND", extra={"query_level": level, "matches": len(answers), **peer_of(event.assoc)})
    for answer in answers:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        out = Dataset()
        if "SpecificCharacterSet" in answer:
            out.SpecificCharacterSet = answer.SpecificCharacterSet
        out.QueryRetrieveLevel = level
        for element in requested:
            if element.keyword in answer:
                out[element.tag] = answer[element.tag]
            else:
                out.add_new(element.tag, dictionary_VR(element.tag), None)
        yield PENDING, out


def _in_accepted_syntax(ds: Dataset, assoc: Association) -> Dataset:
    """The object in a transfer syntax the requestor accepted for its class: as stored, or decompressed when only
    uncompressed ones were (getscu proposes those by default; the overlay is stored in JPEG-LS)."""
    syntaxes = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == ds.SOPClassUID and cx.as_scu}
    stored = ds.file_meta.TransferSyntaxUID
    if stored not in syntaxes and stored.is_compressed and syntaxes & {ExplicitVRLittleEndian, ImplicitVRLittleEndian}:
        ds.decompress(generate_instance_uid=False)  # lossless: the same instance, in another transfer syntax
    return ds


def handle_get(event: Any, archive: Archive) -> Iterator[Any]:
    """Study Root C-GET: the SR and overlay objects under the identifier's study, series or instance UIDs, each sent
    by a C-STORE sub-operation on this association."""
    import io

    import pydicom

    identifier = event.identifier
    level = str(identifier.get("QueryRetrieveLevel", "")).upper()
    uids = {
        k: _identifier_text(identifier[k]) if k in identifier else "" for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    }
    unique = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}.get(level)
    if unique is None or not uids[unique]:
        log.warning("C-GET refused: no unique key for QueryRetrieveLevel", extra=peer_of(event.assoc))
        yield IDENTIFIER_DOES_NOT_MATCH, None
        return
    found = archive.instances(uids["StudyInstanceUID"] or None, uids["SeriesInstanceUID"] or None, uids["SOPInstanceUID"] or None)
    log.info("C-GET", extra={"query_level": level, "instances": len(found), **peer_of(event.assoc)})
    yield len(found)
    for item in found:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        ds = pydicom.dcmread(io.BytesIO(archive.read(item)))
        yield PENDING, _in_accepted_syntax(ds, event.assoc)


class DimseServer:
    """The SCP on (host, port); port 0 takes a free one (`port` says which). With a TLS context and
    GATEWAY_DICOM_TLS_PORT, a second listener speaks DICOM TLS (PS3.15 B.9) on that port (`tls_port`); both
    share one AE, so GATEWAY_MAX_ASSOCIATIONS counts their associations together."""

    def __init__(
        self, settings: Settings, receiver: Receiver, ssl_context: ssl.SSLContext | None = None, archive: Archive | None = None
    ) -> None:
        self.ae = build_ae(settings)
        archive = archive or Archive(receiver.store, settings.results_bucket)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_store, [receiver]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_REJECTED, handle_rejected),
            (evt.EVT_C_FIND, handle_find, [archive]),
            (evt.EVT_C_GET, handle_get, [archive]),
        ]
        self.server = _listening(
            self.ae.start_server((settings.gateway_host, settings.gateway_dimse_port), block=False, evt_handlers=handlers)
        )
        self.tls_server: ThreadedAssociationServer | None = None
        if ssl_context is not None and settings.gateway_dicom_tls_port is not None:
            try:
                self.tls_server = _listening(
                    self.ae.start_server(
                        (settings.gateway_host, settings.gateway_dicom_tls_port),
                        block=False,
                        evt_handlers=handlers,
                        ssl_context=ssl_context,
                    )
                )
            except BaseException:
                self.server.shutdown()
                raise

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        return int(self.tls_server.server_address[1]) if self.tls_server is not None else None

    def serving(self) -> bool:
        """Whether every listener's socket is still open (GET /health)."""
        return all(s.socket is not None and s.socket.fileno() >= 0 for s in (self.server, self.tls_server) if s is not None)

    def close(self) -> None:
        """Stops the listeners (again: nothing)."""
        for server in (self.tls_server, self.server):
            if server is not None and server.socket is not None and server.socket.fileno() >= 0:
                server.shutdown()


def _listening(server: ThreadedAssociationServer | None) -> ThreadedAssociationServer:
    """pynetdicom's start_server returns its server when not blocking (None only when it blocked until shut down)."""
    if server is None:
        raise RuntimeError("pynetdicom started no server")
    return server
