"""`radstream console`: the pages served read-only on a loopback port by the standard library's threading HTTP server.

GET and HEAD only; no scripts in any page (Content-Security-Policy `script-src 'none'`); study ids are checked
against a strict pattern before they reach a key; errors say what is missing, never a stack trace or a setting.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from radstream.console.data import ConsoleData, StudyFilter
from radstream.console.pages import DEFAULT_DAYS, RANGES, Pages, ServerLinks
from shared.errors import ObjectNotFound, RadStreamError

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("radstream.console")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STUDY_FILES = {
    "result.json": "application/json",
    "report.txt": "text/plain; charset=utf-8",
    "exports.json": "application/json",
    "error.json": "application/json",
}


def _int(params: dict[str, list[str]], name: str, default: int, allowed: tuple[int, ...] | None = None) -> int:
    try:
        value = int(params.get(name, [str(default)])[0])
    except ValueError:
        return default
    return value if allowed is None or value in allowed else default


class ConsoleHandler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "RadStreamConsole"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _refuse(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED, b"read-only console: GET only\n", "text/plain; charset=utf-8", extra={"Allow": "GET, HEAD"}
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, head: bool = False, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _html(self, text: str, head: bool, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8", head)

    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.split("/") if p]
        pages, links = self.server.pages, ServerLinks()
        try:
            if not parts:
                self._send(HTTPStatus.FOUND, b"", "text/plain", head, extra={"Location": "/studies"})
            elif parts == ["studies"]:
                flt = StudyFilter(
                    status=params.get("status", [""])[0] if params.get("status", [""])[0] in ("succeeded", "failed") else "",
                    finding=params.get("finding", [""])[0][:64],
                    text=params.get("q", [""])[0][:128],
                    day=params.get("date", [""])[0][:10],
                    days=_int(params, "days", 30, RANGES),
                )
                self._html(pages.studies(links, flt, _int(params, "page", 1)), head)
            elif parts == ["dashboard"]:
                self._html(pages.dashboard(links, _int(params, "days", DEFAULT_DAYS, RANGES)), head)
            elif parts == ["models"]:
                self._html(pages.models(links, _int(params, "days", 30, RANGES)), head)
            elif len(parts) == 2 and parts[0] == "study":
                self._html(pages.study(links, parts[1]), head)
            elif len(parts) == 3 and parts[0] == "study" and parts[2] == "image.png":
                self._send(HTTPStatus.OK, self.server.data.image(parts[1]).png, "image/png", head)
            elif len(parts) == 3 and parts[0] == "study" and parts[2] == "overlay.png":
                detail = self.server.data.study(parts[1])
                image = self.server.data.image(parts[1], detail.document)
                self._send(HTTPStatus.OK, image.overlay_png(detail.document.get("detections", [])), "image/png", head)
            elif len(parts) == 3 and parts[0] == "study" and parts[2] in STUDY_FILES:
                self._send(HTTPStatus.OK, self.server.data.raw(parts[1], parts[2]), STUDY_FILES[parts[2]], head)
            elif len(parts) == 2 and parts[0] == "query" and parts[1].endswith(".json"):
                body = pages.query_json(parts[1][: -len(".json")], _int(params, "days", DEFAULT_DAYS, RANGES))
                self._send(HTTPStatus.OK, body.encode(), "application/json", head)
            elif parts == ["static", "console.css"]:
                self._send(HTTPStatus.OK, (STATIC / "console.css").read_bytes(), "text/css; charset=utf-8", head)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", head)
        except ObjectNotFound as e:
            self._send(HTTPStatus.NOT_FOUND, f"not found: {e}\n".encode(), "text/plain; charset=utf-8", head)
        except RadStreamError as e:
            log.warning("console request failed: %s", e)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"{e.error_name}: {e}\n".encode(), "text/plain; charset=utf-8", head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: ConsoleData, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data = data
        self.pages = Pages(data)
        super().__init__((host, port), ConsoleHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}/"

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="radstream-console", daemon=True)
        thread.start()
        return thread


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
