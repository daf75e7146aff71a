"""What the write-ahead discipline costs: the same studies through the embedded pipeline with fsync and without.

    .venv/bin/python benchmarks/fsync_bench.py --studies 40 --size 1024 --workers 2 --rounds 3

Each round runs the same synthetic studies twice, on fresh data dirs, in alternating order: once as shipped (every
promised file fsynced, renamed, its folder fsynced; each journal line and telemetry append fsynced), once with
os.fsync made a no-op in this process (what the pipeline did before issue 22: whole against a kill, not against a
power cut). It prints studies/min for each, the median over the rounds, and the fsyncs a study costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from shared.settings import Settings

REAL_FSYNC = os.fsync


def run_once(folders: list[Path], data: Path, workers: int, durable: bool) -> tuple[float, int]:
    """(studies per minute, fsync calls) for one run of `folders` on a fresh data dir."""
    calls = 0

    def counted(fd: int) -> None:
        nonlocal calls
        calls += 1
        if durable:
            REAL_FSYNC(fd)

    os.fsync = counted
    try:
        with LocalRuntime(Settings(data_dir=data), workers=workers) as runtime:
            runtime.run_many(folders[:1])  # warm: models loaded, handlers built
            calls = 0
            started = time.perf_counter()
            report = runtime.run_many(folders[1:])
            seconds = time.perf_counter() - started
    finally:
        os.fsync = REAL_FSYNC
    assert all(o.status == "succeeded" for o in report.outcomes), "every study succeeds"
    return len(report.outcomes) / seconds * 60, calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radstream-fsync-") as work:
        root = Path(work)
        folders = write_demo_studies(root / "studies", args.studies + 1, size=args.size, invalid=False)
        folders = [f for f in folders if not f.name.endswith("dicom")]
        rates: dict[bool, list[float]] = {True: [], False: []}
        fsyncs = 0
        for i in range(args.rounds):
            for durable in (True, False) if i % 2 == 0 else (False, True):
                rate, calls = run_once(folders, root / f"data-{i}-{durable}", args.workers, durable)
                rates[durable].append(rate)
                if durable:
                    fsyncs = calls
                print(f"round {i + 1}: {'fsync' if durable else 'no fsync':<9} {rate:7.1f} studies/min", flush=True)
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        print(f"{args.studies} studies at {args.size}x{args.size}, {args.workers} worker(s), median of {args.rounds} rounds")
        print(f"with fsync     {on:7.1f} studies/min")
        print(f"without fsync  {off:7.1f} studies/min")
        print(f"cost           {100 * (off - on) / off:6.1f} % of throughput; {fsyncs / args.studies:.1f} fsyncs per study")
    return 0


if __name__ == "__main__":
    sys.exit(main())
