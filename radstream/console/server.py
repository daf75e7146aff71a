"""`radstream console`: the pages served on a loopback port by the standard library's threading HTTP server.

GET and HEAD, and one POST (acknowledging a critical-finding notification, from the console's own page: its trail is
appended to, never rewritten); no scripts in any page (Content-Security-Policy `script-src 'none'`); study ids are
checked against a strict pattern before they reach a key; errors say what is missing, never a stack trace or a setting.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pydantic import ValidationError

from radstream.console.data import ConsoleData, StudyFilter, check_study_id
from radstream.console.pages import DEFAULT_DAYS, RANGES, Pages, ServerLinks
from radstream.feedback import FeedbackItem, FeedbackRefused, record_feedback
from shared.errors import ObjectNotFound, RadStreamError

MAX_FEEDBACK_BYTES = 4096

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
        log.info("console request", extra={"peer": self.address_string(), "request": format % args})

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _refuse(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED, b"read-only console: GET only\n", "text/plain; charset=utf-8", extra={"Allow": "GET, HEAD"}
        )

    do_PUT = do_DELETE = do_PATCH = _refuse

    def do_POST(self) -> None:
        """The console's writes, each only from its own pages (Origin, or "null" with Sec-Fetch-Site under its no-referrer
        policy: another site's page cannot write for a person), each a small form: acknowledging a study's critical-finding
        notification (who; when is the server's clock), appended to its trail and never deleted; and, with `radstream
        console --feedback`, a reader's verdict on a study's finding or box (radstream.feedback; the lake object keeps who
        and when)."""
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        action = parts[2] if len(parts) == 3 and parts[0] == "study" else None
        if action not in ("acknowledge", "feedback") or (action == "feedback" and not self.server.feedback):
            return self._refuse()
        origin, site = self.headers.get("Origin"), self.headers.get("Sec-Fetch-Site")
        if origin != self.server.url.rstrip("/") and not (origin in (None, "null") and site == "same-origin"):
            return self._send(HTTPStatus.FORBIDDEN, f"{action} only from the console's own pages\n".encode(), "text/plain; charset=utf-8")
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_FEEDBACK_BYTES:
            return self._send(HTTPStatus.BAD_REQUEST, b"a form of at most 4 KB\n", "text/plain; charset=utf-8")
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode("utf-8", "replace")).items()}
        if action == "acknowledge":
            self._acknowledge(parts[1], form)
        else:
            self._feedback(parts[1], form)

    def _acknowledge(self, study_id: str, form: dict[str, str]) -> None:
        rule, by = form.get("rule", "")[:40], form.get("by", "").strip()[:64]
        try:
            self.server.data.acknowledge(study_id, rule, by)
        except ObjectNotFound as e:
            return self._send(HTTPStatus.NOT_FOUND, f"not found: {e}\n".encode(), "text/plain; charset=utf-8")
        except RadStreamError as e:
            return self._send(HTTPStatus.BAD_REQUEST, f"{e}\n".encode(), "text/plain; charset=utf-8")
        log.info("notification acknowledged", extra={"study_id": study_id, "rule": rule})
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", extra={"Location": f"/study/{quote(study_id)}#notifications"})

    def _feedback(self, study_id: str, form: dict[str, str]) -> None:
        try:
            check_study_id(study_id)
            item = FeedbackItem.model_validate(
                {k: form.get(k, "") for k in ("label", "verdict", "present", "box_index")} | {"study_id": study_id}
            )
            key, _ = record_feedback(
                self.server.data.store,
                [item],
                reader=form.get("reader", "").strip(),
                source="console",
                results_bucket=self.server.data.results_bucket,
                lake_bucket=self.server.data.lake_bucket,
            )
        except (FeedbackRefused, ValidationError, ObjectNotFound) as e:
            message = str(e) if isinstance(e, FeedbackRefused) else "the form needs label, verdict and reader"
            return self._send(HTTPStatus.BAD_REQUEST, f"feedback not recorded: {message}\n".encode(), "text/plain; charset=utf-8")
        log.info(
            "feedback recorded",
            extra={"study_id": study_id, "label": item.label, "verdict": item.verdict, "reader": form.get("reader"), "key": key},
        )
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", extra={"Location": f"/study/{quote(study_id)}?feedback=recorded"})

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
            elif parts == ["worklist"]:
                self._html(pages.worklist(links), head)
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
            log.warning("console request failed", extra={"error_type": e.error_name, "reason": str(e)})
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"{e.error_name}: {e}\n".encode(), "text/plain; charset=utf-8", head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: ConsoleData, host: str = "127.0.0.1", port: int = 0, feedback: bool = False) -> None:
        self.data = data
        self.feedback = feedback  # radiologists' verdicts accepted (radstream console --feedback)
        self.pages = Pages(data, feedback=feedback)
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
