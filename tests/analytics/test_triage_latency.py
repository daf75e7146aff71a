"""triage_latency_by_priority (template.yaml's named query, run by DuckDB): arrival-to-result and arrival-to-notification
p50/p95 by priority, from the store and notify records of each study's latest finished execution; and the figures the
local pipeline writes for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from radstream.analytics import DuckDBQueryRunner
from shared.contracts import TelemetryRecord
from shared.observability import telemetry_record
from shared.storage import LocalObjectStore
from shared.telemetry import LocalLakeSink


def study_records(study: str, priority: str, result_ms: float, notified_ms: float | None, at: datetime) -> list[TelemetryRecord]:
    def one(stage: str, **extra: object) -> TelemetryRecord:
        r = telemetry_record(stage=stage, study_id=study, execution_id=f"exec-{study}", status="succeeded", duration_ms=5.0, **extra)  # type: ignore[arg-type]
        return r.model_copy(update={"time": at})

    return [
        one("validate"),
        one("store", priority=priority, since_arrival_ms=result_ms),
        one("notify", priority=priority, since_arrival_ms=notified_ms),
        one("workflow"),
    ]


def test_triage_latency_by_priority(tmp_path: Path) -> None:
    at = datetime.now(UTC) - timedelta(minutes=5)
    records: list[TelemetryRecord] = []
    for i in range(20):  # routine: 1..20 s to the result, notified 0.5 s later; half of them fire no rule
        records += study_records(f"r{i}", "routine", 1000.0 * (i + 1), 1000.0 * (i + 1) + 500 if i % 2 == 0 else None, at)
    for i in range(4):
        records += study_records(f"s{i}", "stat", 300.0 + 100 * i, 400.0 + 100 * i, at)
    # A superseded execution of s0 (no workflow record: it never finished) does not count.
    records.append(
        telemetry_record(
            stage="store",
            study_id="s0",
            execution_id="exec-old",
            status="succeeded",
            duration_ms=1.0,
            priority="stat",
            since_arrival_ms=99_000.0,
        )
    )
    LocalLakeSink(LocalObjectStore(tmp_path), "telemetry").send(records)
    rows = {(r["priority"], r["span"]): r for r in DuckDBQueryRunner(tmp_path / "telemetry").run("triage_latency_by_priority").as_dicts()}
    assert list(rows) == [
        ("stat", "arrival_to_notification"),
        ("stat", "arrival_to_result"),
        ("routine", "arrival_to_notification"),
        ("routine", "arrival_to_result"),
    ]
    assert rows[("stat", "arrival_to_result")]["studies"] == 4 and rows[("stat", "arrival_to_result")]["max_s"] == 0.6
    assert rows[("stat", "arrival_to_notification")]["max_s"] == 0.7
    assert rows[("routine", "arrival_to_notification")]["studies"] == 10
    assert rows[("routine", "arrival_to_result")]["max_s"] == 20.0
    assert 9.0 <= rows[("routine", "arrival_to_result")]["p50_s"] <= 12.0
    assert 18.0 <= rows[("routine", "arrival_to_result")]["p95_s"] <= 20.0
