"""Builds adapters from settings: the one door through which stages and tests get their dependencies."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from shared.events import EventBridgePublisher, EventPublisher, LocalEventLog
from shared.settings import Settings
from shared.storage import LocalObjectStore, ObjectStore, S3ObjectStore
from shared.telemetry import KinesisSink, LocalLakeSink, TelemetrySink


def boto3_client(service: str) -> Any:
    import boto3  # imported here: the local backend never needs it

    # boto3 reads AWS_ENDPOINT_URL (an emulator) and the region from the environment itself.
    return boto3.session.Session().client(service)


def object_store(settings: Settings) -> ObjectStore:
    if settings.backend == "aws":
        return S3ObjectStore(boto3_client("s3"))
    return LocalObjectStore(settings.data_dir)


def telemetry_sink(settings: Settings, store: ObjectStore | None = None) -> TelemetrySink:
    if settings.backend == "aws":
        if not settings.telemetry_stream:
            from shared.errors import ConfigurationError

            raise ConfigurationError("TELEMETRY_STREAM_NAME must be set when RADSTREAM_BACKEND=aws")
        return KinesisSink(boto3_client("kinesis"), settings.telemetry_stream)
    return LocalLakeSink(store or object_store(settings), settings.telemetry_bucket)


def event_publisher(settings: Settings) -> EventPublisher:
    if settings.backend == "aws":
        return EventBridgePublisher(boto3_client("events"), settings.event_bus or "default")
    return LocalEventLog(settings.data_dir)


T = TypeVar("T")
_registry: list["Once[Any]"] = []


class Once(Generic[T]):
    """A stage's dependencies, built on first use (the cold start) and then held for the container's life.

    The local runtime calls `reset_all()` when it switches settings (another data dir, a Triton URL),
    so one process can host runs with different settings; tests pass dependencies in directly.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()
        _registry.append(self)

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
        return self._value

    def reset(self) -> None:
        self._value = None


def reset_all() -> None:
    for once in _registry:
        once.reset()


@dataclass(frozen=True)
class StoreDependencies:
    """What a stage that only reads and writes objects needs."""

    settings: Settings
    store: ObjectStore

    @classmethod
    def from_env(cls) -> "StoreDependencies":
        settings = Settings.from_env()
        return cls(settings, object_store(settings))
