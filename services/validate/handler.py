"""Lambda entry point of the validate stage (radstream-validate-metadata)."""

from __future__ import annotations

from typing import Any

from services.validate.domain import validate_study
from shared.messages import ValidatedStudy, ValidateRequest
from shared.observability import StageHandler
from shared.wiring import StoreDependencies


def run(event: dict[str, Any], deps: StoreDependencies) -> ValidatedStudy:
    return validate_study(ValidateRequest.model_validate(event), deps.store, deps.settings.max_image_bytes, deps.settings.max_image_pixels)


lambda_handler = StageHandler("validate", run, StoreDependencies.from_settings)
