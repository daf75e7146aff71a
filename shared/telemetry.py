"""Telemetry sink port and adapters: a local lake laid out as Firehose lays it out, or Kinesis."""
from __future__ import annotations

import gzip
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from shared.contracts import TelemetryRecord
from shared.aws_errors import translated
from shared.errors import StorageUnavailable
from shared.storage import ObjectStore

LAKE_PREFIX = "telemetry"


class TelemetrySink(Protocol):
    def send(self, records: Sequence[TelemetryRecord]) -> int: ...


def partition_prefix(time: datetime) -> str:
    """Firehose's dynamic partitioning in template.yaml writes the same dt=/hour= layout (UTC)."""
    t = time.astimezone(timezone.utc)
    return f"{LAKE_PREFIX}/dt={t:%Y-%m-%d}/hour={t:%H}/"


def to_ndjson(records: Sequence[TelemetryRecord]) -> bytes:
    return b"".join(r.model_dump_json().encode() + b"\n" for r in records)


class LocalLakeSink:
    """One gzip NDJSON object per batch and partition, named like Firehose's delivery objects."""

    def __init__(self, store: ObjectStore, bucket: str, stream_name: str = "radstream-telemetry") -> None:
        self.store = store
        self.bucket = bucket
        self.stream_name = stream_name

    def send(self, records: Sequence[TelemetryRecord]) -> int:
        by_partition: dict[str, list[TelemetryRecord]] = defaultdict(list)
        for record in records:
            by_partition[partition_prefix(record.time)].append(record)
        now = datetime.now(timezone.utc)
        for prefix, batch in by_partition.items():
            key = f"{prefix}{self.stream_name}-1-{now:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}.json.gz"
            self.store.put_bytes(self.bucket, key, gzip.compress(to_ndjson(batch), mtime=0), content_type="application/gzip")
        return len(records)


class KinesisSink:
    """Kinesis Data Streams; Firehose reads the stream and writes the lake (see template.yaml)."""

    MAX_BATCH = 500  # PutRecords' limit per call

    def __init__(self, client: Any, stream_name: str, attempts: int = 3) -> None:
        self.client = client
        self.stream_name = stream_name
        self.attempts = attempts

    def send(self, records: Sequence[TelemetryRecord]) -> int:
        for start in range(0, len(records), self.MAX_BATCH):
            self._put(list(records[start : start + self.MAX_BATCH]))
        return len(records)

    def _put(self, batch: list[TelemetryRecord]) -> None:
        entries = [{"Data": r.model_dump_json().encode() + b"\n", "PartitionKey": r.study_id} for r in batch]
        for _ in range(self.attempts):
            with translated(f"kinesis stream {self.stream_name}", "TELEMETRY_STREAM_NAME"):
                response = self.client.put_records(StreamName=self.stream_name, Records=entries)
            if not response.get("FailedRecordCount"):
                return
            # Resend only the entries Kinesis throttled or failed; the rest are in.
            entries = [e for e, r in zip(entries, response["Records"]) if "ErrorCode" in r]
        raise StorageUnavailable(f"kinesis stream {self.stream_name}: {len(entries)} records still failing after {self.attempts} attempts")
