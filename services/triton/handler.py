"""Lambda entry point of the inference stage (radstream-run-model): one model, one study."""
from __future__ import annotations

from typing import Any

from services.triton.domain import Inference, InferenceRequest
from shared.messages import ModelOutput
from shared.model_repository import ModelRepository
from shared.observability import stage_handler
from shared.settings import Settings
from shared.wiring import Once, object_store


def build() -> Inference:
    settings = Settings.from_env()
    repository = ModelRepository(settings.model_repository)
    if settings.triton_url:
        from services.triton.triton_client import TritonInference

        backend = TritonInference(settings.triton_url)
    else:
        from services.triton.onnx_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(repository, settings.onnx_threads)
    return Inference(backend, repository, object_store(settings))


inference = Once(build)


def run(event: dict[str, Any], service: Inference | None = None) -> ModelOutput:
    return (service or inference.get()).run(InferenceRequest.model_validate(event))


lambda_handler = stage_handler("inference")(run)
