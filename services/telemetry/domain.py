"""Telemetry stage: ship the study's per-stage records, plus one for the whole workflow, to the sink.

Inputs: the records every stage returned (collected by the workflow), the execution's start time.
Outputs: how many records were sent. The sink is Kinesis in AWS (Firehose then writes the lake) and
the local lake in the embedded default; both end as gzip NDJSON under dt=YYYY-MM-DD/hour=HH/.
"""

from __future__ import annotations

from datetime import datetime, UTC
from typing import Any

from shared.contracts import TelemetryRecord
from shared.messages import TelemetryRequest, TelemetrySent
from shared.observability import telemetry_record
from shared.telemetry import TelemetrySink


def flatten(items: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, list):
            out.extend(flatten(item))
        elif item is not None:
            out.append(item)
    return out


def send_telemetry(request: TelemetryRequest, sink: TelemetrySink) -> TelemetrySent:
    records = [TelemetryRecord.model_validate(r) for r in flatten(request.records)]
    duration_ms = None
    if request.started_at is not None:
        duration_ms = round((datetime.now(UTC) - request.started_at).total_seconds() * 1000, 3)
    records.append(
        telemetry_record(
            stage="workflow",
            study_id=request.study_id,
            execution_id=request.execution_id,
            status=request.status,
            duration_ms=duration_ms,
            error_type=next((r.error_type for r in records if r.error_type), None),
        )
    )
    sink.send(records)
    return TelemetrySent(study_id=request.study_id, sent=len(records), bytes_out=sum(len(r.model_dump_json()) for r in records))
