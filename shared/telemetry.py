"""Telemetry sink port and adapters: a local lake laid out as Firehose lays it out (buffered as Firehose buffers), or Kinesis."""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Protocol

from shared.atomicfile import append_durably, fsync_dir, make_dirs
from shared.contracts import TelemetryRecord
from shared.aws_errors import translated
from shared.errors import StorageUnavailable
from shared.storage import ObjectStore, disk_errors

LAKE_PREFIX = "telemetry"


class TelemetrySink(Protocol):
    def send(self, records: Sequence[TelemetryRecord]) -> int: ...


def partition_prefix(time: datetime) -> str:
    """Firehose's dynamic partitioning in template.yaml writes the same dt=/hour= layout (UTC)."""
    t = time.astimezone(UTC)
    return f"{LAKE_PREFIX}/dt={t:%Y-%m-%d}/hour={t:%H}/"


def to_ndjson(records: Sequence[TelemetryRecord]) -> bytes:
    return b"".join(r.model_dump_json().encode() + b"\n" for r in records)


class LocalLakeSink:
    """One gzip NDJSON object per batch and partition, named like Firehose's delivery objects."""

    def __init__(self, store: ObjectStore, bucket: str, stream_name: str = "radstream-telemetry") -> None:
        self.store = store
        self.bucket = bucket
        self.stream_name = stream_name

    def send(self, records: Sequence[TelemetryRecord]) -> int:
        by_partition: dict[str, list[TelemetryRecord]] = defaultdict(list)
        for record in records:
            by_partition[partition_prefix(record.time)].append(record)
        now = datetime.now(UTC)
        for prefix, batch in by_partition.items():
            key = f"{prefix}{self.stream_name}-1-{now:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}.json.gz"
            self.store.put_bytes(self.bucket, key, gzip.compress(to_ndjson(batch), mtime=0), content_type="application/gzip")
        return len(records)


# --- the local Firehose: a buffer by size and by time, one delivery object per buffer and partition ---------------

BUFFER_DIR = ".buffer"  # inside the lake root (<data dir>/<telemetry bucket>), beside telemetry/; never read by a query
_BUFFER_SUFFIX = ".ndjson"
_OPENING_SUFFIX = ".opening"  # a buffer being created: locked, then renamed to *.ndjson (recovery never sees it unlocked)
_BUFFER_NAMESPACE = uuid.UUID("0b4e3a52-64c4-4a8e-9c57-1b7d3f0e2a61")
_log = logging.getLogger("radstream.telemetry")


def buffer_dir(lake_root: Path) -> Path:
    """Where the local sink's buffers live for the lake `lake_root` (the telemetry bucket's folder)."""
    return Path(lake_root) / BUFFER_DIR


def delivery_key(prefix: str, stream_name: str, opened: datetime, buffer_id: str) -> str:
    """Firehose's object name, `<stream>-<version>-<yyyy-MM-dd-HH-mm-ss>-<uuid>`; here the uuid is derived from the
    buffer and the partition, so delivering a buffer again (after a crash between its delivery and its removal)
    rewrites the same objects with the same bytes instead of adding copies."""
    name = uuid.uuid5(_BUFFER_NAMESPACE, f"{buffer_id}/{prefix}")
    return f"{prefix}{stream_name}-1-{opened:%Y-%m-%d-%H-%M-%S}-{name}.json.gz"


def complete_lines(data: bytes) -> tuple[dict[str, list[bytes]], int]:
    """A buffer's records by partition prefix, and how many lines were dropped: a line cut short by a kill mid-append
    (the record's send never returned, so its execution never finished) or anything that is not a record."""
    by_partition: dict[str, list[bytes]] = defaultdict(list)
    dropped = 0
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()  # no newline after it: an append that a kill or a full disk cut short
        dropped += 1
    for line in lines:
        try:
            time_text = json.loads(line)["time"]
            prefix = partition_prefix(datetime.fromisoformat(time_text))
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        by_partition[prefix].append(line + b"\n")
    return by_partition, dropped


def deliver_buffer(path: Path, store: ObjectStore, bucket: str, stream_name: str) -> int:
    """Write one buffer file into the lake: one gzip NDJSON object per partition, then remove the buffer. Returns the
    objects written. Idempotent (deterministic keys, `gzip mtime=0`): a crash before the removal only means the next
    delivery writes the same objects again. The caller holds the buffer's lock."""
    data = path.read_bytes()
    stem = path.name[: -len(_BUFFER_SUFFIX)]
    opened_ms, _, buffer_id = stem.partition("-")
    opened = datetime.fromtimestamp(int(opened_ms) / 1000, UTC) if opened_ms.isdigit() else datetime.now(UTC)
    by_partition, dropped = complete_lines(data)
    if dropped:
        _log.warning("telemetry buffer: incomplete or unreadable lines dropped", extra={"buffer": path.name, "lines": dropped})
    for prefix, lines in sorted(by_partition.items()):
        key = delivery_key(prefix, stream_name, opened, buffer_id or stem)
        store.put_bytes(bucket, key, gzip.compress(b"".join(lines), mtime=0), content_type="application/gzip")
    path.unlink(missing_ok=True)
    return len(by_partition)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def recover_buffers(lake_root: Path, store: ObjectStore, bucket: str, stream_name: str = "radstream-telemetry") -> int:
    """Deliver the buffers of processes that are gone (killed before they flushed); returns how many.

    A live sink holds an exclusive lock (flock) on each of its buffers until it has delivered them, and the kernel
    drops the lock when its process dies, however it dies: a buffer this call can lock has no writer left. Safe beside
    live sinks and beside another recovery (each buffer is delivered by whoever locks it; a second one finds it gone).
    """
    folder = buffer_dir(lake_root)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return 0
    recovered = 0
    for entry in entries:
        if not entry.name.endswith((_BUFFER_SUFFIX, _OPENING_SUFFIX)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if not _try_lock(fd) or os.fstat(fd).st_nlink == 0:
                continue  # a live writer's, or delivered and removed by another recovery meanwhile
            if entry.name.endswith(_OPENING_SUFFIX):
                os.unlink(entry.path)  # its creator died before the first record: empty
                continue
            with disk_errors(f"delivering telemetry buffer {entry.name}"):
                deliver_buffer(Path(entry.path), store, bucket, stream_name)
            recovered += 1
        finally:
            os.close(fd)
    return recovered


@dataclass
class _Buffer:
    path: Path
    fd: int
    opened: float  # clock() when it was created: the interval runs from its first record
    size: int = 0


class BufferedLakeSink:
    """The local lake's Firehose: records are buffered by size and by time and delivered as one gzip NDJSON object per
    buffer and dt=/hour= partition (LocalLakeSink's layout, Firehose's names).

    The buffer is a file, a write-ahead log: `send` returns once its records are appended to it, so a process killed
    before the flush loses nothing. The buffer is delivered into the lake when it reaches `size_bytes` (uncompressed,
    as Firehose's SizeInMBs), when `interval_s` has passed since its first record (checked on each send and by a
    timer, as Firehose's IntervalInSeconds), and on `close`; the buffers of a killed process are delivered by the next
    one that starts (`recover_buffers`). Delivery is idempotent, so a record reaches the lake exactly once.
    """

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        lake_root: Path,
        *,
        size_bytes: int = 64 * 1024 * 1024,
        interval_s: float = 60.0,
        stream_name: str = "radstream-telemetry",
        clock: Callable[[], float] = time.time,
        timer: bool = True,
    ) -> None:
        if size_bytes <= 0 or interval_s <= 0:
            raise ValueError("telemetry buffer: size and interval must be positive")
        self.store = store
        self.bucket = bucket
        self.lake_root = Path(lake_root)
        self.size_bytes = size_bytes
        self.interval_s = interval_s
        self.stream_name = stream_name
        self.clock = clock
        self.timer = timer
        self._lock = threading.Lock()  # the open buffer
        self._deliver_lock = threading.Lock()  # one delivery at a time
        self._open: _Buffer | None = None
        self._sealed: list[_Buffer] = []  # full or due, waiting for (or retrying) delivery; still locked
        self._timer: threading.Timer | None = None
        self._closed = False
        self.delivered_objects = 0
        try:
            recover_buffers(self.lake_root, store, bucket, stream_name)
        except StorageUnavailable:  # the store is out: those buffers wait for the next start, nothing is lost
            _log.warning("telemetry buffers of an earlier process not delivered yet (store unavailable)")

    def send(self, records: Sequence[TelemetryRecord]) -> int:
        if not records:
            return 0
        data = to_ndjson(records)
        with self._lock:
            if self._closed:
                raise RuntimeError("telemetry sink is closed")
            buffer = self._open or self._new_buffer()
            self._append(buffer, data)
            due = buffer.size >= self.size_bytes or self.clock() - buffer.opened >= self.interval_s
            if due:
                self._seal()
        if due:
            self._deliver_sealed()
        return len(records)

    def flush(self) -> int:
        """Deliver what is buffered now; returns the objects written. A store outage leaves it buffered for the next flush."""
        with self._lock:
            self._seal()
        return self._deliver_sealed()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush()
        with self._deliver_lock:
            for buffer in self._sealed:  # undeliverable now (the store is out): the next process recovers them
                os.close(buffer.fd)
            self._sealed = []

    # --- inside the lock ---
    def _new_buffer(self) -> _Buffer:
        opened = self.clock()
        name = f"{int(opened * 1000):013d}-{uuid.uuid4()}"
        folder = buffer_dir(self.lake_root)
        opening = folder / f"{name}{_OPENING_SUFFIX}"
        with disk_errors("opening a telemetry buffer"):
            make_dirs(folder)
            fd = os.open(opening, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # before it has its real name: recovery never finds a buffer of ours unlocked
                path = folder / f"{name}{_BUFFER_SUFFIX}"
                os.rename(opening, path)
                fsync_dir(folder)  # the buffer's name survives a power cut, as its records do
            except BaseException:
                os.close(fd)
                opening.unlink(missing_ok=True)
                raise
        self._open = _Buffer(path, fd, opened)
        if self.timer:
            self._timer = threading.Timer(self.interval_s, self._due)
            self._timer.daemon = True
            self._timer.start()
        return self._open

    def _append(self, buffer: _Buffer, data: bytes) -> None:
        try:
            with disk_errors(f"appending to telemetry buffer {buffer.path.name}"):
                # fsynced before send returns: SendTelemetry is the study's last step before its journal line says
                # it ended, so a power cut after that line never finds the study's records gone (one fsync a study).
                append_durably(buffer.fd, data, buffer.path)
        except StorageUnavailable:
            # Undo the part that got in, so the next append starts on a line of its own; if even that fails,
            # seal the buffer: delivery drops the cut line, and the records after it go to a new buffer.
            try:
                os.ftruncate(buffer.fd, buffer.size)
            except OSError:
                self._seal()
            raise
        buffer.size += len(data)

    def _seal(self) -> None:
        if self._open is not None:
            self._sealed.append(self._open)
            self._open = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        try:
            self.flush()
        except Exception:
            _log.warning("telemetry buffer delivery failed; it stays buffered", exc_info=True)

    # --- delivery ---
    def _deliver_sealed(self) -> int:
        written = 0
        with self._deliver_lock:
            while self._sealed:
                buffer = self._sealed[0]
                try:
                    with disk_errors(f"delivering telemetry buffer {buffer.path.name}"):
                        written += deliver_buffer(buffer.path, self.store, self.bucket, self.stream_name)
                except StorageUnavailable:
                    _log.warning(
                        "telemetry buffer not delivered yet (store unavailable); it stays buffered", extra={"buffer": buffer.path.name}
                    )
                    break
                os.close(buffer.fd)
                self._sealed.pop(0)
        self.delivered_objects += written
        return written


class KinesisSink:
    """Kinesis Data Streams; Firehose reads the stream and writes the lake (see template.yaml)."""

    MAX_BATCH = 500  # PutRecords' limit per call

    def __init__(self, client: Any, stream_name: str, attempts: int = 3) -> None:
        self.client = client
        self.stream_name = stream_name
        self.attempts = attempts

    def send(self, records: Sequence[TelemetryRecord]) -> int:
        for start in range(0, len(records), self.MAX_BATCH):
            self._put(list(records[start : start + self.MAX_BATCH]))
        return len(records)

    def _put(self, batch: list[TelemetryRecord]) -> None:
        entries = [{"Data": r.model_dump_json().encode() + b"\n", "PartitionKey": r.study_id} for r in batch]
        for _ in range(self.attempts):
            with translated(f"kinesis stream {self.stream_name}", "TELEMETRY_STREAM_NAME"):
                response = self.client.put_records(StreamName=self.stream_name, Records=entries)
            if not response.get("FailedRecordCount"):
                return
            # Resend only the entries Kinesis throttled or failed; the rest are in.
            entries = [e for e, r in zip(entries, response["Records"]) if "ErrorCode" in r]
        raise StorageUnavailable(f"kinesis stream {self.stream_name}: {len(entries)} records still failing after {self.attempts} attempts")
