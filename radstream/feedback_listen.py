"""Final reports arriving live, as feedback: an MLLP listener for HL7 v2 ORU^R01 from a RIS and a FHIR endpoint for a
POSTed DiagnosticReport (or a transaction Bundle holding one). Both parse and record through radstream.feedback, the
very code `radstream models feedback <file>` runs; this module only speaks the two protocols.

MLLP (HL7 v2 original-mode acknowledgement): AA once the feedback and its receipt are durably written; AE for a message
that cannot be understood or is no feedback (MSA-3 and ERR-8 say why); AR when the lake cannot take it now (the sender
keeps the message and retries). A message the listener has recorded before (same sender and MSH-10) is acknowledged AA
and not recorded again.

FHIR (R5 REST): POST [base]/DiagnosticReport answers 201 Created with Location after the durable write (200 with the
same Location for a report recorded before); POST [base] with a transaction or batch Bundle answers 200 with a
transaction-response Bundle whose entry says 201 Created and the Location; 400 for a body that is no FHIR resource,
422 for a report that is not feedback (not final, no study, no conclusionCode), 503 when the lake cannot take it now;
each error with an OperationOutcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from radstream.cli_args import add_data_dir
from radstream.feedback import FeedbackRefused, FinalReport, NotAReport, parse_fhir_report, parse_hl7_report, record_report
from shared.errors import RetryableError
from shared.storage import ObjectStore

log = logging.getLogger("radstream.feedback_listen")
FHIR_JSON = "application/fhir+json"
MAX_BODY = 4 * 1024 * 1024  # a DiagnosticReport with coded conclusions is kilobytes; a larger body is refused


@dataclass
class FeedbackReceiver:
    """Parses and records final reports into the lake, one at a time (the receipt check and its writes are one step)."""

    store: ObjectStore
    results_bucket: str = "results"
    lake_bucket: str = "telemetry"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, parse: Callable[[ObjectStore, str], FinalReport]) -> tuple[FinalReport, str, int]:
        """(the report, its feedback object's key, rows recorded now: 0 for a repeat). Raises FeedbackRefused (NotAReport)
        for input that is no feedback, RetryableError (StorageUnavailable) or OSError when the lake cannot take it now."""
        with self._lock:
            report = parse(self.store, self.results_bucket)
            key, rows = record_report(report, self.store, results_bucket=self.results_bucket, lake_bucket=self.lake_bucket)
        log.info(
            "final report recorded as feedback",
            extra={"source": report.source, "receipt": report.receipt[:12], "rows": rows, "repeat": rows == 0},
        )
        return report, key, rows


# --- HL7 v2 over MLLP ---
# HL7 table 0357 (message error condition codes) for ERR-3.
ERR_UNSUPPORTED = "200^Unsupported message type^HL70357"
ERR_APPLICATION = "207^Application internal error^HL70357"
ERR_DATA = "102^Data type error^HL70357"


def hl7_ack(text: str, code: str, reason: str = "", error: str = "") -> str:
    """The original-mode ACK of a message: MSH (sender and receiver swapped), MSA-1 code, MSA-2 the message's control
    id, MSA-3 the reason; with AE / AR an ERR segment (ERR-3 HL7 table 0357, ERR-4 severity E, ERR-8 the reason)."""
    import hl7

    try:
        message = hl7.parse(text.replace("\r\n", "\r").replace("\n", "\r"))
        ack = message.create_ack(code, application="RADSTREAM")
        escape = message.escape
    except Exception:  # no MSH to answer from: an ACK that names no message (MSA-2 empty)
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        ack = hl7.parse(f"MSH|^~\\&|RADSTREAM||||{now}||ACK|{hl7.generate_message_control_id()}|P|2.5.1\rMSA|{code}|")
        escape = ack.escape
    segments = str(ack).split("\r")
    if reason:
        msa = [i for i, s in enumerate(segments) if s.startswith("MSA")][0]
        fields = segments[msa].split("|")
        fields += [""] * (4 - len(fields))
        fields[3] = escape(reason[:80])  # MSA-3 text message: ST, 80 characters
        segments[msa] = "|".join(fields)
        segments.append(f"ERR|||{error or ERR_APPLICATION}|E||||{escape(reason)}")
    return "\r".join(s for s in segments if s)


def answer_hl7(receiver: FeedbackReceiver, text: str) -> str:
    """The ACK for one MLLP message, after the feedback is durably written (AA), or why not (AE, AR)."""
    try:
        receiver.receive(lambda store, bucket: parse_hl7_report(text, store, bucket))
    except NotAReport as e:
        return hl7_ack(text, "AE", str(e), ERR_DATA)
    except FeedbackRefused as e:
        error = ERR_UNSUPPORTED if "not an ORU^R01" in str(e) else ERR_APPLICATION
        return hl7_ack(text, "AE", str(e), error)
    except (RetryableError, OSError) as e:
        log.warning("final report not recorded now, the sender retries", extra={"error_type": type(e).__name__})
        return hl7_ack(text, "AR", f"feedback store unavailable ({type(e).__name__}); send again", ERR_APPLICATION)
    return hl7_ack(text, "AA")


class MllpListener:
    """An MLLP server (the `hl7` package's asyncio streams) on its own event loop thread."""

    def __init__(self, receiver: FeedbackReceiver, host: str = "127.0.0.1", port: int = 0) -> None:
        self.receiver = receiver
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mllp-feedback", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(host, port), self._loop).result(timeout=30)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def _start(self, host: str, port: int) -> asyncio.Server:
        import hl7.mllp

        return await hl7.mllp.start_hl7_server(self._client, host, port, encoding="utf-8", encoding_errors="replace")

    async def _client(self, reader: Any, writer: Any) -> None:
        import hl7.mllp

        try:
            while True:
                try:
                    block = await reader.readblock()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the sender closed the connection
                except (hl7.mllp.InvalidBlockError, ValueError):
                    log.warning("MLLP frame without a start block or over the size limit: connection closed")
                    return
                ack = await asyncio.to_thread(answer_hl7, self.receiver, block.decode("utf-8", "replace"))
                writer.writeblock(ack.encode("utf-8"))
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


# --- FHIR REST ---
def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """A FHIR OperationOutcome with one issue (`code` from the issue-type value set: invalid, processing, transient...)."""
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}


def answer_fhir(receiver: FeedbackReceiver, path: str, body: bytes, base: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(HTTP status, FHIR resource, headers) for one POST."""
    route = path.rstrip("/").split("?")[0]
    if route not in ("", "/DiagnosticReport"):
        return (
            404,
            operation_outcome("not-supported", "POST a DiagnosticReport to [base]/DiagnosticReport or a transaction Bundle to [base]"),
            {},
        )
    try:
        raw = json.loads(body)
    except ValueError:
        return 400, operation_outcome("structure", "the body is not JSON"), {}
    is_bundle = isinstance(raw, dict) and raw.get("resourceType") == "Bundle"
    if route == "/DiagnosticReport" and is_bundle:
        return 400, operation_outcome("invalid", "POST a Bundle to the base URL, a DiagnosticReport to [base]/DiagnosticReport"), {}
    try:
        report, _, rows = receiver.receive(lambda store, bucket: parse_fhir_report(raw, store, bucket))
    except NotAReport as e:
        return 400, operation_outcome("invalid", str(e)), {}
    except FeedbackRefused as e:
        return 422, operation_outcome("business-rule", str(e)), {}
    except (RetryableError, OSError) as e:
        log.warning("final report not recorded now, the client retries", extra={"error_type": type(e).__name__})
        return 503, operation_outcome("transient", f"feedback store unavailable ({type(e).__name__}); send again"), {"Retry-After": "30"}
    # The report itself is not kept (it names the interpreter and may carry the patient): its id is its receipt.
    location = f"{base}/DiagnosticReport/{report.receipt[:32]}"
    status = "201 Created" if rows else "200 OK"
    if is_bundle:
        response = {
            "resourceType": "Bundle",
            "type": f"{raw.get('type')}-response",
            "entry": [{"response": {"status": status, "location": location}}],
        }
        return 200, response, {}
    outcome = operation_outcome("informational", f"{rows} feedback rows recorded" if rows else "already recorded", "information")
    return (201 if rows else 200), outcome, {"Location": location}


class _FhirHandler(BaseHTTPRequestHandler):
    server: FhirServer

    def log_message(self, format: str, *args: Any) -> None:
        log.info("fhir request", extra={"request": format % args})

    def _send(self, status: int, resource: dict[str, Any], headers: dict[str, str]) -> None:
        body = json.dumps(resource).encode()
        self.send_response(status)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, operation_outcome("too-costly", f"a body over {MAX_BODY} bytes"), {})
            return
        self._send(*answer_fhir(self.server.receiver, self.path, self.rfile.read(length), self.server.base))

    def do_GET(self) -> None:
        if self.path.rstrip("/").split("?")[0] == "/metadata":
            self._send(200, capability_statement(), {})
            return
        self._send(405, operation_outcome("not-supported", "this endpoint takes final reports (POST); it keeps no report to read"), {})


def capability_statement() -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "date": "2026-12-08",
        "fhirVersion": "5.0.0",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": "DiagnosticReport", "interaction": [{"code": "create"}]}],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }


class FhirServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: FeedbackReceiver, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _FhirHandler)
        self.receiver = receiver
        self.base = f"http://{host}:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name="fhir-feedback", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(30)


def add_parser(models_sub: Any) -> None:
    listen = models_sub.add_parser(
        "listen", help="receive final reports live as feedback: HL7 ORU^R01 over MLLP and/or FHIR DiagnosticReport over HTTP"
    )
    listen.add_argument("--mllp", metavar="HOST:PORT", help="MLLP listener address (e.g. 0.0.0.0:2575)")
    listen.add_argument("--fhir", metavar="HOST:PORT", help="FHIR endpoint address (e.g. 127.0.0.1:8090)")
    add_data_dir(listen)
    listen.set_defaults(func=cmd_listen)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def cmd_listen(args: Any) -> int:
    import sys
    from pathlib import Path

    from shared.settings import Settings
    from shared.storage import LocalObjectStore

    if not args.mllp and not args.fhir:
        print("radstream: say --mllp HOST:PORT, --fhir HOST:PORT or both", file=sys.stderr)
        return 2
    settings = Settings()
    receiver = FeedbackReceiver(LocalObjectStore(Path(args.data_dir)), settings.results_bucket, settings.telemetry_bucket)
    servers: list[MllpListener | FhirServer] = []
    try:
        if args.mllp:
            mllp = MllpListener(receiver, *_address(args.mllp))
            servers.append(mllp)
            print(f"MLLP: HL7 ORU^R01 final reports on {mllp.host}:{mllp.port}", flush=True)
        if args.fhir:
            fhir = FhirServer(receiver, *_address(args.fhir))
            servers.append(fhir)
            print(f"FHIR: POST DiagnosticReport to {fhir.base}/DiagnosticReport (or a Bundle to {fhir.base})", flush=True)
        print(f"feedback goes to {Path(args.data_dir) / settings.telemetry_bucket / 'feedback'}; Ctrl-C stops", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"radstream: cannot listen: {e}", file=sys.stderr)
        return 2
    finally:
        for server in servers:
            server.close()
    return 0
