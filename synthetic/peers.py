"""The tests' peers on loopback: the command-line tools (dcmtk, dicom3tools, GDCM) run with a deadline, a FHIR endpoint,
and how Debian's Chromium is started for the console's browser tests and benchmark."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]


# Headless, and quiet on the network: no QUIC, no background fetches, no component updates, no sync.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def start_console(
    data_dir: Path, *extra: str, deadline_s: float, stderr: int | IO[str] | None = None
) -> tuple[subprocess.Popen[str], str | None, list[str]]:
    """`radstream console` as a user starts it (no RADSTREAM_* settings), on a free loopback port: the process, the URL
    its first line names, and that line. No URL within deadline_s: None, and the process is killed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "radstream.cli", "console", "--data-dir", str(data_dir), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("RADSTREAM_")},
    )
    assert process.stdout is not None
    stdout = process.stdout
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(deadline_s)
    match = re.search(r"http://127\.0\.0\.1:\d+/", lines[0] if lines else "")
    if match is None:
        process.kill()
        return process, None, lines
    return process, match.group(0), lines


def send_c_store(port: int, called_ae: str, ds: Any, calling_ae: str = "PYNETDICOM") -> Any:
    """One C-STORE of `ds` (in its own transfer syntax) over a fresh association to 127.0.0.1:port, as a modality sends
    it: the response's status data set."""
    from pynetdicom import AE

    scu = AE(ae_title=calling_ae)
    scu.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = scu.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} (dcmtk, dicom3tools or libgdcm-tools) is not installed: `make dcmtk` installs it"
    return path


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class Endpoint:
    """A loopback HTTP server answering every POST with `status`; it keeps what it received."""

    def __init__(self, status: int = 201) -> None:
        self.status = status
        self.received: list[tuple[str, bytes]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.received.append((self.headers.get("Content-Type", ""), body))
                self.send_response(endpoint.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir/Bundle"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
