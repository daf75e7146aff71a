"""Running a benchmark as its user does, for the end-to-end tests that hold a benchmark's figures (limit, soak, crash)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str, timeout: float = 600) -> str:
    """`python benchmarks/<script> args...` from the repository root; its stdout, once it exited 0 (else the test fails with
    the tail of both streams)."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return run.stdout


def counted(out: str) -> dict[str, int]:
    """The `name    count` lines a benchmark's summary prints (indented names included), by name."""
    return {m.group(1).strip(): int(m.group(2)) for m in re.finditer(r"^(\S.*?|  \S.*?)\s{2,}(\d+)$", out, re.MULTILINE)}
