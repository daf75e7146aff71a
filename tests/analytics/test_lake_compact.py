"""`radstream lake compact`: fewer objects, the same answers; idempotent; a kill at any point loses and doubles nothing."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta, UTC
from pathlib import Path

import pytest

import radstream.lake as lake_module
from radstream.analytics import DuckDBQueryRunner, load_named_queries, partition_sources, render
from radstream.cli import main
from radstream.lake import compact
from shared.contracts import ModelRef
from shared.observability import telemetry_record
from shared.storage import LocalObjectStore
from shared.telemetry import BufferedLakeSink, LocalLakeSink

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)
BASE = (NOW - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
MODELS = ("chest_xray_classifier", "anomaly_detector", "report_encoder")


def execution(study: str, run: str, at: datetime, failed: bool = False) -> list:
    def one(stage: str, ms: float | None, status: str = "succeeded", model: str | None = None, error: str | None = None):
        ref = ModelRef(name=model, version="1", provenance="test") if model else None
        r = telemetry_record(
            stage=stage, study_id=study, execution_id=f"{run}-{study}", status=status, duration_ms=ms, model=ref, error_type=error
        )
        return r.model_copy(update={"time": at})

    if failed:
        return [
            one("validate", 2.0),
            one("prepare", None, "failed", error="InvalidImage"),
            one("workflow", 20.0, "failed", error="InvalidImage"),
        ]
    return (
        [one("validate", 2.0), one("prepare", 26.0)]
        + [one("inference", 5.0 + i, model=m) for i, m in enumerate(MODELS)]
        + [one("store", 1.5), one("workflow", 50.0 + len(study))]
    )


def write_lake(data: Path, studies: int = 60) -> None:
    """One object per study (as the unbuffered sink writes), over three hour partitions, with a re-run, a failure and
    a retried delivery (the same batch twice, byte for byte, and once more with its workflow record restamped)."""
    sink = LocalLakeSink(LocalObjectStore(data), "telemetry")
    for i in range(studies):
        at = BASE + timedelta(minutes=3 * i)
        sink.send(execution(f"s-{i:03d}", "first", at, failed=i % 17 == 5))
    sink.send(execution("s-001", "rerun", BASE + timedelta(hours=2, minutes=59)))
    again = execution("s-002", "first", BASE + timedelta(minutes=6))
    sink.send(again)  # byte-identical repeat of s-002's batch
    sink.send(again[:-1] + [again[-1].model_copy(update={"time": again[-1].time + timedelta(seconds=30)})])


def objects(data: Path) -> dict[str, bytes]:
    return {
        p.relative_to(data / "telemetry").as_posix(): p.read_bytes() for p in sorted((data / "telemetry" / "telemetry").rglob("*.json.gz"))
    }


def lines(data: Path) -> Counter:
    return Counter(line for blob in objects(data).values() for line in gzip.decompress(blob).splitlines())


def answers(data: Path) -> dict:
    duck = DuckDBQueryRunner(data / "telemetry")
    return {name: duck.run(name).rows for name in load_named_queries()}


@pytest.fixture(scope="module")
def before(tmp_path_factory) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("lake")
    write_lake(data)
    return data, answers(data)


def test_compaction_merges_each_partition_and_every_named_query_answers_the_same(before, tmp_path):
    source, expected = before
    data = tmp_path / "data"
    shutil.copytree(source / "telemetry", data / "telemetry")
    original = lines(data)
    assert len(objects(data)) == 63
    report = compact(data / "telemetry")
    assert (report.files_before, report.files_after, report.compacted) == (63, 3, 3)
    assert [k.split("/")[2] for k in objects(data)] == ["hour=" + f"{(BASE + timedelta(hours=h)):%H}" for h in range(3)]
    # Only byte-identical repeats are dropped: s-002's identical second batch (7 lines) and the 6 stage records of its
    # third; the restamped workflow record differs, and stays (the queries keep its first delivery).
    assert report.repeated_lines_dropped == 13
    assert lines(data) == Counter(set(original)), "every distinct line kept, each once"
    assert answers(data) == expected
    # Again: nothing left to merge, nothing rewritten.
    kept = objects(data)
    again = compact(data / "telemetry")
    assert (again.compacted, again.files_after) == (0, 3) and objects(data) == kept


def test_queries_read_the_columnar_copy_only_while_the_partition_holds_what_it_was_made_from(before, tmp_path):
    source, expected = before
    shutil.copytree(source / "telemetry", tmp_path / "telemetry")
    report = compact(tmp_path / "telemetry")
    cached, uncached = partition_sources(tmp_path / "telemetry")
    assert report.columnar_written == 3 and len(cached) == 3 and not uncached
    assert answers(tmp_path) == expected, "answered from the Parquet copies"
    # A later delivery into one partition: that partition is read from its objects again, the others from their copies.
    late = execution("late", "first", BASE + timedelta(hours=1, minutes=30))
    LocalLakeSink(LocalObjectStore(tmp_path), "telemetry").send(late)
    cached, uncached = partition_sources(tmp_path / "telemetry")
    assert (len(cached), [f.name for f in uncached]) == (2, [f"hour={BASE + timedelta(hours=1):%H}"])
    plain = tmp_path / "plain"
    shutil.copytree(tmp_path / "telemetry" / "telemetry", plain / "telemetry" / "telemetry")
    assert answers(tmp_path) == answers(plain) != expected
    assert "late" in [row[0] for row in DuckDBQueryRunner(tmp_path / "telemetry").run("study_end_to_end").rows]
    # The next compaction brings it back to a current copy, and removes the stale one.
    assert compact(tmp_path / "telemetry").columnar_written == 1
    assert len(partition_sources(tmp_path / "telemetry")[0]) == 3 and len(list((tmp_path / "telemetry" / ".cache").rglob("*.parquet"))) == 3
    assert answers(tmp_path) == answers(plain)


def test_without_the_columnar_copy_compaction_writes_only_objects(before, tmp_path):
    source, expected = before
    shutil.copytree(source / "telemetry", tmp_path / "telemetry")
    assert compact(tmp_path / "telemetry", columnar=False).columnar_written == 0
    assert partition_sources(tmp_path / "telemetry")[0] == [] and answers(tmp_path) == expected


def test_a_target_size_splits_a_partition_into_objects_within_it(before, tmp_path):
    source, expected = before
    shutil.copytree(source / "telemetry", tmp_path / "telemetry")
    report = compact(tmp_path / "telemetry", target_bytes=16 * 1024)
    sizes = [len(gzip.decompress(b)) for b in objects(tmp_path).values()]
    assert report.files_after > 3 and max(sizes) <= 16 * 1024
    assert answers(tmp_path) == expected


class Killed(BaseException):
    pass


@pytest.mark.parametrize("kill_at", ["output", "first-input", "intent-removal"])
def test_a_compaction_killed_at_any_step_is_finished_by_the_next_and_answers_never_change(before, tmp_path, monkeypatch, kill_at):
    source, expected = before
    shutil.copytree(source / "telemetry", tmp_path / "telemetry")
    original = set(lines(tmp_path))
    real_write, real_unlink = lake_module.atomic_write, Path.unlink
    calls = Counter()

    def write(target, data, staging):
        calls["write"] += 1
        if kill_at == "output" and target.name.endswith(".json.gz"):
            raise Killed
        return real_write(target, data, staging)

    def unlink(self, missing_ok=False):
        if kill_at == "first-input" and self.name.endswith(".json.gz"):
            raise Killed
        if kill_at == "intent-removal" and self.parent.name == ".compaction" and self.suffix == ".json":
            raise Killed
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(lake_module, "atomic_write", write)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Killed):
        compact(tmp_path / "telemetry")
    monkeypatch.undo()
    # In the middle: never a record lost; at most repeated copies, which every query counts once.
    assert original <= set(lines(tmp_path))
    assert answers(tmp_path) == expected
    report = compact(tmp_path / "telemetry")
    assert report.intents_finished == 1 and report.files_after == 3
    assert lines(tmp_path) == Counter(original) and answers(tmp_path) == expected
    assert not list((tmp_path / "telemetry" / ".compaction").glob("*.json"))


KILLED_COMPACTION = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from radstream.lake import compact
    print("start", flush=True)
    compact(Path(sys.argv[1]), target_bytes=4096)
    print("done", flush=True)
""")


def test_sigkilled_compactions_lose_and_double_nothing(tmp_path):
    """Real SIGKILLs at several moments of a compaction; after the last, uninterrupted one, each distinct record once."""
    sink = LocalLakeSink(LocalObjectStore(tmp_path), "telemetry")
    for i in range(1200):
        sink.send(execution(f"k-{i:04d}", "first", BASE + timedelta(seconds=5 * i)))
    original = set(lines(tmp_path))
    event_ids = {json.loads(line)["event_id"] for line in original}
    killed = 0
    for delay in (0.02, 0.1, 0.25, 0.5):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_COMPACTION, str(tmp_path / "telemetry"), str(ROOT)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "start"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        killed += proc.returncode == -signal.SIGKILL
        now = lines(tmp_path)
        assert original <= set(now), "a killed compaction lost a record"
        assert {json.loads(line)["event_id"] for line in now} == event_ids
    assert killed >= 1, "no compaction was killed mid-way: make the lake bigger"
    compact(tmp_path / "telemetry", target_bytes=4096)
    assert lines(tmp_path) == Counter(original), "each record exactly once"


def test_compaction_delivers_the_buffers_of_a_killed_run_first(tmp_path):
    sink = BufferedLakeSink(LocalObjectStore(tmp_path), "telemetry", tmp_path / "telemetry", timer=False)
    sink.send(execution("buffered", "first", BASE))
    os.close(sink._open.fd)  # as if the process had died: its lock goes with it
    report = compact(tmp_path / "telemetry")
    assert report.buffers_recovered == 1
    assert {json.loads(line)["study_id"] for line in lines(tmp_path)} == {"buffered"}


def test_cli_compacts_with_a_summary(before, tmp_path, capsys):
    source, _ = before
    shutil.copytree(source / "telemetry", tmp_path / "telemetry")
    assert main(["lake", "compact", "--data-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "objects 63 -> 3" in out and "13 repeated lines dropped" in out and "3 columnar copies written" in out
    assert main(["lake", "compact", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compacted"] == 0
    assert main(["lake", "compact", "--data-dir", str(tmp_path / "nowhere"), "--quiet"]) == 2


def test_query_delivers_the_buffers_of_a_killed_run_before_it_answers(tmp_path, capsys):
    sink = BufferedLakeSink(LocalObjectStore(tmp_path), "telemetry", tmp_path / "telemetry", timer=False)
    sink.send(execution("buffered", "first", BASE))
    os.close(sink._open.fd)  # as if the process had died: its lock goes with it
    assert main(["query", "study_end_to_end", "--data-dir", str(tmp_path), "--json"]) == 0
    assert [row["study_id"] for row in json.loads(capsys.readouterr().out)["rows"]] == ["buffered"]


def test_query_says_when_compaction_would_help_and_not_after_it(before, tmp_path, capsys, monkeypatch):
    import radstream.analytics as analytics

    source, _ = before
    shutil.copytree(source / "telemetry", tmp_path / "telemetry")
    monkeypatch.setattr(analytics, "COMPACT_HINT_OBJECTS", 60)  # the lake holds 63 objects in 3 partitions
    assert main(["query", "error_rate", "--data-dir", str(tmp_path)]) == 0
    assert "63 telemetry objects in 3 partitions have no compacted copy" in capsys.readouterr().out
    assert main(["query", "error_rate", "--data-dir", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays JSON; the hint goes to stderr
    assert f"radstream lake compact --data-dir {tmp_path}" in captured.err
    assert main(["lake", "compact", "--data-dir", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["query", "error_rate", "--data-dir", str(tmp_path)]) == 0
    assert "no compacted copy" not in capsys.readouterr().out
    monkeypatch.setattr(analytics, "COMPACT_HINT_OBJECTS", 64)
    shutil.rmtree(tmp_path / "telemetry")
    shutil.copytree(source / "telemetry", tmp_path / "telemetry")
    assert main(["query", "error_rate", "--data-dir", str(tmp_path)]) == 0
    assert "no compacted copy" not in capsys.readouterr().out  # 63 < 64: a small lake is not nagged


def test_the_runner_does_not_keep_the_scans_order_and_every_answer_is_ordered_by_its_query(before):
    # Keeping the scan's order made DuckDB buffer every object's rows in order for the shared `recent`: 20 GB and 12 GB
    # spilled on a never-compacted 100,000-object lake (README Performance). Dropping it is safe only because each
    # named query that returns rows orders them itself (one without ORDER BY must return at most one row).
    import sqlglot

    source, expected = before
    runner = DuckDBQueryRunner(source / "telemetry")
    con = runner.connect()
    assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchone() == (False,)
    # and a query too large for memory spills into the system's temp folder, not into `.tmp` wherever the user stands
    assert Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0]).parent == Path(tempfile.gettempdir())
    for name, query in load_named_queries().items():  # the Athena SQL as the template resolves it
        tree = sqlglot.parse_one(render(query, runner.names), read="trino")
        assert tree.args.get("order") or len(expected[name]) <= 1, name
