"""The tests' peers on loopback: the command-line tools (dcmtk, dicom3tools, GDCM) run with a deadline, a FHIR endpoint,
and how Debian's Chromium is started for the console's browser tests and benchmark."""

from __future__ import annotations

import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
