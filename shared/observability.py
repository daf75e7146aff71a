"""Logs, traces and the per-stage telemetry record, in one place, for every handler.

No image data and no patient data go into logs, traces or responses: handlers log ids, sizes,
timings and error types; the tracer captures neither responses nor exception messages.

Nothing here is process state that one run could leak into another: log keys are per thread (Powertools'
thread-safe keys, set and cleared around each invocation), and where log lines go is a context variable
that the local runtime sets around the invocations it makes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, UTC
from typing import IO, Any, Generic, Literal, TypeVar

from aws_lambda_powertools import Logger, Tracer
from pydantic import ValidationError

from shared.contracts import ModelRef, Stage, TelemetryRecord
from shared.errors import MalformedEvent, NativeLibraryPanic, RadStreamError, is_native_panic
from shared.messages import ModelOutput, PreparedTensors, RecordedFailure, StageOutput, StoredResult, study_id_from_key
from shared.metrics import EmfWriter, ModelLatency, StdoutEmf, stage_metrics
from shared.settings import Settings

_log_target: ContextVar[IO[str] | None] = ContextVar("radstream_log_target", default=None)


class _LogStream(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (Lambda's log stream), or to the stream `logs_to` names."""

    @property
    def stream(self) -> IO[str]:
        return _log_target.get() or sys.stdout

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        """StreamHandler.__init__ sets a stream; this handler looks it up at each write instead."""

    def flush(self) -> None:
        """Lambda's log stream (stdout) line by line; a file that `logs_to` names is flushed by its owner (`flush_logs`,
        the local runtime once per study): a flush per line cost a write per line."""
        if _log_target.get() is None:
            with self.lock:  # type: ignore[union-attr]
                sys.stdout.flush()


_handler = _LogStream()
logger = Logger(service="radstream", logger_handler=_handler)
tracer = Tracer(service="radstream")


def _local_line(level: str, message: str, fields: dict[str, Any]) -> bool:
    """A stage's routine line written straight into the local runtime's log file (the stream `logs_to` names), in the
    shape Powertools gives it (level, location, message, timestamp, service, then the keys and fields); False in
    Lambda (no such stream) or below the logger's level, where the caller logs through Powertools.

    Powertools' record, caller lookup and formatter cost 27 µs a line in a loop (0.13 ms in the pipeline, caches
    cold), seven lines a study; this writes the same JSON in 9 µs (~70 µs in the pipeline). Only the per-stage success
    line goes this way: the rarer warnings and errors keep Powertools' formatter. Keys appended outside `_invoke`
    (none are today) would not appear in it.
    """
    stream = _log_target.get()
    if stream is None or logger.log_level > getattr(logging, level):
        return False
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now * 1000) % 1000:03d}" + time.strftime("%z")
    line = {"level": level, "location": "_invoke", "message": message, "timestamp": stamp, "service": logger.service}
    line.update((k, v) for k, v in fields.items() if v is not None)  # as Powertools: a key without a value is left out
    text = json.dumps(line, separators=(",", ":"), default=str) + "\n"
    with _handler.lock:  # type: ignore[union-attr]
        stream.write(text)
    return True


def flush_logs(stream: IO[str]) -> None:
    """Write out what the handler has put in `stream`'s buffer, under the handler's lock (no line is cut by it)."""
    with _handler.lock:  # type: ignore[union-attr]
        stream.flush()


@contextmanager
def logs_to(stream: IO[str] | None) -> Iterator[None]:
    """Send the log lines written inside this block, in this thread, to `stream` (the local runtime's log file)."""
    token = _log_target.set(stream)
    try:
        yield
    finally:
        _log_target.reset(token)


# Telemetry event ids are derived, not random: the same stage of the same execution always yields the same
# id, so a record delivered twice (a retried SendTelemetry, a Firehose redelivery) is counted once by the named
# queries. A re-run or a resume is a new execution; the queries count only each study's latest finished one.
_EVENT_NAMESPACE = uuid.UUID("8c4c7f5e-2f0b-4d59-9a53-1f7f0f6c2a11")


_EVENT_NAMESPACE_BYTES = _EVENT_NAMESPACE.bytes


def telemetry_event_id(*, study_id: str, execution_id: str, stage: str, status: str, model_name: str | None = None) -> str:
    """uuid5(_EVENT_NAMESPACE, "study|execution|stage|model|status"), formed as uuid.uuid5 forms it (a test checks) but
    without building UUID objects: it runs for every stage of every study."""
    name = "|".join((study_id, execution_id, stage, model_name or "", status)).encode()
    digest = bytearray(hashlib.sha1(_EVENT_NAMESPACE_BYTES + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def telemetry_record(
    *,
    stage: Stage,
    study_id: str,
    execution_id: str,
    status: Literal["succeeded", "failed"],
    duration_ms: float | None,
    model: ModelRef | None = None,
    error_type: str | None = None,
    bytes_in: int = 0,
    bytes_out: int = 0,
    cold_start: bool = False,
    priority: str | None = None,
    since_arrival_ms: float | None = None,
) -> TelemetryRecord:
    model_name = model.name if model else None
    return TelemetryRecord(
        event_id=telemetry_event_id(study_id=study_id, execution_id=execution_id, stage=stage, status=status, model_name=model_name),
        time=datetime.now(UTC),
        study_id=study_id,
        execution_id=execution_id,
        stage=stage,
        status=status,
        duration_ms=duration_ms,
        model_name=model_name,
        model_version=model.version if model else None,
        error_type=error_type,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        cold_start=cold_start,
        priority=priority,
        since_arrival_ms=since_arrival_ms,
    )


def event_study_id(event: dict[str, Any]) -> str | None:
    """The study an event is about, before its input is parsed: its study_id, the validated study's, or its upload key's."""
    if isinstance(event.get("study_id"), str):
        return event["study_id"]
    study = event.get("study")  # StoreResults gets the validated study whole
    if isinstance(study, dict) and isinstance(study.get("study_id"), str):
        return study["study_id"]
    key = event.get("key")
    return study_id_from_key(key) if isinstance(key, str) and key.startswith("incoming/") else None


def code_location(error: BaseException) -> str:
    """Where an unexpected error was raised, frame by frame, without its message (which could carry input data)."""
    frames = traceback.extract_tb(error.__traceback__)
    return " <- ".join(f"{f.filename.rsplit('/', 2)[-2:][-1]}:{f.lineno} {f.name}" for f in reversed(frames))


D = TypeVar("D")


class StageHandler(Generic[D]):
    """A stage's Lambda entry point: `run(event, deps)` with thread-safe logs, traces and a telemetry record.

    In Lambda, `__call__` builds the dependencies once from the environment's settings (the cold start).
    The local runtime builds its own from its settings with `build(settings)` and calls `invoke`, so two
    runtimes in one process never share dependencies, environment or log destination.
    """

    def __init__(
        self,
        stage: Stage,
        run: Callable[[dict[str, Any], D], StageOutput],
        build: Callable[[Settings], D],
        warm: Callable[[D], None] | None = None,
    ) -> None:
        self.stage = stage
        self.run = run
        self.build = build
        self._warm_up = warm
        self._lambda_deps: D | None = None
        self._lambda_metrics = StdoutEmf()  # in Lambda, EMF lines in the log stream become CloudWatch metrics
        self._lock = threading.Lock()
        self._warm: set[int] = set()  # ids of the dependency sets that have served an invocation
        # Tracing off (outside Lambda, or POWERTOOLS_TRACE_DISABLED): no subsegment to open, so no wrapper to pay for.
        self._traced = (
            self._invoke if tracer.disabled else tracer.capture_lambda_handler(capture_response=False, capture_error=False)(self._invoke)
        )

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if self._lambda_deps is None:
            with self._lock:
                if self._lambda_deps is None:
                    self._lambda_deps = self.build(Settings.from_env())
        return self.invoke(event, context, self._lambda_deps, self._lambda_metrics)

    def warm(self, deps: D) -> str | None:
        """Run the stage's warm start on `deps` (libraries imported, lazy tables built, model sessions loaded and run once
        on the synthetic study of shared/warmup) so the first study does not pay it. Never raises: a warm start that
        fails costs only the time it would have saved; returns its error type (also logged), or None."""
        if self._warm_up is None:
            return None
        try:
            self._warm_up(deps)
        except Exception as e:
            logger.warning("warm start failed", stage=self.stage, error_type=type(e).__name__, code_path=code_location(e))
            return type(e).__name__
        return None

    def invoke(self, event: dict[str, Any], context: Any, deps: D, metrics: EmfWriter | None = None) -> dict[str, Any]:
        """Run the stage with these dependencies; its EMF metrics go to `metrics` (none: not emitted)."""
        return self._traced(event, context, deps=deps, metrics=metrics)

    def _emit(self, metrics: EmfWriter | None, **values: Any) -> None:
        if metrics is None:
            return
        try:
            metrics.write(stage_metrics(stage=self.stage, **values))
        except Exception as e:
            logger.warning("metrics not written", error_type=type(e).__name__)

    def _failed(self, metrics: EmfWriter | None, error_type: str, started: float, study_id: str | None, execution_id: str) -> None:
        """A failed invocation's trace annotation and metrics, under the error name the workflow sees."""
        tracer.put_annotation(key="error_type", value=error_type)
        duration_ms = (time.perf_counter() - started) * 1000
        self._emit(metrics, status="failed", duration_ms=duration_ms, error_type=error_type, study_id=study_id, execution_id=execution_id)

    def _invoke(self, event: dict[str, Any], context: Any, *, deps: D, metrics: EmfWriter | None = None) -> dict[str, Any]:
        with self._lock:
            cold_start = id(deps) not in self._warm
            self._warm.add(id(deps))
        execution_id = str(event.get("execution_id", "direct-invoke"))
        study_id = event_study_id(event)
        keys = {
            "stage": self.stage,
            "execution_id": execution_id,
            "study_id": study_id,
            "request_id": getattr(context, "aws_request_id", None),
        }
        logger.thread_safe_append_keys(**keys)
        tracer.put_annotation(key="stage", value=self.stage)
        if study_id:
            tracer.put_annotation(key="study_id", value=study_id)
        try:
            started = time.perf_counter()
            try:
                try:
                    output = self.run(event, deps)
                except ValidationError as e:
                    fields = ", ".join(".".join(map(str, err["loc"])) for err in e.errors())
                    raise MalformedEvent(f"{self.stage} stage input is malformed at {fields}", study_id=study_id) from e
            except RadStreamError as e:
                logger.warning("stage failed", error_type=e.error_name, retryable=e.retryable, reason=str(e))
                self._failed(metrics, e.error_name, started, study_id, execution_id)
                raise
            except Exception as e:
                # Our own bug or a library's: name it and where it came from, never its message (it could carry data).
                logger.error("stage failed unexpectedly", error_type=type(e).__name__, code_path=code_location(e))
                self._failed(metrics, type(e).__name__, started, study_id, execution_id)
                raise
            except BaseException as e:
                if not is_native_panic(e):
                    raise  # Ctrl-C, SystemExit, a process being killed: not the study's to record
                logger.error("stage failed unexpectedly", error_type=type(e).__name__, code_path=code_location(e))
                self._failed(metrics, NativeLibraryPanic.__name__, started, study_id, execution_id)
                raise NativeLibraryPanic(
                    f"the {self.stage} stage's native library crashed ({type(e).__name__}) on this input; the input is kept",
                    study_id=study_id,
                ) from e
            duration_ms = (time.perf_counter() - started) * 1000
            record = telemetry_record(
                stage=self.stage,
                study_id=output.study_id,
                execution_id=execution_id,
                status="succeeded",
                duration_ms=round(duration_ms, 3),
                model=output.model,
                bytes_in=output.bytes_in,
                bytes_out=output.bytes_out,
                cold_start=cold_start,
                priority=output.priority,
                since_arrival_ms=output.since_arrival_ms,
            )
            if not _local_line("INFO", "stage succeeded", {**keys, "duration_ms": record.duration_ms, "bytes_out": output.bytes_out}):
                logger.info("stage succeeded", duration_ms=record.duration_ms, bytes_out=output.bytes_out)
            self._emit(metrics, **_output_metrics(output, duration_ms), study_id=output.study_id, execution_id=execution_id)
            output.telemetry = record
            return output.model_dump(mode="json", exclude_none=True)
        finally:
            logger.thread_safe_clear_keys()


def _output_metrics(output: StageOutput, duration_ms: float) -> dict[str, Any]:
    """What a succeeded stage's output says in metrics: sizes, and per kind its findings, boxes, model latency or study end."""
    values: dict[str, Any] = {"status": "succeeded", "duration_ms": duration_ms, "bytes_in": output.bytes_in, "bytes_out": output.bytes_out}
    if isinstance(output, ModelOutput):
        values["findings"] = [f.model_dump() for f in output.findings or []]
        values["detections"] = [d.model_dump() for d in output.detections or []]
        if output.model:
            values["models"] = [ModelLatency(output.model.name, output.model.version, duration_ms)]
    elif isinstance(output, PreparedTensors) and output.original.exposure is not None:
        values["exposure"] = output.original.exposure
    elif isinstance(output, StoredResult):
        values["study_status"] = "succeeded"
    elif isinstance(output, RecordedFailure):
        values["study_status"] = "failed"
    return values
