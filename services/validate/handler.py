"""Lambda entry point of the validate stage (radstream-validate-metadata)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.validate.domain import validate_study
from shared.messages import ValidatedStudy, ValidateRequest
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


def run(event: dict[str, Any], deps: Dependencies) -> ValidatedStudy:
    return validate_study(ValidateRequest.model_validate(event), deps.store, deps.settings.max_image_bytes, deps.settings.max_image_pixels)


lambda_handler = StageHandler("validate", run, Dependencies.from_settings)
