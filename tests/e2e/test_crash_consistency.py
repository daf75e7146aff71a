"""Issue 22: the crash-consistency harness (benchmarks/crash_bench.py), short: simulated OS crashes under `run`, `resume`,
`lake compact` and the gateway (SIGKILL, then every file written since its last fsync cut, zero-filled or emptied),
then resume: no study lost, none counted twice, no traceback. It starts real processes (and storescu), hence `slow`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_twenty_simulated_os_crashes_lose_and_double_nothing(tmp_path):
    bench = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "crash_bench.py"),
            "--crashes",
            "20",
            "--batches",
            "3",
            "--per-batch",
            "3",
            "--max-delay",
            "4",
            "--work-dir",
            str(tmp_path / "crash"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = bench.stdout
    assert bench.returncode == 0, out[-4000:] + bench.stderr[-4000:]
    figures = {m.group(1).strip(): int(m.group(2)) for m in re.finditer(r"^(\S.*?|  \S.*?)\s{2,}(\d+)$", out, re.MULTILINE)}
    for name in ("studies lost", "counted twice", "telemetry missing", "tracebacks", "bad exits"):
        assert figures[name] == 0, (name, out)
    assert figures["crashes"] == 20 and all(figures[a] == 5 for a in ("run", "resume", "compact", "gateway")), out
    assert figures["killed mid-command"] >= 10, "most crashes land inside a command"
    assert figures["files damaged (whole)"] + figures["files damaged (tail)"] > 0, "the power cuts really damaged files"
    assert figures["promised studies"] > 0 and figures["recorded"] == figures["promised studies"], out
    assert "crash_bench: OK" in out
