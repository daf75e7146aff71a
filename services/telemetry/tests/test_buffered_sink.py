"""The local lake's Firehose: buffered by size and by time, one object per buffer and partition, nothing lost when the
process is killed before a flush, nothing delivered twice when it is killed during one."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta, UTC
from pathlib import Path


from shared.contracts import ModelRef
from shared.errors import StorageUnavailable
from shared.observability import telemetry_record
from shared.settings import Settings
from shared.storage import LocalObjectStore
from shared.telemetry import BufferedLakeSink, buffer_dir, recover_buffers
from shared.wiring import telemetry_sink

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 26, 23, 59, 58, tzinfo=UTC)


def records(study: str, when: datetime = T0, n: int = 7) -> list:
    stages = ["validate", "prepare", "inference", "inference", "inference", "store", "workflow"][:n]
    return [
        telemetry_record(
            stage=s,
            study_id=study,
            execution_id=f"e-{study}",
            status="succeeded",
            duration_ms=1.0 + i,
            model=ModelRef(name=f"m{i}", version="1", provenance="test") if s == "inference" else None,
        ).model_copy(update={"time": when + timedelta(seconds=i)})
        for i, s in enumerate(stages)
    ]


def lake_objects(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data / "telemetry")): p.read_bytes() for p in sorted((data / "telemetry" / "telemetry").rglob("*.json.gz"))}


def lake_lines(data: Path) -> list[dict]:
    return [json.loads(line) for blob in lake_objects(data).values() for line in gzip.decompress(blob).splitlines()]


def buffers(data: Path) -> list[Path]:
    folder = buffer_dir(data / "telemetry")
    return sorted(folder.iterdir()) if folder.is_dir() else []


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def sink_at(data: Path, **kwargs) -> BufferedLakeSink:
    return BufferedLakeSink(LocalObjectStore(data), "telemetry", data / "telemetry", **kwargs)


def test_nothing_reaches_the_lake_until_the_buffer_is_full_then_one_object_per_partition(tmp_path):
    one_study = len(b"".join(r.model_dump_json().encode() + b"\n" for r in records("s-0")))
    sink = sink_at(tmp_path, size_bytes=3 * one_study + 10, timer=False)
    for i in range(3):
        sink.send(records(f"s-{i}"))
    assert lake_objects(tmp_path) == {}, "under the size hint: still buffered"
    assert len(list(buffer_dir(tmp_path / "telemetry").glob("*.ndjson"))) == 1
    sink.send(records("s-3"))  # over it: the buffer is delivered
    objects = lake_objects(tmp_path)
    # The records straddle midnight: one object for 23h on the 26th, one for 00h on the 27th, Firehose's names.
    assert sorted(k.rsplit("/", 1)[0] for k in objects) == ["telemetry/dt=2026-11-26/hour=23", "telemetry/dt=2026-11-27/hour=00"]
    assert all(k.rsplit("/", 1)[1].startswith("radstream-telemetry-1-") for k in objects)
    assert Counter(r["study_id"] for r in lake_lines(tmp_path)) == {f"s-{i}": 7 for i in range(4)}
    assert not buffers(tmp_path), "a delivered buffer is removed"
    sink.send(records("s-4"))
    sink.close()
    assert len(lake_objects(tmp_path)) == 4 and len(lake_lines(tmp_path)) == 35


def test_the_interval_delivers_on_the_next_send_and_close_delivers_the_rest(tmp_path):
    clock = Clock()
    sink = sink_at(tmp_path, interval_s=60, clock=clock, timer=False)
    sink.send(records("a"))
    clock.now += 59
    sink.send(records("b"))
    assert lake_objects(tmp_path) == {}
    clock.now += 1  # 60 s after the buffer's first record
    sink.send(records("c"))
    assert {r["study_id"] for r in lake_lines(tmp_path)} == {"a", "b", "c"}
    sink.send(records("d"))
    sink.close()
    assert Counter(r["study_id"] for r in lake_lines(tmp_path)) == {s: 7 for s in "abcd"}
    empty = sink_at(tmp_path / "empty")
    empty.close()
    assert lake_objects(tmp_path / "empty") == {} and not buffers(tmp_path / "empty")


def test_a_quiet_buffer_is_delivered_by_its_timer(tmp_path):
    sink = sink_at(tmp_path, interval_s=0.3)
    sink.send(records("quiet"))
    deadline = time.monotonic() + 10
    while buffers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Counter(r["study_id"] for r in lake_lines(tmp_path)) == {"quiet": 7}, "no further send, no close: the timer flushed it"
    sink.close()


class OutageStore(LocalObjectStore):
    out = True

    def put_bytes(self, bucket, key, data, *, content_type="application/octet-stream"):
        if self.out:
            raise StorageUnavailable("local store: ENOSPC (No space left on device) writing")
        return super().put_bytes(bucket, key, data, content_type=content_type)


def test_a_store_outage_at_delivery_keeps_the_records_buffered(tmp_path):
    store = OutageStore(tmp_path)
    sink = BufferedLakeSink(store, "telemetry", tmp_path / "telemetry", size_bytes=1, timer=False)
    assert sink.send(records("a")) == 7, "the records are in the buffer file: the send succeeds"
    sink.send(records("b"))
    assert lake_objects(tmp_path) == {}
    store.out = False
    sink.send(records("c"))  # the next delivery takes the buffers the outage held back, in order
    sink.close()
    assert Counter(r["study_id"] for r in lake_lines(tmp_path)) == {"a": 7, "b": 7, "c": 7}


def test_a_store_outage_at_close_leaves_the_buffer_for_the_next_process(tmp_path):
    store = OutageStore(tmp_path)
    sink = BufferedLakeSink(store, "telemetry", tmp_path / "telemetry", timer=False)
    sink.send(records("a"))
    sink.close()
    assert lake_objects(tmp_path) == {} and len(list(buffer_dir(tmp_path / "telemetry").glob("*.ndjson"))) == 1
    sink_at(tmp_path).close()  # the next start delivers it
    assert Counter(r["study_id"] for r in lake_lines(tmp_path)) == {"a": 7}


def test_a_live_buffer_is_never_taken_by_another_sink(tmp_path):
    first = sink_at(tmp_path, timer=False)
    first.send(records("a"))
    assert recover_buffers(tmp_path / "telemetry", LocalObjectStore(tmp_path), "telemetry") == 0, "locked by its writer"
    second = sink_at(tmp_path, timer=False)
    second.send(records("b"))
    second.close()
    assert {r["study_id"] for r in lake_lines(tmp_path)} == {"b"}
    first.close()
    assert Counter(r["study_id"] for r in lake_lines(tmp_path)) == {"a": 7, "b": 7}


WRITER = textwrap.dedent("""
    import sys
    from datetime import datetime, timedelta, timezone
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from shared.observability import telemetry_record
    from shared.storage import LocalObjectStore
    from shared.telemetry import BufferedLakeSink
    data = Path(sys.argv[1])
    sink = BufferedLakeSink(LocalObjectStore(data), "telemetry", data / "telemetry", interval_s=3600)
    t = datetime(2026, 11, 26, 23, 59, 58, tzinfo=timezone.utc)
    for i in range(50):
        sink.send([telemetry_record(stage=s, study_id=f"k-{i}", execution_id=f"e-{i}", status="succeeded", duration_ms=1.0)
                   .model_copy(update={"time": t + timedelta(seconds=i)}) for s in ("validate", "prepare", "workflow")])
    print("sent", flush=True)
    sys.stdin.read()  # wait to be killed
""")


def test_a_sigkilled_process_loses_no_buffered_record_and_the_next_start_delivers_them_once(tmp_path):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "sent"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert lake_objects(tmp_path) == {}, "killed before any flush"
    [buffer] = buffer_dir(tmp_path / "telemetry").glob("*.ndjson")
    # A kill in the middle of an append leaves a cut line at the end: that send never returned, so it is dropped.
    with open(buffer, "ab") as f:
        f.write(b'{"schema_version":"1","event_id":"cut-sh')
    sink = sink_at(tmp_path)  # the next start
    sink.close()
    lines = lake_lines(tmp_path)
    assert Counter(r["study_id"] for r in lines) == {f"k-{i}": 3 for i in range(50)}
    assert len({r["event_id"] for r in lines}) == len(lines) == 150, "each record once"
    assert not buffers(tmp_path)


def test_a_delivery_cut_short_before_the_buffer_is_removed_writes_the_same_objects_again(tmp_path):
    sink = sink_at(tmp_path, timer=False)
    sink.send(records("a"))
    [buffer] = buffer_dir(tmp_path / "telemetry").glob("*.ndjson")
    saved = buffer.read_bytes()
    sink.close()
    first = lake_objects(tmp_path)
    buffer.write_bytes(saved)  # as if the process died after writing the objects, before removing its buffer
    assert recover_buffers(tmp_path / "telemetry", LocalObjectStore(tmp_path), "telemetry") == 1
    assert lake_objects(tmp_path) == first, "same keys, same bytes: no second copy"


def test_the_local_backend_buffers_with_the_settings_hints(tmp_path):
    sink = telemetry_sink(Settings(data_dir=tmp_path, telemetry_buffer_mb=2, telemetry_buffer_s=30))
    assert isinstance(sink, BufferedLakeSink) and (sink.size_bytes, sink.interval_s) == (2 * 1024 * 1024, 30)
    assert sink.lake_root == tmp_path / "telemetry"
    sink.close()
    assert Settings.from_env({"TELEMETRY_BUFFER_MB": "8", "TELEMETRY_BUFFER_SECONDS": "120"}).telemetry_buffer_s == 120
