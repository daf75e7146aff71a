"""A RIS's HL7 interface for the tests: an MLLP listener on a free loopback port that validates every message strictly
with hl7apy, files each control id once (a repeat is acknowledged, not filed again: what RIS engines do), and answers
as it is told: AA, AE, AR, a dropped connection, or holding the ACK until released."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

START, END = b"\x0b", b"\x1c\x0d"


@dataclass
class Received:
    control_id: str
    er7: str
    at: float  # time.time()
    valid: bool
    error: str | None = None


@dataclass
class MllpPeer:
    """`script`: how to answer the first messages, in order (ack, AE, AR, drop, hold); then `default`."""

    script: list[str] = field(default_factory=list)
    default: str = "ack"
    received: list[Received] = field(default_factory=list)
    filed: dict[str, str] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    got_one: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self.release.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> MllpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            buffer = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while END in buffer:
                    frame, buffer = buffer.split(END, 1)
                    if not self._answer(conn, frame[frame.find(START) + 1 :].decode()):
                        return

    def _answer(self, conn: socket.socket, er7: str) -> bool:
        try:
            message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            message.validate()
            control_id, valid, error = str(message.msh.msh_10.value), True, None
        except Exception as e:  # recorded, and answered AE: the tests assert every message was valid
            control_id, valid, error = "?", False, f"{type(e).__name__}: {e}"
        with self._lock:
            self.received.append(Received(control_id, er7, time.time(), valid, error))
            action = self.script.pop(0) if self.script else self.default
        self.got_one.set()
        if action == "drop":
            return False
        if action == "hold":
            self.release.wait(60)
            action = "ack"
        code = {"ack": "AA"}.get(action, action) if valid else "AE"
        if code == "AA":
            with self._lock:
                self.filed.setdefault(control_id, er7)
        ack = f"MSH|^~\\&|RIS|HOSPITAL|RADSTREAM|RADSTREAM|{time.strftime('%Y%m%d%H%M%S')}||ACK^R01^ACK|A{control_id[:19]}|P|2.5.1\rMSA|{code}|{control_id}\r"
        try:
            conn.sendall(START + ack.encode() + END)
        except OSError:
            return False
        return True
