"""Lambda entry points of the store service: StoreResults (radstream-store-results) and RecordFailure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.store.domain import record_failure, store_result
from shared.events import EventPublisher
from shared.messages import FailureRequest, RecordedFailure, StoredResult, StoreRequest
from shared.observability import StageHandler
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.wiring import StoreDependencies, close_all, event_publisher, object_store


@dataclass(frozen=True)
class FailureDependencies:
    """RecordFailure's: it also announces the failure ("Study Failed" on the event bus)."""

    settings: Settings
    store: ObjectStore
    events: EventPublisher

    @classmethod
    def from_settings(cls, settings: Settings) -> FailureDependencies:
        return cls(settings, object_store(settings), event_publisher(settings))

    def close(self) -> None:
        close_all(self.store, self.events)


def run(event: dict[str, Any], deps: StoreDependencies) -> StoredResult:
    return store_result(StoreRequest.model_validate(event), event, deps.store, deps.settings.results_bucket, deps.settings.telemetry_bucket)


def run_record_failure(event: dict[str, Any], deps: FailureDependencies) -> RecordedFailure:
    return record_failure(FailureRequest.model_validate(event), deps.store, deps.settings.results_bucket, deps.events)


lambda_handler = StageHandler("store", run, StoreDependencies.from_settings)
record_failure_handler = StageHandler("store", run_record_failure, FailureDependencies.from_settings)
