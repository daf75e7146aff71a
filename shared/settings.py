"""Settings: one validated model read from the environment at cold start; they choose the adapters."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from shared.errors import ConfigurationError

# Width x height x channels (x frames) an image's header may declare: 100 million samples is ~7x a
# 4300 x 3500 detector's frame, and far below what would exhaust a stage's memory once decoded to float32.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
DEFAULT_MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "services" / "triton" / "model_repository"

# Setting -> environment variable. One table, so a deployment and a laptop differ by settings only.
ENVIRONMENT = {
    "backend": "RADSTREAM_BACKEND",
    "data_dir": "RADSTREAM_DATA_DIR",
    "images_bucket": "IMAGES_BUCKET",
    "results_bucket": "RESULTS_BUCKET",
    "telemetry_bucket": "TELEMETRY_BUCKET",
    "artifacts_bucket": "ARTIFACTS_BUCKET",
    "telemetry_stream": "TELEMETRY_STREAM_NAME",
    "event_bus": "EVENT_BUS_NAME",
    "triton_url": "TRITON_URL",
    "model_repository": "MODEL_REPOSITORY",
    "max_image_bytes": "MAX_IMAGE_BYTES",
    "max_image_pixels": "MAX_IMAGE_PIXELS",
    "onnx_threads": "ONNX_THREADS",
    "fault_injection": "RADSTREAM_FAULTS",
}


class Settings(BaseModel):
    """Everything a stage needs to build its dependencies."""

    model_config = {"frozen": True}

    backend: Literal["local", "aws"] = "local"
    data_dir: Path = Path("radstream-data")
    images_bucket: str = "images"
    results_bucket: str = "results"
    telemetry_bucket: str = "telemetry"
    artifacts_bucket: str = "artifacts"
    telemetry_stream: str | None = None
    event_bus: str | None = None
    # Empty: run the model repository in-process with ONNX Runtime. Set: a Triton server
    # (http://host:8000 or grpc://host:8001), locally or on EKS.
    triton_url: str | None = None
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    max_image_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS, gt=0)
    onnx_threads: int = Field(default=1, ge=0)
    # Local backend only, for the soak benchmark and fault tests: e.g. "enospc=0.02,throttle=0.02,timeout=0.01,seed=7"
    # makes the object store fail that share of its calls the way a full disk, a throttled S3 or a timeout does.
    fault_injection: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values = {name: env[var] for name, var in ENVIRONMENT.items() if env.get(var)}
        try:
            return cls(**values)
        except ValidationError as e:
            fields = ", ".join(f"{ENVIRONMENT[str(err['loc'][0])]} ({err['msg']})" for err in e.errors())
            raise ConfigurationError(f"invalid settings: {fields}") from e

    def to_env(self) -> dict[str, str]:
        return {var: str(getattr(self, name)) for name, var in ENVIRONMENT.items() if getattr(self, name) is not None}
