"""Lambda entry point of the inference stage (radstream-run-model): one model, one study."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.triton.domain import Inference
from shared.messages import InferenceRequest, ModelOutput, ShadowOutput, ShadowRequest
from shared.model_repository import ModelRepository
from shared.observability import StageHandler
from shared.inference import InferenceBackend
from shared.settings import Settings
from shared.wiring import close_all, object_store


@dataclass(frozen=True)
class Dependencies:
    inference: Inference

    @classmethod
    def from_settings(cls, settings: Settings) -> Dependencies:
        """Triton when TRITON_URL is set (locally or on EKS), else ONNX Runtime in-process over the same repository."""
        repository = ModelRepository(settings.model_repository)
        backend: InferenceBackend
        if settings.triton_url:
            from services.triton.triton_client import TritonInference

            backend = TritonInference(settings.triton_url)
        else:
            from services.triton.onnx_backend import OnnxRuntimeBackend

            backend = OnnxRuntimeBackend(repository, settings.onnx_threads)
        return cls(Inference(backend, repository, object_store(settings), settings.results_bucket, settings.telemetry_bucket))

    def close(self) -> None:
        close_all(self.inference)


def run(event: dict[str, Any], deps: Dependencies) -> ModelOutput | ShadowOutput:
    """RunModels' branches: one live model (Classify, Detect, Encode), or the shadow candidates (Shadow)."""
    if event.get("shadow"):
        return deps.inference.run_shadow(ShadowRequest.model_validate(event))
    return deps.inference.run(InferenceRequest.model_validate(event))


def warm(deps: Dependencies) -> None:
    """The in-process backend's sessions loaded and run once; a Triton server warms its own models."""
    backend_warm = getattr(deps.inference.backend, "warm", None)
    if backend_warm is not None:
        backend_warm()


lambda_handler = StageHandler("inference", run, Dependencies.from_settings, warm)
