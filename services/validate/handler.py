"""Lambda entry point of the validate stage (radstream-validate-metadata)."""

from __future__ import annotations

from typing import Any

from services.validate.domain import dicom_metadata, sidecar_validator, validate_study
from shared.messages import ValidatedStudy, ValidateRequest
from shared.observability import StageHandler
from shared.wiring import StoreDependencies


def run(event: dict[str, Any], deps: StoreDependencies) -> ValidatedStudy:
    return validate_study(ValidateRequest.model_validate(event), deps.store, deps.settings.max_image_bytes, deps.settings.max_image_pixels)


def warm(deps: StoreDependencies) -> None:
    """The sidecar schema compiled, and pydicom's header reading, on shared/warmup's synthetic study."""
    from shared import warmup

    sidecar_validator()
    dicom_metadata(warmup.DICOM.read_bytes(), "warmup")


lambda_handler = StageHandler("validate", run, StoreDependencies.from_settings, warm)
