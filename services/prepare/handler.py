"""Lambda entry point of the prepare stage (radstream-prepare-tensors)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.prepare.domain import PreparedTensors, PrepareRequest, prepare_tensors
from shared.model_repository import ModelRepository
from shared.observability import stage_handler
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.wiring import Once, object_store


@dataclass(frozen=True)
class Dependencies:
    settings: Settings
    store: ObjectStore
    repository: ModelRepository

    @classmethod
    def from_env(cls) -> "Dependencies":
        settings = Settings.from_env()
        return cls(settings, object_store(settings), ModelRepository(settings.model_repository))


dependencies = Once(Dependencies.from_env)


def run(event: dict[str, Any], deps: Dependencies | None = None) -> PreparedTensors:
    deps = deps or dependencies.get()
    request = PrepareRequest.model_validate(event)
    return prepare_tensors(request, deps.store, deps.repository, deps.settings.artifacts_bucket, deps.settings.max_image_pixels)


lambda_handler = stage_handler("prepare")(run)
