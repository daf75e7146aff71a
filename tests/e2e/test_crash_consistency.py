"""Issue 22: the crash-consistency harness (benchmarks/crash_bench.py), short: simulated OS crashes under `run`, `resume`,
`lake compact` and the gateway (SIGKILL, then every file written since its last fsync cut, zero-filled or emptied),
then resume: no study lost, none counted twice, no traceback. It starts real processes (and storescu), hence `slow`."""

from __future__ import annotations


import pytest

from tests.e2e.bench_run import counted, run_benchmark

pytestmark = pytest.mark.slow


def test_twenty_simulated_os_crashes_lose_and_double_nothing(tmp_path):
    out = run_benchmark(
        "crash_bench.py",
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
    )
    figures = counted(out)
    for name in ("studies lost", "counted twice", "telemetry missing", "tracebacks", "bad exits"):
        assert figures[name] == 0, (name, out)
    assert figures["crashes"] == 20 and all(figures[a] == 5 for a in ("run", "resume", "compact", "gateway")), out
    assert figures["killed mid-command"] >= 10, "most crashes land inside a command"
    assert figures["files damaged (whole)"] + figures["files damaged (tail)"] > 0, "the power cuts really damaged files"
    assert figures["promised studies"] > 0 and figures["recorded"] == figures["promised studies"], out
    assert "crash_bench: OK" in out
