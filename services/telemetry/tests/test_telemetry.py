"""Telemetry service: the lake's Firehose layout, the workflow record, Kinesis batching and partial failures."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, UTC

import boto3
import pytest
from botocore.stub import Stubber

from services.telemetry.domain import TelemetryRequest, send_telemetry
from shared.contracts import TelemetryRecord
from shared.errors import ConfigurationError, StorageUnavailable
from shared.observability import telemetry_record
from shared.telemetry import KinesisSink, LocalLakeSink


def record(stage: str, when: datetime | None = None) -> TelemetryRecord:
    r = telemetry_record(stage=stage, study_id="s1", execution_id="e1", status="succeeded", duration_ms=5.0)
    return r.model_copy(update={"time": when}) if when else r


def read_lake(store) -> dict[str, list[dict]]:
    return {
        key: [json.loads(line) for line in gzip.decompress(store.get_bytes("telemetry", key)).splitlines()]
        for key in store.list_keys("telemetry")
    }


def test_lake_is_gzip_ndjson_partitioned_by_utc_date_and_hour(store):
    t = datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC)
    LocalLakeSink(store, "telemetry").send([record("validate", t), record("prepare", t + timedelta(seconds=2))])
    lake = read_lake(store)
    prefixes = sorted(k.rsplit("/", 1)[0] for k in lake)
    assert prefixes == ["telemetry/dt=2026-11-26/hour=23", "telemetry/dt=2026-11-27/hour=00"]
    assert all(k.endswith(".json.gz") for k in lake)
    assert sorted(r["stage"] for rows in lake.values() for r in rows) == ["prepare", "validate"]


def test_send_adds_one_workflow_record_with_end_to_end_time(store):
    started = datetime.now(UTC) - timedelta(milliseconds=250)
    request = TelemetryRequest(
        study_id="s1",
        status="failed",
        execution_id="e1",
        started_at=started,
        records=[record("validate").model_dump(mode="json"), [record("inference").model_dump(mode="json")], None],
    )
    out = send_telemetry(request, LocalLakeSink(store, "telemetry"))
    assert out.sent == 3
    rows = [r for rows in read_lake(store).values() for r in rows]
    workflow = [r for r in rows if r["stage"] == "workflow"]
    assert len(workflow) == 1 and workflow[0]["status"] == "failed" and workflow[0]["duration_ms"] >= 250


def kinesis():
    return boto3.client("kinesis", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_kinesis_sink_resends_only_the_failed_entries():
    client = kinesis()
    records = [record("validate"), record("prepare")]
    with Stubber(client) as stub:
        stub.add_response(
            "put_records",
            {
                "FailedRecordCount": 1,
                "Records": [
                    {"SequenceNumber": "1", "ShardId": "s"},
                    {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"},
                ],
            },
            {
                "StreamName": "radstream-telemetry",
                "Records": [{"Data": r.model_dump_json().encode() + b"\n", "PartitionKey": "s1"} for r in records],
            },
        )
        stub.add_response(
            "put_records",
            {"Records": [{"SequenceNumber": "2", "ShardId": "s"}]},
            {
                "StreamName": "radstream-telemetry",
                "Records": [{"Data": records[1].model_dump_json().encode() + b"\n", "PartitionKey": "s1"}],
            },
        )
        assert KinesisSink(client, "radstream-telemetry").send(records) == 2
        stub.assert_no_pending_responses()


def test_kinesis_throttling_is_retryable_and_a_missing_stream_names_the_setting():
    client = kinesis()
    with Stubber(client) as stub:
        stub.add_client_error("put_records", service_error_code="ProvisionedThroughputExceededException", http_status_code=400)
        with pytest.raises(StorageUnavailable, match="kinesis stream radstream-telemetry"):
            KinesisSink(client, "radstream-telemetry").send([record("validate")])
        stub.add_client_error("put_records", service_error_code="ResourceNotFoundException", http_status_code=400)
        with pytest.raises(ConfigurationError, match="TELEMETRY_STREAM_NAME"):
            KinesisSink(client, "radstream-telemetry").send([record("validate")])
