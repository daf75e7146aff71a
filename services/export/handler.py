"""Lambda entry points of the export service: ExportResults (radstream-export-results) and DeliverResults
(radstream-deliver-results, which also writes the dead letter of an export that could not be built or delivered:
RecordExportFailure, RecordDeadLetter), DICOM studies only."""

from __future__ import annotations

from typing import Any

from services.export.deliver import deliver
from services.export.domain import export_result, warm_builders
from shared.messages import DeliveredResult, DeliverRequest, ExportedResult, ExportRequest
from shared.observability import StageHandler
from shared.wiring import StoreDependencies


def run(event: dict[str, Any], deps: StoreDependencies) -> ExportedResult:
    return export_result(ExportRequest.model_validate(event), deps.store, deps.settings.results_bucket)


def run_delivery(event: dict[str, Any], deps: StoreDependencies) -> DeliveredResult:
    return deliver(DeliverRequest.model_validate(event), deps.store, deps.settings)


def warm(deps: StoreDependencies) -> None:
    warm_builders()


lambda_handler = StageHandler("export", run, StoreDependencies.from_settings, warm)
deliver_handler = StageHandler("export", run_delivery, StoreDependencies.from_settings)
