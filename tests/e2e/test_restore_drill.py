"""The restore drill (docs/recovery.md): a data dir with studies in flight is lost and restored from its replica, and
`radstream resume` finishes every study, none lost and none counted twice, in a time the drill prints.

The replica is made as S3 replication makes one: object by object, each file as it is when reached; a file renamed or
removed while the copy walks is skipped (its newer state is simply not in the replica yet). In the "lagging" case the
replica is taken while the run is still going and the run goes on after it (work the replica never sees, as in a
region lost with replication behind); the journal is copied first, so everything else in the replica is at least as
new as the journal that decides what resume re-runs.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from radstream.cli import main
from synthetic.samples import write_demo_studies

REPO = Path(__file__).resolve().parents[2]
STUDIES = 24
RTO_BUDGET_S = 300  # the architecture's RTO < 5 minutes; the drill's restore + resume must fit in it with room


def replicate(source: Path, target: Path) -> int:
    """Copy every file that exists when the walk reaches it, the journal first; return how many were copied."""
    copied = 0
    paths = sorted(source.rglob("*"), key=lambda p: (p.relative_to(source).parts[0] != "journal", str(p)))
    for path in paths:
        if not path.is_file():
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(path, destination)
        except FileNotFoundError:
            continue
        copied += 1
    return copied


def journalled(data: Path) -> int:
    journal = data / "journal"
    return sum(len(p.read_text().splitlines()) - 1 for p in journal.glob("*.jsonl")) if journal.is_dir() else 0


def wait_for(data: Path, lines: int, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while journalled(data) < lines:
        assert time.monotonic() < deadline, f"the run journalled fewer than {lines} studies in {deadline_s} s"
        time.sleep(0.05)


def records(data: Path) -> tuple[set[str], set[str]]:
    results = {p.parent.name for p in (data / "results" / "results").glob("*/result.json")}
    failures = {p.parent.name for p in (data / "results" / "failed").glob("*/error.json")}
    return results, failures


def workflow_telemetry(data: Path) -> Counter[str]:
    lines = [
        json.loads(line) for f in sorted((data / "telemetry").rglob("*.json.gz")) for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    return Counter(r["study_id"] for r in lines if r["stage"] == "workflow")


@pytest.mark.parametrize("replica", ["at-the-crash", "lagging"])
def test_a_lost_data_dir_is_restored_from_its_replica_and_resume_finishes_everything(tmp_path, capsys, replica):
    studies, data, backup = tmp_path / "studies", tmp_path / "data", tmp_path / "replica"
    write_demo_studies(studies, STUDIES, size=128, invalid=False)
    expected = {f"demo-{i:03d}" for i in range(1, STUDIES + 1)} | {"demo-dicom"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RADSTREAM_", "TRITON_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "-m", "radstream.cli", "run", str(studies), "--data-dir", str(data), "--quiet", "--workers", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(data, 3)
        if replica == "lagging":
            replicate(data, backup)
            wait_for(data, journalled(backup) + 2)  # the primary goes on; the replica never sees this
        process.send_signal(signal.SIGKILL)  # the primary is lost with studies in flight
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    if replica == "at-the-crash":
        replicate(data, backup)
    before, _ = records(backup)
    assert len(before) < len(expected), "the crash came before the end"
    shutil.rmtree(data)  # the disaster: the primary's data is gone

    started = time.perf_counter()
    shutil.copytree(backup, data)  # restore: the replica becomes the data dir
    restored = time.perf_counter()
    code = main(["resume", "--data-dir", str(data), "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    finished = time.perf_counter()

    assert code == 0 and summary["totals"]["failed"] == 0, summary["totals"]
    results, failures = records(data)
    assert results == expected and not failures, "every study has its result, and only that"
    # Telemetry: every study's workflow record is in the lake (nothing lost), and the analytics count each study once.
    # The raw lake may hold a study twice: a replica can hold the telemetry of an execution whose journal outcome it
    # lacks (S3 replication keeps no order between objects), and resume runs that study again, as a new execution;
    # the named queries count each study by its latest finished execution (docs/analytics.md, "Counted once").
    assert set(workflow_telemetry(data)) == expected, "every study's telemetry is in the lake"
    assert main(["query", "error_rate", "--data-dir", str(data), "--json"]) == 0
    counted = {row["stage"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert (counted["workflow"]["total"], counted["workflow"]["failed"]) == (len(expected), 0), "each study counted once"
    again = main(["resume", "--data-dir", str(data), "--json", "--quiet"])
    assert again == 0 and json.loads(capsys.readouterr().out)["totals"]["studies"] == 0, "nothing left, nothing twice"
    total = finished - started
    with capsys.disabled():
        print(
            f"\nrestore drill ({replica}): {len(before)} of {len(expected)} studies in the replica; "
            f"restore {restored - started:.2f} s, resume of {summary['totals']['studies']} studies {finished - restored:.2f} s, "
            f"total {total:.2f} s"
        )
    assert total < RTO_BUDGET_S
