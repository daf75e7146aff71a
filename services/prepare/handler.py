"""Lambda entry point of the prepare stage (radstream-prepare-tensors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.prepare.domain import prepare_tensors
from shared.messages import PreparedTensors, PrepareRequest
from shared.model_repository import ModelRepository
from shared.observability import StageHandler
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.wiring import close_all, object_store


@dataclass(frozen=True)
class Dependencies:
    settings: Settings
    store: ObjectStore
    repository: ModelRepository

    @classmethod
    def from_settings(cls, settings: Settings) -> Dependencies:
        return cls(settings, object_store(settings), ModelRepository(settings.model_repository))

    def close(self) -> None:
        close_all(self.store)


def run(event: dict[str, Any], deps: Dependencies) -> PreparedTensors:
    request = PrepareRequest.model_validate(event)
    return prepare_tensors(request, deps.store, deps.repository, deps.settings.artifacts_bucket, deps.settings.max_image_pixels)


def warm(deps: Dependencies) -> None:
    """pydicom's pixel handlers and the DICOM decode path, on shared/warmup's synthetic study."""
    from shared import warmup
    from shared.pixels import decode_dicom

    decode_dicom(warmup.DICOM.read_bytes(), "warmup")


lambda_handler = StageHandler("prepare", run, Dependencies.from_settings, warm)
