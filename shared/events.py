"""Event publisher port and its two adapters: a JSON-lines log under the data dir, or EventBridge (boto3).

The workflow's RecordFailure stage publishes "Study Failed" through this port; on AWS the event lands on
the account's default bus (EVENT_BUS_NAME), where rules can route it to a ticketing system or a pager.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Protocol

from shared.aws_errors import translated
from shared.errors import PermanentError, StorageUnavailable

SOURCE = "radstream"
STUDY_FAILED = "Study Failed"
MAX_DETAIL_BYTES = 256 * 1024  # PutEvents' limit for one entry (the whole entry, so stay well inside it)


class EventPublisher(Protocol):
    def publish(self, detail_type: str, detail: dict[str, Any]) -> None: ...


def _encode(detail_type: str, detail: dict[str, Any]) -> str:
    if not detail_type:
        raise PermanentError("an event needs a detail type")
    encoded = json.dumps(detail, separators=(",", ":"), sort_keys=True, default=str)
    if len(encoded.encode()) > MAX_DETAIL_BYTES:
        raise PermanentError(f"event {detail_type!r}: detail of {len(encoded)} bytes is over EventBridge's 256 KB")
    return encoded


class LocalEventLog:
    """One JSON line per event, shaped like the event EventBridge delivers, appended to <data_dir>/events/events.jsonl."""

    def __init__(self, data_dir: Path, source: str = SOURCE) -> None:
        self.path = Path(data_dir) / "events" / "events.jsonl"
        self.source = source
        self._lock = threading.Lock()

    def publish(self, detail_type: str, detail: dict[str, Any]) -> None:
        line = json.dumps(
            {
                "detail-type": detail_type,
                "source": self.source,
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "detail": json.loads(_encode(detail_type, detail)),
            },
            separators=(",", ":"),
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


class EventBridgePublisher:
    """EventBridge PutEvents through a boto3 client that the caller builds (tests pass an emulator's endpoint)."""

    def __init__(self, client: Any, bus_name: str, source: str = SOURCE) -> None:
        self.client = client
        self.bus_name = bus_name
        self.source = source

    def publish(self, detail_type: str, detail: dict[str, Any]) -> None:
        entry = {"Source": self.source, "DetailType": detail_type, "Detail": _encode(detail_type, detail), "EventBusName": self.bus_name}
        with translated(f"event bus {self.bus_name}", "EVENT_BUS_NAME"):
            response = self.client.put_events(Entries=[entry])
        if response.get("FailedEntryCount"):
            code = response["Entries"][0].get("ErrorCode", "unknown")
            raise StorageUnavailable(f"event bus {self.bus_name}: {detail_type!r} not accepted ({code})")
