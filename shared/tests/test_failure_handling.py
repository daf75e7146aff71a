"""Observations 6 and 9 of "Nothing lost": one AWS error table for every adapter, and local disk errors as outages."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ParamValidationError
from botocore.stub import Stubber

from radstream.analytics import AthenaQueryRunner
from shared import atomicfile
from shared.contracts import TelemetryRecord
from shared.errors import ConfigurationError, ObjectNotFound, StorageUnavailable
from shared.events import EventBridgePublisher
from shared.faults import FaultyObjectStore, parse_faults
from shared.observability import telemetry_record
from shared.storage import LocalObjectStore, S3ObjectStore
from shared.telemetry import KinesisSink


def client(service: str):
    return boto3.session.Session(region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s").client(service)


def record() -> TelemetryRecord:
    return telemetry_record(stage="validate", study_id="s1", execution_id="e1", status="succeeded", duration_ms=1.0)


# Each adapter's call, with the operation the stub answers: the same botocore error must mean the same thing on all four.
ADAPTERS = {
    "s3": ("s3", "put_object", lambda c: S3ObjectStore(c).put_bytes("bucket", "k", b"x")),
    "kinesis": ("kinesis", "put_records", lambda c: KinesisSink(c, "stream").send([record()])),
    "events": ("events", "put_events", lambda c: EventBridgePublisher(c, "bus").publish("Study Failed", {"study_id": "s1"})),
    "athena": ("athena", "start_query_execution", lambda c: AthenaQueryRunner(c, "wg", "db").run("error_rate")),
}


# AWS error codes (with the HTTP status they come with) by what every adapter must make of them.
AWS_ERRORS: dict[type[Exception], dict[str, int]] = {
    ConfigurationError: {
        "AccessDenied": 403,
        "AccessDeniedException": 400,
        "ResourceNotFoundException": 400,
        "NoSuchBucket": 404,
        "ValidationException": 400,
        "InvalidRequestException": 400,
    },
    StorageUnavailable: {
        "ThrottlingException": 400,
        "TooManyRequestsException": 400,
        "SlowDown": 503,
        "ProvisionedThroughputExceededException": 400,
        "InternalError": 500,
        "InternalServerException": 500,
        "SomethingNew": 502,
    },
}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
@pytest.mark.parametrize(
    ("code", "status", "expected"), [(code, status, expected) for expected, codes in AWS_ERRORS.items() for code, status in codes.items()]
)
def test_every_adapter_reads_an_aws_error_the_same_way(adapter, code, status, expected):
    service, operation, call = ADAPTERS[adapter]
    c = client(service)
    with Stubber(c) as stub:
        stub.add_client_error(operation, service_error_code=code, http_status_code=status)
        with pytest.raises(expected) as caught:
            call(c)
    assert type(caught.value) is expected, f"{adapter}: {code} became {type(caught.value).__name__}"
    assert code in str(caught.value), "the error names AWS's code"
    if expected is ConfigurationError:
        assert "check" in str(caught.value), "a configuration error says what to check"


def test_a_missing_object_is_not_found_and_our_own_bugs_are_not_translated():
    c = client("s3")
    with Stubber(c) as stub:
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        with pytest.raises(ObjectNotFound):
            S3ObjectStore(c).get_bytes("bucket", "k")
    with pytest.raises(ParamValidationError):  # a bug of ours stays itself: never a data error, never "unavailable"
        S3ObjectStore(c).put_bytes("bucket", "k", None)  # type: ignore[arg-type]


def test_a_full_disk_is_an_outage_of_the_local_store(tmp_path, monkeypatch):
    store = LocalObjectStore(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomicfile.os, "write", full)  # the disk fills while the object is written
    with pytest.raises(StorageUnavailable, match="ENOSPC.*writing s3://results/k"):
        store.put_bytes("results", "k", b"x")
    monkeypatch.undo()
    assert store.head("results", "k") is None
    assert os.listdir(tmp_path / ".staging") == [], "the temp file is removed"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_a_read_only_folder_is_an_outage_of_the_local_store(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results").chmod(0o500)
    with pytest.raises(StorageUnavailable, match="EACCES"):
        LocalObjectStore(tmp_path).put_bytes("results", "k", b"x")


def test_delete_is_on_both_adapters_and_missing_is_fine(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.put_bytes("results", "failed/s1/error.json", b"{}")
    store.delete("results", "failed/s1/error.json")
    store.delete("results", "failed/s1/error.json")
    assert store.head("results", "failed/s1/error.json") is None
    c = client("s3")
    with Stubber(c) as stub:
        stub.add_response("delete_object", {}, {"Bucket": "b", "Key": "failed/s1/error.json"})
        S3ObjectStore(c).delete("b", "failed/s1/error.json")


def test_the_faulty_store_fails_the_way_real_stores_do(tmp_path: Path):
    assert parse_faults("enospc=0.5,seed=3") == ({"enospc": 0.5}, 3)
    with pytest.raises(ConfigurationError, match="RADSTREAM_FAULTS"):
        parse_faults("gremlins=1")
    for kind, pattern in (("enospc", "ENOSPC"), ("timeout", "TimeoutError|ETIMEDOUT"), ("throttle", "SlowDown")):
        store = FaultyObjectStore(tmp_path, f"{kind}=1")
        with pytest.raises(StorageUnavailable, match=pattern):
            store.put_bytes("b", "k", b"x")
        assert store.injected[kind] == 1
