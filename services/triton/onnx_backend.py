"""ONNX Runtime over the Triton model repository, in-process: the embedded default when no TRITON_URL is set."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from shared.errors import InferenceFailed
from shared.model_repository import ModelRepository, load_model_spec


class OnnxRuntimeBackend:
    """Same repository, same model files and names as Triton serves; sessions are built once per model."""

    def __init__(self, repository: ModelRepository, threads: int = 1) -> None:
        self.repository = repository
        self.threads = threads
        self._sessions: dict[tuple[str, str | None], ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def session(self, model_name: str, version: str | None = None) -> ort.InferenceSession:
        session = self._sessions.get((model_name, version))
        if session is None:
            with self._lock:
                session = self._sessions.get((model_name, version))
                if session is None:
                    live = self.repository.get(model_name)
                    spec = live if version in (None, live.version) else load_model_spec(live.folder, version)
                    options = ort.SessionOptions()
                    options.intra_op_num_threads = self.threads
                    options.inter_op_num_threads = 1
                    session = ort.InferenceSession(str(spec.version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
                    self._sessions[(model_name, version)] = session
        return session

    def warm(self) -> None:
        """Every model's session built and run once on zeros of its input's shape (ONNX Runtime's first run allocates)."""
        for spec in self.repository.models.values():
            size = spec.input_size
            self.session(spec.name).run(None, {spec.input_name: np.zeros((1, 1, size, size), np.float32)})

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()

    def infer(self, model_name: str, inputs: dict[str, np.ndarray], priority: int = 0, version: str | None = None) -> dict[str, np.ndarray]:
        """In-process: no queue to order (the runtime's scheduler runs the most urgent study next), so `priority` is unused."""
        session = self.session(model_name, version)
        names = [o.name for o in session.get_outputs()]
        try:
            values = session.run(names, inputs)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as e:
            raise InferenceFailed(f"model {model_name} rejected its input: {type(e).__name__}") from e
        return dict(zip(names, values))
