"""Lambda entry points of the store service: StoreResults (radstream-store-results) and RecordFailure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.store.domain import FailureRequest, RecordedFailure, StoredResult, StoreRequest, record_failure, store_result
from shared.observability import stage_handler
from shared.events import EventPublisher
from shared.settings import Settings
from shared.wiring import Once, StoreDependencies, event_publisher, object_store

dependencies = Once(StoreDependencies.from_env)


@dataclass(frozen=True)
class FailureDependencies(StoreDependencies):
    events: EventPublisher

    @classmethod
    def from_env(cls) -> "FailureDependencies":
        settings = Settings.from_env()
        return cls(settings, object_store(settings), event_publisher(settings))


failure_dependencies = Once(FailureDependencies.from_env)


def run(event: dict[str, Any], deps: StoreDependencies | None = None) -> StoredResult:
    deps = deps or dependencies.get()
    return store_result(StoreRequest.model_validate(event), event, deps.store, deps.settings.results_bucket)


def run_record_failure(event: dict[str, Any], deps: FailureDependencies | None = None) -> RecordedFailure:
    deps = deps or failure_dependencies.get()
    return record_failure(FailureRequest.model_validate(event), deps.store, deps.settings.results_bucket, deps.events)


lambda_handler = stage_handler("store")(run)
record_failure_handler = stage_handler("store")(run_record_failure)
