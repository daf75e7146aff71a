"""Inference through a Triton server (local `radstream serve-models` or Triton on EKS) with tritonclient.

The URL's scheme picks the protocol: `http://host:8000` / `https://...` (tritonclient.http) or
`grpc://host:8001` / `grpcs://...` (tritonclient.grpc). Errors come back as the project's error tree:
the server unreachable, overloaded or timing out -> `InferenceUnavailable` (the workflow retries it);
the request or the model wrong -> `InferenceFailed` (permanent).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from shared.errors import ConfigurationError, InferenceFailed, InferenceUnavailable

# Statuses that say "try again later": HTTP codes as tritonclient.http reports them, gRPC codes as
# tritonclient.grpc reports them (str(grpc.StatusCode.X)).
_RETRYABLE_HTTP = {"408", "429", "502", "503", "504"}
_RETRYABLE_GRPC = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.ABORTED",
    "StatusCode.CANCELLED",
}
_SCHEMES = {"http": ("http", False), "https": ("http", True), "grpc": ("grpc", False), "grpcs": ("grpc", True)}


@dataclass(frozen=True)
class _ModelIO:
    inputs: dict[str, str]  # name -> Triton datatype
    outputs: tuple[str, ...]
    version: str


class TritonInference:
    """Runs models on one Triton server. Safe to share between threads (one client per thread)."""

    def __init__(self, url: str, *, timeout_s: float = 30.0, connect_timeout_s: float = 5.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in _SCHEMES or not parts.netloc:
            raise ConfigurationError(f"Triton URL must be http(s):// or grpc(s)://host:port, got {url!r}")
        self.url = url
        self.protocol, self.ssl = _SCHEMES[parts.scheme]
        self.netloc = parts.netloc
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._io: dict[str, _ModelIO] = {}
        self._io_lock = threading.Lock()

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                import tritonclient.http as httpclient

                client = httpclient.InferenceServerClient(
                    self.netloc,
                    ssl=self.ssl,
                    connection_timeout=self.connect_timeout_s,
                    network_timeout=self.timeout_s,
                )
            else:
                import tritonclient.grpc as grpcclient

                client = grpcclient.InferenceServerClient(self.netloc, ssl=self.ssl)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def ready(self) -> bool:
        """True when the server answers that it (and, with --strict-readiness, every model) is ready."""
        try:
            if self.protocol == "grpc":
                return bool(self._client().is_server_ready(client_timeout=self.connect_timeout_s))
            return bool(self._client().is_server_ready())
        except Exception:
            return False

    def model_io(self, model_name: str) -> _ModelIO:
        """Input datatypes and output names from the model's metadata, fetched once per model."""
        io = self._io.get(model_name)
        if io is not None:
            return io
        with _translated(model_name, self.url):
            if self.protocol == "grpc":
                meta = self._client().get_model_metadata(model_name, as_json=True, client_timeout=self.timeout_s)
            else:
                meta = self._client().get_model_metadata(model_name)
        io = _ModelIO(
            inputs={i["name"]: i["datatype"] for i in meta.get("inputs", [])},
            outputs=tuple(o["name"] for o in meta.get("outputs", [])),
            version=str(max(meta.get("versions", ["1"]), key=lambda v: int(v) if v.isdigit() else 0)),
        )
        with self._io_lock:
            self._io[model_name] = io
        return io

    def model_version(self, model_name: str) -> str:
        return self.model_io(model_name).version

    def infer(self, model_name: str, inputs: dict[str, np.ndarray], priority: int = 0, version: str | None = None) -> dict[str, np.ndarray]:
        """Run `model_name` on named arrays (batched shape, e.g. image [N,1,S,S]); outputs by name. `priority`: the request's
        Triton priority level (1 first; 0 the model's default), honoured by a dynamic batcher with priority_levels.
        `version`: the one the repository's pointer names (Triton's version_policy serves live and shadow), else
        Triton's latest."""
        io = self.model_io(model_name)
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        request_inputs = []
        for name, array in inputs.items():
            datatype = io.inputs.get(name) or np_to_triton_dtype(np.asarray(array).dtype)
            array = np.ascontiguousarray(array, dtype=triton_to_np_dtype(datatype))
            tensor = module.InferInput(name, list(array.shape), datatype)
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            request_inputs.append(tensor)
        if self.protocol == "http":
            outputs = [module.InferRequestedOutput(n, binary_data=True) for n in io.outputs]
        else:
            outputs = [module.InferRequestedOutput(n) for n in io.outputs]
        with _translated(model_name, self.url):
            if self.protocol == "grpc":
                result = self._client().infer(
                    model_name,
                    request_inputs,
                    model_version=version or "",
                    outputs=outputs,
                    client_timeout=self.timeout_s,
                    priority=priority,
                )
            else:
                result = self._client().infer(model_name, request_inputs, model_version=version or "", outputs=outputs, priority=priority)
            arrays = {name: result.as_numpy(name) for name in io.outputs}
        missing = [name for name, a in arrays.items() if a is None]
        if missing:
            raise InferenceFailed(f"{model_name} returned no {', '.join(missing)}", model=model_name)
        return arrays

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        self._local = threading.local()

    def __enter__(self) -> TritonInference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_retryable(e: InferenceServerException) -> bool:
    status = str(e.status() or "")
    return status in _RETRYABLE_HTTP or status in _RETRYABLE_GRPC


class _translated:
    """Context manager: tritonclient and socket errors -> InferenceUnavailable / InferenceFailed."""

    def __init__(self, model_name: str, url: str) -> None:
        self.model_name = model_name
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, e, tb) -> Literal[False]:
        if e is None or isinstance(e, (InferenceUnavailable, InferenceFailed)):
            return False
        details = {"model": self.model_name, "url": self.url}
        if _is_gevent_timeout(e):  # a BaseException: checked before the Exception filter
            raise InferenceUnavailable(f"Triton at {self.url} timed out for {self.model_name}", **details) from e
        if not isinstance(e, Exception):
            return False
        if isinstance(e, InferenceServerException):
            details["status"] = e.status()
            if _is_retryable(e):
                raise InferenceUnavailable(f"Triton at {self.url} unavailable for {self.model_name}: {e.message()}", **details) from e
            raise InferenceFailed(f"Triton rejected {self.model_name}: {e.message()}", **details) from e
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout, socket.gaierror, OSError)):
            raise InferenceUnavailable(
                f"cannot reach Triton at {self.url} for {self.model_name}: {type(e).__name__}: {e}",
                **details,
            ) from e
        return False  # anything else is our own bug or a library's: not the study's fault, reported as itself


def _is_gevent_timeout(e: BaseException) -> bool:
    try:
        from gevent import Timeout
    except ImportError:  # pragma: no cover - gevent comes with tritonclient[http]
        return False
    return isinstance(e, Timeout)
