"""Lambda entry points of the export service: ExportResults (radstream-export-results) and DeliverResults
(radstream-deliver-results, which also writes the dead letter of an export that could not be built or delivered:
RecordExportFailure, RecordDeadLetter), DICOM studies only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.export.deliver import deliver
from services.export.domain import export_result
from shared.messages import DeliveredResult, DeliverRequest, ExportedResult, ExportRequest
from shared.observability import StageHandler
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.wiring import close_all, object_store


@dataclass(frozen=True)
class Dependencies:
    settings: Settings
    store: ObjectStore

    @classmethod
    def from_settings(cls, settings: Settings) -> Dependencies:
        return cls(settings, object_store(settings))

    def close(self) -> None:
        close_all(self.store)


def run(event: dict[str, Any], deps: Dependencies) -> ExportedResult:
    return export_result(ExportRequest.model_validate(event), deps.store, deps.settings.results_bucket)


def run_delivery(event: dict[str, Any], deps: Dependencies) -> DeliveredResult:
    return deliver(DeliverRequest.model_validate(event), deps.store, deps.settings)


lambda_handler = StageHandler("export", run, Dependencies.from_settings)
deliver_handler = StageHandler("export", run_delivery, Dependencies.from_settings)
