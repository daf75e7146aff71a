"""Issue 22, observation 3: one torn lake object (a crash of the machine, a failing disk) stops no query and no compaction:
it is moved to .quarantine/, named, and the rest of the lake answers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from radstream.analytics import DuckDBQueryRunner
from radstream.cli import main
from tests.analytics.test_lake_compact import write_lake


def damage(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    path.write_bytes({"cut": data[: len(data) // 2], "zero": b"\0" * len(data), "empty": b""}[how])
    return data


def lake_objects(data: Path) -> list[Path]:
    return sorted((data / "telemetry" / "telemetry").rglob("*.json.gz"))


def lone_objects(data: Path) -> list[Path]:
    """Objects holding one study that no other object holds: losing one costs the count exactly one study."""
    holds = {p: {json.loads(line)["study_id"] for line in gzip.decompress(p.read_bytes()).splitlines()} for p in lake_objects(data)}
    return [p for p, ids in holds.items() if len(ids) == 1 and not any(ids & other for q, other in holds.items() if q != p)]


def studies_counted(data: Path) -> int:
    runner = DuckDBQueryRunner(data / "telemetry")
    try:
        return sum(r["studies"] for r in runner.run("throughput_per_minute", days=30).as_dicts())
    finally:
        runner.close()


def damaged_lake(tmp_path: Path, which: int, how: str) -> tuple[Path, int, Path, bytes]:
    """A lake whose `which`-th lone object is damaged `how`: its data dir, the studies it counted whole, the object and
    what it held."""
    data = tmp_path / "data"
    write_lake(data)
    whole = studies_counted(data)
    bad = lone_objects(data)[which]
    return data, whole, bad, damage(bad, how)


@pytest.mark.parametrize("how", ["cut", "zero", "empty"])
def test_a_named_query_answers_from_the_rest_and_names_the_quarantined_object(tmp_path, capsys, how):
    data, whole, bad, original = damaged_lake(tmp_path, 7, how)
    code = main(["query", "throughput_per_minute", "--data-dir", str(data), "--json"])
    captured = capsys.readouterr()
    answer = json.loads(captured.out)  # exactly one JSON document on stdout
    relative = bad.relative_to(data / "telemetry").as_posix()
    assert code == 0 and answer["quarantined"] == [relative]
    assert relative in captured.err and "answer is from the rest" in captured.err
    assert sum(r["studies"] for r in answer["rows"]) == whole - 1, "every other study still counted"
    kept = data / "telemetry" / ".quarantine" / relative
    assert kept.is_file() and not bad.exists(), "moved aside, kept"
    assert len(original) > 0
    assert main(["query", "throughput_per_minute", "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quarantined"] == [], "quarantined once"


@pytest.mark.parametrize("how", ["cut", "zero", "empty"])
def test_compact_skips_and_quarantines_an_unreadable_object(tmp_path, capsys, how):
    data, whole, bad, _ = damaged_lake(tmp_path, 3, how)
    code = main(["lake", "compact", "--data-dir", str(data), "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    relative = bad.relative_to(data / "telemetry").as_posix()
    assert code == 0 and report["quarantined"] == [relative] and "Traceback" not in captured.err
    assert relative in captured.err
    assert (data / "telemetry" / ".quarantine" / relative).is_file()
    assert studies_counted(data) == whole - 1


def test_lake_check_reads_every_object_and_names_what_it_moved(tmp_path, capsys):
    data = tmp_path / "data"
    write_lake(data)
    assert main(["lake", "check", "--data-dir", str(data)]) == 0
    capsys.readouterr()
    objects = lake_objects(data)
    damage(objects[1], "zero")
    objects[2].write_bytes(gzip.compress(b'{"a": 1}\n{"torn'))  # a whole gzip of a torn line
    code = main(["lake", "check", "--data-dir", str(data), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and len(result["quarantined_now"]) == 2 and len(result["quarantine"]) == 2
    assert {q["why"] for q in result["quarantined_now"]} == {"not a whole gzip stream (BadGzipFile)", "line 2 is not JSON"}
