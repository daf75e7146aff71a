"""DICOMweb STOW-RS (PS3.18 10.5): `POST /studies` and `POST /studies/{StudyInstanceUID}` with multipart/related;
type="application/dicom".

Python's own http.server (ThreadingHTTPServer), not a framework: the endpoint is one route whose body is a multipart
of DICOM files. The body is read as it arrives (Content-Length or chunked transfer encoding, RFC 9112 7.1) and split
on the boundary byte-exact (RFC 2046 5.1.1: a preamble before the first delimiter and an epilogue after the close
delimiter are ignored; the CRLF before each delimiter belongs to it); each part is handed to the Receiver as soon as
it is complete, so memory holds one instance at a time, and a part over MAX_IMAGE_BYTES is counted, not kept. With a
certificate (GATEWAY_TLS_CERT_FILE/KEY_FILE) it serves HTTPS itself (EKS: a mounted Secret); without, it binds to
loopback by default. `GET /health` answers the probes. Responses follow PS3.18 10.5.3: 200 when every instance was
stored, 202 when some were, 409 when none was, with an application/dicom+json body listing the Referenced SOP Sequence
and the Failed SOP Sequence (Failure Reason: the DIMSE status the same refusal gets over C-STORE).
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.gateway import dicomweb
from services.gateway.archive import Archive
from services.gateway.domain import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    PROCESSING_FAILURE,
    Receiver,
    Refused,
    oversize,
)
from shared.settings import Settings

log = logging.getLogger("radstream.gateway")
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)
_UID_IN_PATH = re.compile(r"(?<=/)[0-9]+(?:\.[0-9]+)+")
_STUDIES = re.compile(r"^/studies(?:/([0-9.]{1,64}))?/?$")
READ_BYTES = 1 << 20  # one read from the socket
HEAD_BYTES = 1 << 18  # what is kept of a part over the limit: enough for its header, to name it in the response
HEADERS_MAX = 16 << 10  # a part's header block, and the preamble before the first delimiter


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def route_of(path: str) -> str:
    """A request's path for the log: UIDs (/studies/{uid}/…) and the query string (PatientID=…) are left out (docs/phi.md)."""
    return _UID_IN_PATH.sub("{uid}", path.split("?", 1)[0])[:200]


def _read_exactly(rfile: io.BufferedIOBase, size: int, cut_short: str) -> Iterator[bytes]:
    """`size` bytes of the body as they arrive, at most READ_BYTES at a time; a 400 naming `cut_short` if it ends first."""
    while size:
        data = rfile.read(min(size, READ_BYTES))
        if not data:
            raise BadRequest(400, cut_short)
        size -= len(data)
        yield data


def body_chunks(rfile: io.BufferedIOBase, content_length: str | None, transfer_encoding: str | None) -> Iterator[bytes]:
    """The request body as it arrives: `Transfer-Encoding: chunked` (what dicomweb-client and curl send for large
    bodies) or Content-Length bytes; neither is a 411."""
    if transfer_encoding:
        if transfer_encoding.strip().lower() != "chunked":
            raise BadRequest(501, "only chunked Transfer-Encoding is supported")
        while True:
            line = rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise BadRequest(400, "chunked body ends before its last chunk")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, "chunk size is not hexadecimal") from None
            if size == 0:
                while rfile.readline(HEADERS_MAX) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields: none is needed
                return
            yield from _read_exactly(rfile, size, "chunked body ends inside a chunk")
            if rfile.readline(1024) not in (b"\r\n", b"\n"):
                raise BadRequest(400, "chunk is not followed by CRLF")
        return
    try:
        length = int(content_length) if content_length is not None else -1
    except ValueError:
        length = -1
    if length < 0:
        raise BadRequest(411, "Content-Length or Transfer-Encoding: chunked is required")
    yield from _read_exactly(rfile, length, "body ends before Content-Length bytes")


@dataclass
class Part:
    """One multipart part: its bytes while within `limit`; past it only its first HEAD_BYTES and its size."""

    limit: int
    content_type: str = ""
    size: int = 0
    data: bytearray | None = field(default_factory=bytearray)
    head: bytes = b""
    complete: bool = False

    def add(self, chunk: bytes) -> None:
        if self.data is not None:
            self.data += chunk
            if len(self.data) > self.limit:
                self.head, self.data = bytes(self.data[:HEAD_BYTES]), None
        elif len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self.size += len(chunk)

    @property
    def start(self) -> bytes:
        return bytes(self.data[:HEAD_BYTES]) if self.data is not None else self.head


def boundary_of(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/related"):
        raise BadRequest(415, 'Content-Type must be multipart/related; type="application/dicom"')
    boundary = _BOUNDARY.search(content_type)
    part_type = _TYPE.search(content_type)
    if not boundary:
        raise BadRequest(400, "multipart/related without a boundary")
    if part_type and part_type.group(1).lower() != "application/dicom":
        raise BadRequest(415, 'only type="application/dicom" parts are accepted (no metadata+bulkdata STOW)')
    return (boundary.group(1) or boundary.group(2)).encode("ascii")


def multipart_parts(chunks: Iterator[bytes], boundary: bytes, limit: int) -> Iterator[Part]:
    """Each part of a multipart body as soon as its closing delimiter arrived (RFC 2046 5.1.1). A body that ends inside a
    part yields that part with `complete` False; one with no delimiter at all is a BadRequest."""
    dash = b"--" + boundary
    delimiter = b"\r\n" + dash
    buffer = bytearray()
    source = iter(chunks)

    def more() -> bool:
        chunk = next(source, None)
        if chunk is None:
            return False
        buffer.extend(chunk)
        return True

    # Preamble: anything before the first delimiter, which starts the body or a line.
    while True:
        at = buffer.find(dash)
        while at > 0 and buffer[at - 2 : at] != b"\r\n":
            at = buffer.find(dash, at + 1)
        if at >= 0:
            del buffer[: at + len(dash)]
            break
        if len(buffer) > HEADERS_MAX or not more():
            raise BadRequest(400, "multipart body has no delimiter line for its boundary")
    while True:
        # After a delimiter: "--" closes the body (the rest is the epilogue); else transport padding, CRLF, headers.
        while len(buffer) < 2 and more():
            pass
        if buffer.startswith(b"--"):
            for _ in source:
                pass  # the epilogue is read and ignored
            return
        while (end := buffer.find(b"\r\n\r\n")) < 0 and not buffer.startswith(b"\r\n\r\n"):
            if len(buffer) > HEADERS_MAX or not more():
                raise BadRequest(400, "multipart part has no header/body separator")
        lines = bytes(buffer[:end]).split(b"\r\n")
        if lines[0].strip(b" \t"):
            raise BadRequest(400, "multipart delimiter line has text after the boundary")
        part = Part(limit)
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-type":
                part.content_type = value.strip().decode("latin-1").lower()
        del buffer[: end + 4]
        while True:
            at = buffer.find(delimiter)
            if at >= 0:
                part.add(bytes(buffer[:at]))
                del buffer[: at + len(delimiter)]
                part.complete = True
                yield part
                break
            keep = len(delimiter) - 1  # a delimiter may straddle two reads
            if len(buffer) > keep:
                part.add(bytes(buffer[:-keep]))
                del buffer[:-keep]
            if not more():
                part.add(bytes(buffer))
                yield part  # incomplete: the body ended inside it
                return


def _uid_of(data: bytes, keyword: str) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=[keyword])
        value = ds.get(keyword)
        return str(value) if value else None
    except Exception:
        return None


def referenced(data: bytes) -> dict[str, Any]:
    """The Referenced SOP Class / Instance UIDs of an instance, as DICOM JSON (PS3.18 F.2)."""
    item: dict[str, Any] = {}
    for tag, keyword in (("00081150", "SOPClassUID"), ("00081155", "SOPInstanceUID")):
        uid = _uid_of(data, keyword)
        if uid:
            item[tag] = {"vr": "UI", "Value": [uid]}
    return item


def stow_response(results: list[tuple[bytes, Refused | None]]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, the Store Instances Response Module as DICOM JSON) for each part's start and its refusal or None."""
    referenced_items, failed = [], []
    for data, refusal in results:
        item = referenced(data)
        if refusal is None:
            referenced_items.append(item)
        else:
            failed.append(item | {"00081197": {"vr": "US", "Value": [refusal.status]}})
    body: dict[str, Any] = {}
    if referenced_items:
        body["00081199"] = {"vr": "SQ", "Value": referenced_items}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    code = 200 if not failed else 202 if referenced_items else 409
    return code, body


def store_part(part: Part, receiver: Receiver, study_uid: str | None, source: dict[str, str]) -> Refused | None:
    """One part's outcome: None when stored (or already stored byte-identical), else the refusal."""
    if not part.complete:
        return Refused(CANNOT_UNDERSTAND, "the part ends before its closing boundary")
    if part.content_type and not part.content_type.startswith("application/dicom"):
        return Refused(CANNOT_UNDERSTAND, "the part is not application/dicom")
    if part.data is None:
        return oversize(receiver.max_bytes)
    data = bytes(part.data)
    if study_uid is not None and _uid_of(data, "StudyInstanceUID") != study_uid:
        return Refused(DATASET_DOES_NOT_MATCH, "StudyInstanceUID differs from the request's study")
    try:
        receiver.receive(data, source=source)
    except Refused as e:
        return e
    except Exception as e:
        log.error("STOW instance failed unexpectedly", extra={"error_type": type(e).__name__, **source})
        return Refused(PROCESSING_FAILURE, "processing failure in the gateway")
    return None


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer whose TLS handshake (when a context is set) runs on the request's thread, not the accept loop."""

    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None
    handshake_timeout_s: float = 30.0

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if self.ssl_context is not None:
            request.settimeout(self.handshake_timeout_s)
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log.warning(
                    "STOW TLS handshake failed",
                    extra={"peer": client_address[0] if isinstance(client_address, tuple) else "?", "error_type": type(e).__name__},
                )
                request.close()
                return
            try:
                super().finish_request(request, client_address)
            finally:
                request.close()  # the TLS socket (the plain one it wraps was detached: shutdown_request closes nothing)
            return
        super().finish_request(request, client_address)


class StowServer:
    """STOW-RS on POST /studies, and GET /health for probes and the load balancer (200 while `healthy()` holds).

    With `ssl_context` it serves HTTPS (services/gateway/tls.py)."""

    def __init__(
        self,
        settings: Settings,
        receiver: Receiver,
        ssl_context: ssl.SSLContext | None = None,
        healthy: Callable[[], bool] | None = None,
        archive: Archive | None = None,
    ) -> None:
        max_bytes = receiver.max_bytes

        class Handler(BaseHTTPRequestHandler):
            server_version = "RadStreamGateway/1"
            protocol_version = "HTTP/1.1"  # chunked request bodies and Expect: 100-continue are HTTP/1.1's
            timeout = settings.gateway_network_timeout_s

            def log_message(self, format: str, *args: Any) -> None:  # the route only
                log.info("DICOMweb request", extra={"peer": self.address_string(), "method": self.command, "route": route_of(self.path)})

            def log_request(self, code: object = "-", size: object = "-") -> None:
                if self.path != "/health":  # a probe every few seconds would drown the request log
                    log.info(
                        "DICOMweb request",
                        extra={"peer": self.address_string(), "method": self.command, "route": route_of(self.path), "status": code},
                    )

            def log_error(self, format: str, *args: Any) -> None:  # http.server's parse errors: no values
                log.warning("DICOMweb request not understood", extra={"peer": self.address_string()})

            def _send(self, code: int, body: dict[str, Any] | None = None, message: str | None = None) -> None:
                if body is None:
                    payload, ctype = (message or "").encode(), "text/plain; charset=utf-8"
                else:
                    payload, ctype = json.dumps(body).encode(), "application/dicom+json"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")  # a body left unread never reaches the next request
                self.close_connection = True
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/health":
                    ok = healthy() if healthy is not None else True
                    self._send(200 if ok else 503, message="ok" if ok else "the DIMSE listener is not serving")
                    return
                try:
                    found = dicomweb.answer(path, query, archive) if archive is not None else None
                except Exception as e:
                    log.error(
                        "DICOMweb read failed",
                        extra={"error_type": type(e).__name__, "peer": self.address_string(), "route": route_of(path)},
                    )
                    self._send(500, message="the results bucket cannot be read")
                    return
                if found is None:
                    self._send(
                        404, message="this gateway serves STOW-RS (POST /studies), QIDO-RS and WADO-RS (GET /studies…) and GET /health"
                    )
                    return
                code, ctype, payload = found
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                route = _STUDIES.match(self.path.split("?", 1)[0])
                if route is None:
                    self._send(404, message="STOW-RS is POST /studies or /studies/{StudyInstanceUID}")
                    return
                source = {"protocol": "STOW", "peer": self.address_string()}
                results: list[tuple[bytes, Refused | None]] = []
                try:
                    boundary = boundary_of(self.headers.get("Content-Type", ""))
                    chunks = body_chunks(self.rfile, self.headers.get("Content-Length"), self.headers.get("Transfer-Encoding"))
                    for part in multipart_parts(chunks, boundary, max_bytes):
                        refusal = store_part(part, receiver, route.group(1), source)
                        if refusal is not None:
                            log.warning(
                                "STOW instance refused", extra={"status": f"0x{refusal.status:04X}", "reason": refusal.reason, **source}
                            )
                        results.append((part.start, refusal))
                except BadRequest as e:
                    if not results:
                        self._send(e.status, message=e.reason)
                        return
                    # Some parts were already stored: they are answered for, and what followed is one failed item.
                    log.warning("STOW request ended badly", extra={"parts": len(results), "reason": e.reason, **source})
                    results.append((b"", Refused(CANNOT_UNDERSTAND, "the rest of the request body is malformed")))
                except OSError as e:  # the peer went away or timed out (TimeoutError is an OSError)
                    log.warning("STOW request body not received", extra={"error_type": type(e).__name__, "parts": len(results), **source})
                    self.close_connection = True
                    return
                if not results:
                    self._send(400, message="multipart body has no part")
                    return
                code, response = stow_response(results)
                self._send(code, response)

        self.httpd = _Server((settings.gateway_host, settings.gateway_http_port), Handler)
        self.httpd.ssl_context = ssl_context
        self.httpd.handshake_timeout_s = settings.gateway_network_timeout_s
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="stow-rs", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        host = host.decode() if isinstance(host, bytes) else host
        scheme = "https" if self.httpd.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}/studies"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
