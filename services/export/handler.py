"""Lambda entry point of the export service: ExportResults (radstream-export-results), DICOM studies only."""
from __future__ import annotations

from typing import Any

from services.export.domain import export_result
from shared.messages import ExportedResult, ExportRequest
from shared.observability import StageHandler
from shared.wiring import StoreDependencies


def run(event: dict[str, Any], deps: StoreDependencies) -> ExportedResult:
    return export_result(ExportRequest.model_validate(event), deps.store, deps.settings.results_bucket)


lambda_handler = StageHandler("export", run, StoreDependencies.from_settings)
