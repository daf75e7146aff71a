"""Builds adapters from settings: the one door through which stages and tests get their dependencies.

A stage's dependencies have one shape: a frozen dataclass whose `from_settings(settings)` builds it from these
functions and whose `close()` releases it; its handler passes `from_settings` to StageHandler. The stages that need
only the settings and the object store share StoreDependencies below; any other stage defines its own `Dependencies`
in its handler.py (no subclassing, no domain object in its place). Lambda calls `from_settings` once per container with
the settings from the environment, the local runtime once per runtime with its own (the stages sharing
StoreDependencies share its store there); tests construct the dataclass directly with fakes or emulator adapters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.events import EventBridgePublisher, EventPublisher, LocalEventLog
from shared.settings import Settings
from shared.storage import LocalObjectStore, MemoryObjectStore, ObjectStore, RoutedObjectStore, S3ObjectStore
from shared.telemetry import BufferedLakeSink, KinesisSink, TelemetrySink


def boto3_client(service: str) -> Any:
    import boto3  # imported here: the local backend never needs it

    # boto3 reads AWS_ENDPOINT_URL (an emulator) and the region from the environment itself.
    return boto3.session.Session().client(service)


_artifacts: dict[Path, MemoryObjectStore] = {}
_artifacts_lock = threading.Lock()


def execution_artifacts(settings: Settings) -> MemoryObjectStore:
    """The embedded mode's artifacts bucket: one in-memory store per data dir, shared by the stages of every runtime
    on it (as its folder would be); the local runtime drops each execution's tensors when the execution ends."""
    root = Path(settings.data_dir).resolve()
    with _artifacts_lock:
        return _artifacts.setdefault(root, MemoryObjectStore())


def object_store(settings: Settings) -> ObjectStore:
    """S3 in AWS. Locally: folders under the data dir, but the artifacts bucket in memory (tensors live for one execution)."""
    if settings.backend == "aws":
        return S3ObjectStore(boto3_client("s3"))
    if settings.fault_injection:
        from shared.faults import FaultyObjectStore

        folders: ObjectStore = FaultyObjectStore(settings.data_dir, settings.fault_injection)
    else:
        folders = LocalObjectStore(settings.data_dir)
    return RoutedObjectStore(folders, execution_artifacts(settings), frozenset({settings.artifacts_bucket}))


def telemetry_sink(settings: Settings, store: ObjectStore | None = None) -> TelemetrySink:
    if settings.backend == "aws":
        if not settings.telemetry_stream:
            from shared.errors import ConfigurationError

            raise ConfigurationError("TELEMETRY_STREAM_NAME must be set when RADSTREAM_BACKEND=aws")
        return KinesisSink(boto3_client("kinesis"), settings.telemetry_stream)
    return BufferedLakeSink(
        store or object_store(settings),
        settings.telemetry_bucket,
        settings.data_dir / settings.telemetry_bucket,
        size_bytes=int(settings.telemetry_buffer_mb * 1024 * 1024),
        interval_s=settings.telemetry_buffer_s,
    )


def recover_telemetry(settings: Settings, store: ObjectStore | None = None) -> int:
    """Deliver the telemetry buffers a killed local process left (the local backend only; Kinesis buffers nothing here)."""
    if settings.backend == "aws":
        return 0
    from shared.telemetry import recover_buffers

    return recover_buffers(settings.data_dir / settings.telemetry_bucket, store or object_store(settings), settings.telemetry_bucket)


def event_publisher(settings: Settings) -> EventPublisher:
    if settings.backend == "aws":
        return EventBridgePublisher(boto3_client("events"), settings.event_bus or "default")
    return LocalEventLog(settings.data_dir)


def close_all(*resources: Any) -> None:
    """Close what holds a session, a client or a file (adapters without a `close` hold nothing)."""
    for resource in resources:
        close = getattr(resource, "close", None)
        if callable(close):
            close()


@dataclass(frozen=True)
class StoreDependencies:
    """What a stage that only reads and writes objects needs (validate, store's StoreResults, export)."""

    settings: Settings
    store: ObjectStore

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreDependencies:
        return cls(settings, object_store(settings))

    def close(self) -> None:
        close_all(self.store)


@dataclass(frozen=True)
class EventDependencies:
    """What a stage that reads and writes objects and announces events needs (notify, store's RecordFailure)."""

    settings: Settings
    store: ObjectStore
    events: EventPublisher

    @classmethod
    def from_settings(cls, settings: Settings) -> EventDependencies:
        return cls(settings, object_store(settings), event_publisher(settings))

    def close(self) -> None:
        close_all(self.store, self.events)
