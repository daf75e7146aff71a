"""Lambda entry point of the inference stage (radstream-run-model): one model, one study."""

from __future__ import annotations

from typing import Any

from services.triton.domain import Inference
from shared.messages import InferenceRequest, ModelOutput
from shared.model_repository import ModelRepository
from shared.observability import StageHandler
from shared.inference import InferenceBackend
from shared.settings import Settings
from shared.wiring import object_store


def build(settings: Settings) -> Inference:
    """Triton when TRITON_URL is set (locally or on EKS), else ONNX Runtime in-process over the same repository."""
    repository = ModelRepository(settings.model_repository)
    backend: InferenceBackend
    if settings.triton_url:
        from services.triton.triton_client import TritonInference

        backend = TritonInference(settings.triton_url)
    else:
        from services.triton.onnx_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(repository, settings.onnx_threads)
    return Inference(backend, repository, object_store(settings))


def run(event: dict[str, Any], service: Inference) -> ModelOutput:
    return service.run(InferenceRequest.model_validate(event))


def warm(service: Inference) -> None:
    """The in-process backend's sessions loaded and run once; a Triton server warms its own models."""
    backend_warm = getattr(service.backend, "warm", None)
    if backend_warm is not None:
        backend_warm()


lambda_handler = StageHandler("inference", run, build, warm)
