"""Lambda entry points of the store service: StoreResults (radstream-store-results) and RecordFailure."""
from __future__ import annotations

from typing import Any

from services.store.domain import FailureRequest, RecordedFailure, StoredResult, StoreRequest, record_failure, store_result
from shared.observability import stage_handler
from shared.wiring import Once, StoreDependencies

dependencies = Once(StoreDependencies.from_env)


def run(event: dict[str, Any], deps: StoreDependencies | None = None) -> StoredResult:
    deps = deps or dependencies.get()
    return store_result(StoreRequest.model_validate(event), event, deps.store, deps.settings.results_bucket)


def run_record_failure(event: dict[str, Any], deps: StoreDependencies | None = None) -> RecordedFailure:
    deps = deps or dependencies.get()
    return record_failure(FailureRequest.model_validate(event), deps.store, deps.settings.results_bucket)


lambda_handler = stage_handler("store")(run)
record_failure_handler = stage_handler("store")(run_record_failure)
