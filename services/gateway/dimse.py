"""DIMSE side of the gateway: a pynetdicom Storage SCP (C-STORE) and Verification SCP (C-ECHO).

Only CR and DX storage contexts are offered at association negotiation (any transfer syntax pydicom
knows, so compressed instances are stored as sent): a modality proposing another SOP class gets that
presentation context rejected ("abstract syntax not supported", PS3.8), the standard's first refusal.
A C-STORE whose data set still does not fit gets the status `Receiver.check` chose, with an Error Comment
that names the problem, never a value.
"""
from __future__ import annotations

import logging
import ssl
import sys
import threading
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pydicom.dataset import Dataset

from services.gateway.domain import ACCEPTED_SOP_CLASSES, Receiver, Refused
from shared.settings import Settings

log = logging.getLogger("radstream.gateway")
SUCCESS = 0x0000


def quiet_pynetdicom() -> None:
    """pynetdicom's DEBUG lines print each request's Affected SOP Instance UID and its INFO/DEBUG PDU dumps the
    peers' details: identifiers in logs (docs/phi.md). Its warnings and errors (no data set values) still log."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


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

    @property  # type: ignore[override]
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


def build_ae(settings: Settings) -> AE:
    quiet_pynetdicom()
    ae = SlotLimitedAE(ae_title=settings.gateway_ae_title)
    for uid in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = settings.gateway_max_pdu
    ae.maximum_associations = settings.gateway_max_associations
    ae.acse_timeout = settings.gateway_acse_timeout_s
    ae.dimse_timeout = settings.gateway_dimse_timeout_s
    ae.network_timeout = settings.gateway_network_timeout_s
    allowed = settings.gateway_allowed_ae_list
    if allowed:
        ae.require_calling_aet = allowed  # others: association rejected, "calling AE title not recognised"
    return ae


def status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO: 64 characters
    return ds


def handle_store(event: Any, receiver: Receiver) -> Dataset:
    """C-STORE: success only once the object store's PUT returned."""
    calling = event.assoc.requestor.ae_title
    try:
        data = event.encoded_dataset(include_meta=True)
        receiver.receive(
            data, sop_class_uid=str(event.request.AffectedSOPClassUID), transfer_syntax=str(event.context.transfer_syntax),
            source=f"DIMSE {calling}",
        )
    except Refused as e:
        log.warning("C-STORE refused status=0x%04X reason=%s from %s", e.status, e.reason, calling)
        return status(e.status, e.reason)
    except Exception as e:  # noqa: BLE001 - an unexpected error is the SCP's failure: named, never its message
        log.error("C-STORE failed unexpectedly error_type=%s from %s", type(e).__name__, calling)
        return status(0xC000, f"processing failure ({type(e).__name__})")
    return status(SUCCESS)


def handle_echo(event: Any) -> int:
    log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return SUCCESS


class DimseServer:
    """The SCP on (host, port); port 0 takes a free one (`port` says which). With a TLS context and
    GATEWAY_DICOM_TLS_PORT, a second listener speaks DICOM TLS (PS3.15 B.9) on that port (`tls_port`); both
    share one AE, so GATEWAY_MAX_ASSOCIATIONS counts their associations together."""

    def __init__(self, settings: Settings, receiver: Receiver, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ae = build_ae(settings)
        handlers = [(evt.EVT_C_STORE, handle_store, [receiver]), (evt.EVT_C_ECHO, handle_echo)]
        self.server = self.ae.start_server((settings.gateway_host, settings.gateway_dimse_port), block=False, evt_handlers=handlers)
        self.tls_server = None
        if ssl_context is not None and settings.gateway_dicom_tls_port is not None:
            try:
                self.tls_server = self.ae.start_server((settings.gateway_host, settings.gateway_dicom_tls_port), block=False,
                                                       evt_handlers=handlers, ssl_context=ssl_context)
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
        return all(s.socket.fileno() >= 0 for s in (self.server, self.tls_server) if s is not None)

    def close(self) -> None:
        """Stops the listeners (again: nothing)."""
        for server in (self.tls_server, self.server):
            if server is not None and server.socket.fileno() >= 0:
                server.shutdown()
