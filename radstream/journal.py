"""The run journal: what `radstream run` (or the gateway) was asked to run, written before it starts, and how each study ended.

<data-dir>/journal/<run>.jsonl holds self-checking lines, `<crc32 of the JSON, 8 hex> <JSON>`:

- a run line: `{"run", "command", "started", "roots", "studies": N}`;
- one plan line per study, `{"planned": study_id, "source", "root"}`, written with the run line in one write, fsynced
  and read back before any study starts (the gateway writes one as it acknowledges each instance);
- one outcome line per study as it ends, `{"study_id", "source", "root", "status", "error_type", "recorded"}`, fsynced
  before the next study's line (shared/atomicfile.py, append_durably).

A line torn, zero-filled or undecodable (what a crash of the machine can leave of a file written but not yet synced,
or a failing disk) fails its check and is skipped with a warning naming the file and the line; nothing that one line
says is needed to read the others. When a journal has lost lines, resume cannot trust it to name every study, so
it also looks at what it can see: the study folders under the run's roots (every intact line names them) and the
images bucket's uploads (radstream/runtime.py, `resume`). Journals of the earlier format (a header line with the
study list, plain JSON lines) are still read.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from shared.atomicfile import append_durably, create_durably
from shared.errors import StorageUnavailable, is_transient
from shared.storage import disk_errors


@dataclass(frozen=True)
class JournalEntry:
    study_id: str
    source: str  # a study folder, or s3://bucket/key of an upload
    root: str | None = None  # the PATH `run` was given (a folder of study folders, or the study folder itself)


def encode_line(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def decode_line(raw: bytes) -> dict[str, Any] | None:
    """A line's record, or None when it fails its check (torn, zero-filled, undecodable, not one of ours)."""
    if raw[:1] == b"{":  # the earlier format: plain JSON, trusted only if it parses whole
        try:
            record = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError):
            return None
        return record if isinstance(record, dict) else None
    checksum, _, body = raw.partition(b" ")
    try:
        if len(checksum) != 8 or int(checksum, 16) != zlib.crc32(body):
            return None
        record = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class Journal:
    """One run's journal file; lines are appended from the worker threads under a lock, each fsynced before it returns."""

    def __init__(self, folder: Path, command: str, entries: Iterable[JournalEntry], roots: Iterable[str] = ()) -> None:
        now = datetime.now(UTC)
        self.path = folder / f"{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}.jsonl"
        self._lock = threading.Lock()
        entries = list(entries)
        head = {"run": self.path.stem, "command": command, "started": now.isoformat(), "roots": sorted(set(roots)), "studies": len(entries)}
        data = encode_line(head) + b"".join(encode_line(_plan(e)) for e in entries)
        with disk_errors(f"writing the journal {self.path}"):  # a full or read-only disk: StorageUnavailable, nothing run
            self._fd = create_durably(self.path)
            try:
                append_durably(self._fd, data, self.path)
                self._verify(len(entries))
            except BaseException:
                os.close(self._fd)
                try:
                    self.path.unlink(missing_ok=True)  # a plan that is not whole on disk promises nothing
                except OSError:
                    pass  # a read-only disk: the cut plan stays, and resume skips its torn lines
                raise

    def _verify(self, studies: int) -> None:
        """Read the plan back before any study starts: a journal that cannot say what it was asked is a disk fault, now."""
        lines, damaged = read_journal(self.path)
        planned = sum("planned" in line for _, line in lines)
        if damaged or planned != studies:
            raise StorageUnavailable(
                f"journal {self.path}: its plan did not read back whole ({planned} of {studies} studies); "
                "the disk is failing: nothing was run"
            )

    def _append(self, record: dict[str, Any]) -> None:
        with self._lock:  # one line at a time, each on disk before the next: the sync log and a reader see whole lines
            append_durably(self._fd, encode_line(record), self.path)

    def planned(self, entry: JournalEntry) -> None:
        """A study added after the start (an instance the gateway acknowledges): on disk before the caller says Success."""
        self._append(_plan(entry))

    def ended(self, study_id: str, source: str, status: str, error_type: str | None, recorded: bool, root: str | None = None) -> None:
        self._append(
            {"study_id": study_id, "source": source, "root": root, "status": status, "error_type": error_type, "recorded": recorded}
        )

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _plan(entry: JournalEntry) -> dict[str, Any]:
    return {"planned": entry.study_id, "source": entry.source, "root": entry.root}


def read_journal(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
    """(line number from 1, record) for each intact line, and the numbers of the lines that failed their check."""
    try:
        data = path.read_bytes()
    except OSError:
        return [], [0]
    raws = data.split(b"\n")
    if raws and raws[-1] == b"":
        raws.pop()
    lines, damaged = [], []
    for number, raw in enumerate(raws, start=1):
        record = decode_line(raw.rstrip(b"\r"))
        if record is None:
            damaged.append(number)
        else:
            lines.append((number, record))
    return lines, damaged


@dataclass
class Recovery:
    """What the journals say resume should run, what they call finished, and what they could not say."""

    unfinished: list[JournalEntry] = field(default_factory=list)
    finished: dict[str, JournalEntry] = field(default_factory=dict)  # resume checks their records before it trusts them
    roots: set[str] = field(default_factory=set)  # of journals that lost lines: resume looks in these folders itself
    warnings: list[str] = field(default_factory=list)
    blind: bool = False  # a journal lost every line: only the uploads can say what it held


def recover(folder: Path) -> Recovery:
    """Every study some journal names, split by its latest outcome (missing, unrecorded or transient: unfinished), oldest run first."""
    planned: dict[str, JournalEntry] = {}
    last: dict[str, dict[str, Any]] = {}
    recovery = Recovery()
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        lines, damaged = read_journal(path)
        roots: set[str] = set()
        expected = plans = None
        for _, line in lines:
            roots.update(r for r in [*line.get("roots", []), line.get("root")] if isinstance(r, str) and r)
            if "run" in line and isinstance(line.get("studies"), list):  # the earlier format's header
                for item in line["studies"]:
                    if isinstance(item, dict) and isinstance(item.get("study_id"), str) and isinstance(item.get("source"), str):
                        planned[item["study_id"]] = JournalEntry(item["study_id"], item["source"])
                        last.pop(item["study_id"], None)  # a newer plan of the same study waits for its own outcome
            elif "run" in line:
                expected, plans = line.get("studies"), 0
            elif isinstance(line.get("planned"), str) and isinstance(line.get("source"), str):
                planned[line["planned"]] = JournalEntry(line["planned"], line["source"], line.get("root"))
                last.pop(line["planned"], None)
                plans = (plans or 0) + 1
            elif isinstance(line.get("study_id"), str) and "status" in line:
                last[line["study_id"]] = line
                if line["study_id"] not in planned and isinstance(line.get("source"), str):  # its plan line was lost
                    planned[line["study_id"]] = JournalEntry(line["study_id"], line["source"], line.get("root"))
        name = f"journal/{path.name}"
        if damaged:
            shown = ", ".join(map(str, damaged[:5])) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
            recovery.warnings.append(f"{name}: line(s) {shown} torn or unreadable, skipped")
        if damaged or (isinstance(expected, int) and plans is not None and plans < expected):
            if roots:
                recovery.roots |= roots
            else:
                recovery.blind = True
                recovery.warnings.append(f"{name}: no intact line names its study folders; resume runs what the uploads show")
    for study_id, entry in planned.items():
        if _finished(last.get(study_id)):
            recovery.finished[study_id] = entry
        else:
            recovery.unfinished.append(entry)
    return recovery


def unfinished(folder: Path) -> list[JournalEntry]:
    """Every study some journal names whose latest outcome is missing, unrecorded or transient, oldest run first."""
    return recover(folder).unfinished


def _finished(line: dict[str, Any] | None) -> bool:
    if line is None or not line.get("recorded"):
        return False
    return line.get("status") == "succeeded" or not is_transient(line.get("error_type"))
