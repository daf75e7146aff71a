"""The run journal: what `radstream run` was asked to run, written before it starts, and how each study ended.

<data-dir>/journal/<run>.jsonl: the first line names every study of the run (its id and its folder); each
later line is one study's terminal outcome. A line is flushed as soon as the study ends, so a SIGKILL loses
at most the studies that were in flight, and those have no line. `resume` reads every journal and runs
again each study whose latest line is missing or a transient failure (the ones a rerun can fix).
"""
from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from shared.errors import is_transient


@dataclass(frozen=True)
class JournalEntry:
    study_id: str
    source: str  # a study folder, or s3://bucket/key of an upload


class Journal:
    """One run's journal file; lines are appended from the worker threads under a lock."""

    def __init__(self, folder: Path, command: str, entries: Iterable[JournalEntry]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.now(timezone.utc)
        self.path = folder / f"{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}.jsonl"
        self._lock = threading.Lock()
        self._file: IO[str] = self.path.open("a")
        header = {"run": self.path.stem, "command": command, "started": now.isoformat(),
                  "studies": [{"study_id": e.study_id, "source": e.source} for e in entries]}
        self._write(header)

    def _write(self, line: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._file.flush()  # in the page cache: a killed process loses nothing it wrote

    def ended(self, study_id: str, source: str, status: str, error_type: str | None, recorded: bool) -> None:
        self._write({"study_id": study_id, "source": source, "status": status, "error_type": error_type, "recorded": recorded})

    def close(self) -> None:
        with self._lock:
            self._file.close()


def unfinished(folder: Path) -> list[JournalEntry]:
    """Every study some journal names whose latest outcome is missing, unrecorded or transient, oldest run first."""
    planned: dict[str, JournalEntry] = {}
    last: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for number, text in enumerate(path.read_text().splitlines()):
            try:
                line = json.loads(text)
            except ValueError:
                continue  # a line cut short by a crash: that study has no outcome, so it is run again
            if number == 0 and "studies" in line:
                for item in line["studies"]:
                    planned[item["study_id"]] = JournalEntry(item["study_id"], item["source"])
                    last.pop(item["study_id"], None)  # a newer plan of the same study waits for its own outcome
            elif "status" in line:
                last[line["study_id"]] = line
    return [entry for study_id, entry in planned.items() if not _finished(last.get(study_id))]


def _finished(line: dict[str, Any] | None) -> bool:
    if line is None or not line.get("recorded"):
        return False
    return line["status"] == "succeeded" or not is_transient(line.get("error_type"))
