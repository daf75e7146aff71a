"""The AWS adapters against an AWS API emulator over HTTP: S3ObjectStore, KinesisSink, EventBridgePublisher."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, UTC

import pytest
from botocore.config import Config

from shared import wiring
from shared.contracts import TelemetryRecord
from shared.errors import ConfigurationError, ObjectNotFound, PermanentError, StorageUnavailable
from shared.events import STUDY_FAILED, EventBridgePublisher, LocalEventLog
from shared.settings import Settings
from shared.storage import S3ObjectStore
from shared.telemetry import KinesisSink

from .conftest import queue_athena_rows


def record(study_id: str, stage: str = "validate") -> TelemetryRecord:
    return TelemetryRecord(
        event_id=str(uuid.uuid4()),
        time=datetime.now(UTC),
        study_id=study_id,
        execution_id="exec-1",
        stage=stage,
        status="succeeded",
        duration_ms=12.5,
    )


# --- S3ObjectStore -------------------------------------------------------------------------------


def test_s3_put_get_head_list(emulator, bucket):
    store = S3ObjectStore(emulator.client("s3"))
    stored = store.put_bytes(bucket, "results/s1/result.json", b'{"ok": true}', content_type="application/json")
    store.put_bytes(bucket, "results/s2/result.json", b"{}")
    store.put_bytes(bucket, "failed/s3/error.json", b"{}")

    assert (stored.bucket, stored.key, stored.size) == (bucket, "results/s1/result.json", 12)
    assert store.get_bytes(bucket, "results/s1/result.json") == b'{"ok": true}'
    assert store.head(bucket, "results/s1/result.json").size == 12
    assert store.list_keys(bucket, "results/") == ["results/s1/result.json", "results/s2/result.json"]
    assert emulator.client("s3").head_object(Bucket=bucket, Key="results/s1/result.json")["ContentType"] == "application/json"


def test_s3_missing_object_is_not_found(emulator, bucket):
    store = S3ObjectStore(emulator.client("s3"))
    with pytest.raises(ObjectNotFound):
        store.get_bytes(bucket, "incoming/nope/study.json")
    assert store.head(bucket, "incoming/nope/study.json") is None


def test_s3_missing_bucket_is_a_configuration_error_not_a_missing_object(emulator):
    """A bucket that does not exist is a deployment to fix, not a study whose sidecar is gone."""
    store = S3ObjectStore(emulator.client("s3"))
    with pytest.raises(ConfigurationError, match="NoSuchBucket.*_BUCKET"):
        store.get_bytes("radstream-no-such-bucket", "k")
    with pytest.raises(ConfigurationError, match="NoSuchBucket"):
        store.put_bytes("radstream-no-such-bucket", "k", b"x")


def test_s3_unreachable_endpoint_is_retryable(emulator):
    import boto3

    dead = boto3.session.Session(region_name="eu-west-1").client(
        "s3", endpoint_url="http://127.0.0.1:9", config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1)
    )
    with pytest.raises(StorageUnavailable) as caught:
        S3ObjectStore(dead).get_bytes("b", "k")
    assert caught.value.retryable


def test_s3_unsafe_key_is_refused_before_any_call(emulator, bucket):
    with pytest.raises(PermanentError):
        S3ObjectStore(emulator.client("s3")).put_bytes(bucket, "../etc/passwd", b"x")


def test_wiring_builds_s3_from_the_environment(emulator, bucket):
    """shared.wiring builds its boto3 client from AWS_ENDPOINT_URL and the region, as a Lambda would."""
    store = wiring.object_store(Settings(backend="aws"))
    store.put_bytes(bucket, "a/b", b"1")
    assert emulator.client("s3").get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"1"


# --- KinesisSink ---------------------------------------------------------------------------------


def read_stream(client, stream: str) -> list[dict]:
    shard = client.describe_stream(StreamName=stream)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    return [json.loads(r["Data"]) for r in client.get_records(ShardIterator=iterator, Limit=10_000)["Records"]]


def test_kinesis_records_land_in_the_stream(emulator):
    client = emulator.client("kinesis")
    client.create_stream(StreamName="radstream-telemetry-test", ShardCount=1)
    client.get_waiter("stream_exists").wait(StreamName="radstream-telemetry-test", WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    records = [record("s1", "validate"), record("s1", "prepare"), record("s2", "store")]

    assert KinesisSink(client, "radstream-telemetry-test").send(records) == 3

    landed = read_stream(client, "radstream-telemetry-test")
    assert [(r["study_id"], r["stage"]) for r in landed] == [("s1", "validate"), ("s1", "prepare"), ("s2", "store")]
    assert TelemetryRecord.model_validate(landed[0]) == records[0]


def test_kinesis_batches_past_the_put_records_limit(emulator):
    client = emulator.client("kinesis")
    client.create_stream(StreamName="big", ShardCount=1)
    client.get_waiter("stream_exists").wait(StreamName="big", WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    KinesisSink(client, "big").send([record(f"s{i}") for i in range(KinesisSink.MAX_BATCH + 20)])
    assert len(read_stream(client, "big")) == KinesisSink.MAX_BATCH + 20


def test_kinesis_missing_stream_names_the_setting(emulator):
    with pytest.raises(ConfigurationError, match="TELEMETRY_STREAM_NAME"):
        KinesisSink(emulator.client("kinesis"), "no-such-stream").send([record("s1")])


# --- EventBridge ---------------------------------------------------------------------------------


def test_eventbridge_publishes_to_a_rule_target(emulator):
    events, sqs = emulator.client("events"), emulator.client("sqs")
    queue_url = sqs.create_queue(QueueName="study-failed")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="study-failed", EventPattern=json.dumps({"source": ["radstream"], "detail-type": [STUDY_FAILED]}))
    events.put_targets(Rule="study-failed", Targets=[{"Id": "q", "Arn": queue_arn}])

    EventBridgePublisher(events, "default").publish(STUDY_FAILED, {"study_id": "s1", "stage": "validate", "error_type": "InvalidStudy"})

    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert len(messages) == 1
    event = json.loads(messages[0]["Body"])
    assert (event["source"], event["detail-type"]) == ("radstream", STUDY_FAILED)
    assert event["detail"] == {"error_type": "InvalidStudy", "stage": "validate", "study_id": "s1"}


def test_eventbridge_missing_bus_names_the_setting(emulator):
    with pytest.raises(ConfigurationError, match="EVENT_BUS_NAME"):
        EventBridgePublisher(emulator.client("events"), "no-such-bus").publish(STUDY_FAILED, {"study_id": "s1"})


def test_eventbridge_refuses_oversized_detail(emulator):
    with pytest.raises(PermanentError):
        EventBridgePublisher(emulator.client("events"), "default").publish(STUDY_FAILED, {"blob": "x" * 300_000})


def test_local_event_log_appends_json_lines(tmp_path):
    log = LocalEventLog(tmp_path)
    log.publish(STUDY_FAILED, {"study_id": "s1"})
    log.publish(STUDY_FAILED, {"study_id": "s2"})
    assert log.path == tmp_path / "events" / "events.jsonl"
    assert [(e["source"], e["detail-type"], e["detail"]["study_id"]) for e in log.read()] == [
        ("radstream", STUDY_FAILED, "s1"),
        ("radstream", STUDY_FAILED, "s2"),
    ]


def test_athena_runs_a_named_query_and_types_its_rows(emulator):
    """The Athena runner over HTTP: moto answers the next query with the rows queued through its API."""

    from radstream.analytics import AthenaQueryRunner

    client = emulator.client("athena")
    client.create_work_group(
        Name="radstream-dev", Configuration={"ResultConfiguration": {"OutputLocation": "s3://results/athena-results/"}}
    )
    columns = [("model_name", "varchar"), ("model_version", "varchar"), ("inferences", "bigint"), ("p95_ms", "double")]
    queue_athena_rows(emulator, columns, [["chest_xray_classifier", "1", "42", "4.5"]])
    runner = AthenaQueryRunner(client, "radstream-dev", "radstream_dev", poll_initial_s=0.01)
    result = runner.run("model_comparison")
    assert result.columns == [name for name, _ in columns]
    assert result.rows == [("chest_xray_classifier", "1", 42, 4.5)]


def test_s3_put_file_uploads_the_file_whole(emulator, bucket, tmp_path):
    store = S3ObjectStore(emulator.client("s3"))
    source = tmp_path / "image.png"
    source.write_bytes(bytes(range(256)) * 4096)
    stored = store.put_file(bucket, "incoming/s1/image.png", source)
    assert stored.size == source.stat().st_size
    assert store.get_bytes(bucket, "incoming/s1/image.png") == source.read_bytes()
