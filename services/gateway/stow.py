"""DICOMweb STOW-RS (PS3.18 10.5): `POST /studies` with multipart/related; type="application/dicom".

Python's own http.server (ThreadingHTTPServer), not a framework: the endpoint is one route whose body is
a multipart of DICOM files; the parts are split on the boundary here, byte-exact (the email package's
parser reflows line endings of text parts, and a framework would add a dependency and a worker model
for one POST). With a certificate (GATEWAY_TLS_CERT_FILE/KEY_FILE) it serves HTTPS itself (EKS: a mounted
Secret); without, it binds to loopback by default. `GET /health` answers the probes. Responses follow
PS3.18 10.5.3: 200 when every instance was stored, 202 when some were, 409 when none was, with an
application/dicom+json body listing the Referenced SOP Sequence and the Failed SOP Sequence (Failure
Reason: the DIMSE status).
"""
from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.gateway.domain import Receiver, Refused
from shared.settings import Settings

log = logging.getLogger("radstream.gateway")
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The DICOM parts of a multipart/related body, each byte-exact (RFC 2046: CRLF before each delimiter belongs to it)."""
    if not content_type.lower().startswith("multipart/related"):
        raise BadRequest(415, "Content-Type must be multipart/related; type=\"application/dicom\"")
    boundary = _BOUNDARY.search(content_type)
    part_type = _TYPE.search(content_type)
    if not boundary:
        raise BadRequest(400, "multipart/related without a boundary")
    if part_type and part_type.group(1).lower() != "application/dicom":
        raise BadRequest(415, "only type=\"application/dicom\" parts are accepted (no metadata+bulkdata STOW)")
    delimiter = b"--" + boundary.group(1).encode("ascii")
    chunks = body.split(b"\r\n" + delimiter)
    first = chunks[0]
    if not first.startswith(delimiter):
        start = first.find(delimiter)
        if start < 0:
            raise BadRequest(400, "multipart body has no part")
        first = first[start:]
    chunks[0] = first[len(delimiter):]
    parts = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        headers, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest(400, "multipart part without a header/body separator")
        ctype = [line.split(b":", 1)[1].strip().lower() for line in headers.split(b"\r\n") if line.lower().startswith(b"content-type:")]
        if ctype and not ctype[0].startswith(b"application/dicom"):
            raise BadRequest(415, "a part is not application/dicom")
        parts.append(content)
    if not parts:
        raise BadRequest(400, "multipart body has no part")
    return parts


def _uid_of(data: bytes, keyword: str) -> str | None:
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=[keyword])
        value = ds.get(keyword)
        return str(value) if value else None
    except Exception:  # noqa: BLE001 - the response just lacks the UID
        return None


def stow_response(results: list[tuple[bytes, Refused | None]]) -> tuple[int, dict[str, Any]]:
    referenced, failed = [], []
    for data, refusal in results:
        item: dict[str, Any] = {}
        for tag, keyword in (("00081150", "SOPClassUID"), ("00081155", "SOPInstanceUID")):
            uid = _uid_of(data, keyword)
            if uid:
                item[tag] = {"vr": "UI", "Value": [uid]}
        if refusal is None:
            referenced.append(item)
        else:
            failed.append(item | {"00081197": {"vr": "US", "Value": [refusal.status]}})
    body: dict[str, Any] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    code = 200 if not failed else 202 if referenced else 409
    return code, body


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
                log.warning("STOW TLS handshake failed from %s (%s)", client_address[0] if isinstance(client_address, tuple) else "?", type(e).__name__)
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

    def __init__(self, settings: Settings, receiver: Receiver, ssl_context: ssl.SSLContext | None = None,
                 healthy: Callable[[], bool] | None = None) -> None:
        max_bytes = settings.gateway_max_stow_bytes

        class Handler(BaseHTTPRequestHandler):
            server_version = "RadStreamGateway/1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the request line only, no body
                log.info("STOW %s %s", self.address_string(), format % args)

            def _send(self, code: int, body: dict[str, Any] | None = None, message: str | None = None) -> None:
                if body is None:
                    payload, ctype = (message or "").encode(), "text/plain; charset=utf-8"
                else:
                    payload, ctype = json.dumps(body).encode(), "application/dicom+json"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_request(self, code: object = "-", size: object = "-") -> None:
                if self.path != "/health":  # a probe every few seconds would drown the request log
                    super().log_request(code, size)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] != "/health":
                    self._send(404, message="this gateway serves POST /studies (STOW-RS) and GET /health")
                    return
                ok = healthy() if healthy is not None else True
                self._send(200 if ok else 503, message="ok" if ok else "the DIMSE listener is not serving")

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/studies":
                    self._send(404, message="STOW-RS is POST /studies")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or -1)
                except ValueError:
                    length = -1
                if length < 0:
                    self._send(411, message="Content-Length is required")
                    return
                if length > max_bytes:
                    self._send(413, message=f"request over GATEWAY_MAX_STOW_BYTES ({max_bytes})")
                    return
                body = self.rfile.read(length)
                try:
                    parts = split_multipart(body, self.headers.get("Content-Type", ""))
                except BadRequest as e:
                    self._send(e.status, message=e.reason)
                    return
                results: list[tuple[bytes, Refused | None]] = []
                for data in parts:
                    try:
                        receiver.receive(data, source=f"STOW {self.address_string()}")
                        results.append((data, None))
                    except Refused as e:
                        log.warning("STOW instance refused status=0x%04X reason=%s", e.status, e.reason)
                        results.append((data, e))
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
        scheme = "https" if self.httpd.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}/studies"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
