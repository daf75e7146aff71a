"""The short soak (benchmarks/soak.py --short) as a test: crashes, Ctrl-C, a Triton outage and storage faults lose,
duplicate and misattribute nothing. It starts real processes (runners, a local Triton), hence `slow`."""

from __future__ import annotations

import re

import pytest

from tests.e2e.bench_run import counted, run_benchmark

pytestmark = pytest.mark.slow

MUST_BE_ZERO = (
    "lost",
    "duplicated",
    "misfiled",
    "unknown studies",
    "duplicate upload accepted",
    "telemetry contract broken",
    "telemetry id collisions",
    "misattributed telemetry",
    "misattributed log lines",
    "misattributed traces",
)


def test_short_soak_loses_duplicates_and_misattributes_nothing(tmp_path):
    out = run_benchmark("soak.py", "--short", "--work-dir", str(tmp_path / "soak"), timeout=300)
    figures = counted(out)
    for name in MUST_BE_ZERO:
        assert figures[name] == 0, (name, out)
    # 60 valid phantoms + 1 DICOM have results; the 4 broken on purpose have their failure records.
    assert (figures["studies"], figures["results"], figures["failure records"]) == (65, 61, 4), out
    assert figures["studies meeting contract"] == 65, out
    assert figures["log lines"] > 0 and figures["traces"] >= 65, out
    # The schedule really happened: a SIGKILLed run, a Ctrl-C that exited 3, a Triton outage outlasted.
    assert re.search(r"^run-sigkill\s+-9 ", out, re.MULTILINE), out
    assert re.search(r"^resume-sigint\s+3 ", out, re.MULTILINE), out
    assert re.search(r"outages \(kill to ready again\): \d", out), out
    assert "soak: OK" in out
