"""Logs, traces and the per-stage telemetry record, in one place, for every handler.

No image data and no patient data go into logs, traces or responses: handlers log ids, sizes,
timings and error types; the tracer never captures responses.
"""
from __future__ import annotations

import functools
import logging
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any

from aws_lambda_powertools import Logger, Tracer
from pydantic import BaseModel, ValidationError

from shared.contracts import ModelRef, Stage, TelemetryRecord
from shared.errors import MalformedEvent, RadStreamError


class _LogStream(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (Lambda's log stream), or to a file the local runtime names."""

    def __init__(self) -> None:
        self.target: IO[str] | None = None
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return self.target or sys.stdout

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        """StreamHandler.__init__ sets a stream; this handler looks it up at each write instead."""


_log_stream = _LogStream()
logger = Logger(service="radstream", logger_handler=_log_stream)
tracer = Tracer(service="radstream")


def redirect_logs(stream: IO[str] | None) -> None:
    """The local runtime sends the handlers' structured logs to a file (None: back to stdout), so the CLI's output stays readable."""
    _log_stream.target = stream


class StageOutput(BaseModel):
    """Base of every stage's output: the study it is about, and what the telemetry record counts."""

    study_id: str
    bytes_in: int = 0
    bytes_out: int = 0
    model: ModelRef | None = None


def telemetry_record(
    *, stage: Stage, study_id: str, execution_id: str, status: str, duration_ms: float | None,
    model: ModelRef | None = None, error_type: str | None = None, bytes_in: int = 0, bytes_out: int = 0,
    cold_start: bool = False,
) -> TelemetryRecord:
    return TelemetryRecord(
        event_id=str(uuid.uuid4()), time=datetime.now(timezone.utc), study_id=study_id, execution_id=execution_id,
        stage=stage, status=status, duration_ms=duration_ms, model_name=model.name if model else None,
        model_version=model.version if model else None, error_type=error_type, bytes_in=bytes_in,
        bytes_out=bytes_out, cold_start=cold_start,
    )


def stage_handler(stage: Stage) -> Callable[[Callable[[dict[str, Any]], StageOutput]], Callable[[dict[str, Any], Any], dict[str, Any]]]:
    """Turn `run(event) -> StageOutput` into a Lambda handler that logs, traces and adds a telemetry record."""

    def decorate(run: Callable[[dict[str, Any]], StageOutput]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
        cold = [True]

        @tracer.capture_lambda_handler(capture_response=False)
        @functools.wraps(run)
        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            cold_start, cold[0] = cold[0], False
            execution_id = str(event.get("execution_id", "direct-invoke"))
            logger.append_keys(
                stage=stage, execution_id=execution_id, study_id=event.get("study_id"),
                request_id=getattr(context, "aws_request_id", None),
            )
            started = time.perf_counter()
            try:
                try:
                    output = run(event)
                except ValidationError as e:
                    fields = ", ".join(".".join(map(str, err["loc"])) for err in e.errors())
                    raise MalformedEvent(f"{stage} stage input is malformed at {fields}", study_id=event.get("study_id")) from e
                tracer.put_annotation(key="study_id", value=output.study_id)
                tracer.put_annotation(key="stage", value=stage)
            except RadStreamError as e:
                logger.warning("stage failed", error_type=e.error_name, retryable=e.retryable, reason=str(e))
                raise
            duration_ms = (time.perf_counter() - started) * 1000
            record = telemetry_record(
                stage=stage, study_id=output.study_id, execution_id=execution_id, status="succeeded",
                duration_ms=round(duration_ms, 3), model=output.model, bytes_in=output.bytes_in,
                bytes_out=output.bytes_out, cold_start=cold_start,
            )
            logger.info("stage succeeded", study_id=output.study_id, duration_ms=record.duration_ms, bytes_out=output.bytes_out)
            payload = output.model_dump(mode="json", exclude_none=True)
            payload["telemetry"] = record.model_dump(mode="json")
            return payload

        return handler

    return decorate
