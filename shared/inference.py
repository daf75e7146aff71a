"""Inference port: run one model of the repository on a batch. Adapters: ONNX Runtime in-process, Triton."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class InferenceBackend(Protocol):
    def infer(self, model_name: str, inputs: dict[str, np.ndarray], priority: int = 0, version: str | None = None) -> dict[str, np.ndarray]:
        """Run one version of a model (None: the one the repository's pointer names live). `priority`: Triton's
        request priority level (shared.priority.to_triton: 1 stat, 2 urgent, 0 the model's default); a server queues
        the more urgent first where the model's scheduler has priority levels."""
        ...
