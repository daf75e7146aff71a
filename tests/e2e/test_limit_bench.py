"""benchmarks/limit_bench.py runs, and its breakdown meters what it says: the README quotes both.

A benchmark is measured by running it, never timed here; this only holds that the command works end to end on
tiny studies (the same-work check included) and that every metered piece is really metered (a patch that misses
its target reads as zero, or as a negative remainder in the piece around it)."""

from __future__ import annotations

import re

from tests.e2e.bench_run import run_benchmark


def test_limit_bench_prints_both_ratios_and_a_breakdown_whose_pieces_are_all_metered():
    out = run_benchmark(
        "limit_bench.py", "--sizes", "256", "--studies", "4", "--rounds", "1", "--workers", "1", "--from-bucket", "--breakdown", timeout=300
    )
    # the main table and the from-the-bucket table each have their 256² row with a ratio
    rows = re.findall(r"^\s+256²\s+1\s.*\|\s+(\d+\.\d\d)\s+(\d+\.\d\d)$", out, re.MULTILINE)
    assert len(rows) == 2, out
    assert all(0 < float(ratio) < 2 for row in rows for ratio in row), out
    pieces = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^  (\S.*?)\s+(-?\d+\.\d\d)(?:  [a-z ]+)?$", out, re.MULTILINE)}
    breakdown = {name: value for name, value in pieces.items() if not name.startswith(("256²", "irreducible "))}
    assert len(breakdown) == 17, out  # 16 pieces (notify among them) and the total
    for name, value in breakdown.items():
        assert value > 0, (name, out)  # each piece metered; a remainder below zero means a piece was counted twice
    total = breakdown.pop("total (process CPU)")
    assert abs(sum(breakdown.values()) - total) < 0.05, out  # the pieces add up to the process's CPU
    assert re.search(r"irreducible \d+\.\d\d, beyond it \d+\.\d\d", out), out
    # both goals of issue 23 are printed, each with its figure (no verdict: these are not 1024² studies)
    assert re.search(r"CPU ratio, 1 worker\s+256²: \d\.\d\d\s+\(not 1024²", out), out


def test_warm_start_and_scale_print_their_figures():
    """--warm-start: a DICOM study's first time cold and warm, each in a fresh process; --scale: CPU and RSS per segment."""
    out = run_benchmark("limit_bench.py", "--warm-start", "--sizes", "128")
    rows = re.findall(r"^  LocalRuntime, (no warm\(\)|warm\(\) first)\s+(\d+\.\d\d)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["no warm()", "warm() first"], out
    assert float(rows[0][1]) == 0 and float(rows[1][1]) > 0, out
    out = run_benchmark("limit_bench.py", "--scale", "3", "6", "--sizes", "128")
    segments = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+\.\d)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.MULTILINE)
    assert [(int(a), int(b)) for a, b, *_ in segments] == [(3, 3), (6, 3)], out
    assert all(int(rss) >= int(anon) + int(file) - 2 > 0 for *_, rss, anon, file in segments), (
        out
    )  # RSS = anonymous + file-backed (+ shmem)
