"""Issue 22, observation 4: the gateway journals what it acknowledges, and a restarted gateway finishes it.

A gateway killed between StoreResults and SendTelemetry left an instance with its result and no workflow telemetry:
resume skipped it (result.json exists) and throughput counted 11 of 12; a restarted gateway ran nothing."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radstream.journal import read_journal
from synthetic.instances import cr_instance
from synthetic.peers import run, tool

REPO = Path(__file__).resolve().parents[2]
# The process dies as a power cut would take it, inside SendTelemetry: after StoreResults wrote the result.
DIE_IN_TELEMETRY = """
import os, sys
from services.telemetry import handler as telemetry
def die(event, deps):
    os._exit(137)
telemetry.lambda_handler.run = die
from radstream.cli import main
sys.exit(main(sys.argv[1:]))
"""


class GatewayProcess:
    def __init__(self, data: Path, *, die_in_telemetry: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "RADSTREAM_", "TRITON_"))}
        command = ["-c", DIE_IN_TELEMETRY] if die_in_telemetry else ["-m", "radstream.cli"]
        self.process = subprocess.Popen(
            [sys.executable, *command, "gateway", "--data-dir", str(data), "--workers", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self.deadline = time.monotonic() + 120

    def read_until(self, pattern: str) -> re.Match:
        while time.monotonic() < self.deadline:
            line = self.process.stdout.readline()
            if not line:
                pytest.fail(f"radstream gateway exited ({self.process.poll()}): {''.join(self.lines)}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        pytest.fail(f"no {pattern!r} within 120 s: {''.join(self.lines)}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def workflow_records(data: Path) -> list[dict]:
    return [
        r
        for f in sorted((data / "telemetry").rglob("*.json.gz"))
        for line in gzip.decompress(f.read_bytes()).splitlines()
        if (r := json.loads(line))["stage"] == "workflow"
    ]


def test_an_acknowledged_instance_killed_before_its_telemetry_is_finished_by_the_restarted_gateway(tmp_path):
    data = tmp_path / "data"
    path = tmp_path / "cr.dcm"
    path.write_bytes(cr_instance())
    first = GatewayProcess(data, die_in_telemetry=True)
    try:
        ae = first.read_until(r"^AE title: (\S+)").group(1)
        port = first.read_until(r"^DIMSE: +127\.0\.0\.1 port (\d+)").group(1)
        sent = run([tool("storescu"), "-xt", "-aec", ae, "127.0.0.1", port, str(path)])
        assert sent.returncode == 0, sent.stderr  # acknowledged
        assert first.process.wait(timeout=120) == 137, "it died in SendTelemetry"
    finally:
        first.stop()
    (result,) = (data / "results" / "results").glob("*/result.json")
    study_id = result.parent.name
    assert not workflow_records(data), "the result is there, its telemetry is not"
    acknowledged = [line for p in (data / "journal").glob("*.jsonl") for _, line in read_journal(p)[0] if line.get("planned") == study_id]
    assert acknowledged, "the instance was journalled before the gateway said Success"

    second = GatewayProcess(data)
    try:
        second.read_until(r"^finishing 1 study an earlier run or gateway left unfinished")
        assert second.read_until(r"^study (\S+): (\w+)").groups() == (study_id, "succeeded")
    finally:
        assert second.stop() == 0
    assert [r["study_id"] for r in workflow_records(data)] == [study_id], "its telemetry, once"
    third = GatewayProcess(data)
    try:
        third.read_until(r"^results: ")
    finally:
        third.stop()
    assert not any("finishing" in line for line in third.lines), "nothing left the second time"
