"""Lambda entry point of the validate stage (radstream-validate-metadata)."""
from __future__ import annotations

from typing import Any

from services.validate.domain import ValidatedStudy, ValidateRequest, validate_study
from shared.observability import stage_handler
from shared.wiring import Once, StoreDependencies

dependencies = Once(StoreDependencies.from_env)


def run(event: dict[str, Any], deps: StoreDependencies | None = None) -> ValidatedStudy:
    deps = deps or dependencies.get()
    return validate_study(ValidateRequest.model_validate(event), deps.store, deps.settings.max_image_bytes, deps.settings.max_image_pixels)


lambda_handler = stage_handler("validate")(run)
