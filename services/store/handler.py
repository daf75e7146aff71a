"""Lambda entry points of the store service: StoreResults (radstream-store-results) and RecordFailure."""

from __future__ import annotations

from typing import Any

from services.store.domain import record_failure, store_result
from shared.messages import FailureRequest, RecordedFailure, StoredResult, StoreRequest
from shared.observability import StageHandler
from shared.wiring import EventDependencies, StoreDependencies


def run(event: dict[str, Any], deps: StoreDependencies) -> StoredResult:
    return store_result(StoreRequest.model_validate(event), event, deps.store, deps.settings.results_bucket, deps.settings.telemetry_bucket)


def run_record_failure(event: dict[str, Any], deps: EventDependencies) -> RecordedFailure:
    return record_failure(FailureRequest.model_validate(event), deps.store, deps.settings.results_bucket, deps.events)


# RecordFailure also announces the failure ("Study Failed" on the event bus): EventDependencies.
lambda_handler = StageHandler("store", run, StoreDependencies.from_settings)
record_failure_handler = StageHandler("store", run_record_failure, EventDependencies.from_settings)
