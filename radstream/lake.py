"""`radstream lake compact`: merge the local lake's small delivery objects, partition by partition.

Query time over the lake grows with its object count (DuckDB opens every gzip file a query's partitions hold), and a
lake written one study at a time, or by many short runs, holds many small objects. Compaction merges the small objects
of each dt=/hour= partition into objects of up to `target_bytes` (uncompressed), dropping byte-identical repeated lines
(the same record delivered twice, which every named query would count once anyway). Records are never changed.

Crash safety (a kill at any point loses and doubles nothing once the queries' dedupe by event_id has run):

1. an intent file `.compaction/<id>.json` names the partition's inputs and its output (written atomically);
2. the output is written atomically (temp file, rename): a reader sees all of it or nothing of it;
3. the inputs are removed; 4. the intent is removed.

A compaction killed between 2 and 3 leaves the output beside its inputs: a query in that window reads each record
twice and counts it once (the `counted` block). The next compaction finishes what an intent names: output present,
its inputs are removed; output absent, the intent is dropped and the inputs stay. Only one compaction runs at a time
(an exclusive lock on `.compaction/lock`); live sinks keep writing meanwhile, and what they deliver during a
compaction is left for the next one. The buffers of processes that were killed are delivered first.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import os
import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from radstream.cli_args import add_data_dir
from radstream.analytics import (
    PARTITION_COLUMNS,
    QUARANTINE_DIR,
    DuckDBQueryRunner,
    cache_path,
    check_lake,
    json_source,
    named_object,
    partition_digest,
    quarantine_object,
    read_lake_object,
)
from shared.atomicfile import atomic_write, sweep_staging
from shared.errors import ConfigurationError
from shared.storage import LocalObjectStore, disk_errors
from shared.telemetry import LAKE_PREFIX, recover_buffers

COMPACTION_DIR = ".compaction"
DEFAULT_TARGET_BYTES = 64 * 1024 * 1024  # Firehose's largest buffer with dynamic partitioning is 128 MB; its default hint 64 MB
STREAM_NAME = "radstream-telemetry"
_NAMESPACE = uuid.UUID("5f1c8e9a-2b77-4f0e-8f3c-6c0a4d1e7b90")


@dataclass
class CompactionReport:
    partitions: int = 0  # partitions looked at
    compacted: int = 0  # partitions rewritten
    files_before: int = 0
    files_after: int = 0
    records: int = 0  # lines written into merged objects
    repeated_lines_dropped: int = 0
    buffers_recovered: int = 0
    intents_finished: int = 0
    columnar_written: int = 0  # partitions whose columnar copy (.cache/…/<digest>.parquet) was (re)written
    quarantined: list[str] = field(default_factory=list)  # unreadable objects moved to .quarantine/ (skipped, kept)
    seconds: float = 0.0
    details: list[dict] = field(default_factory=list)


def uncompressed_size(path: Path) -> int:
    """A gzip member's ISIZE trailer (its uncompressed size mod 2^32): enough to tell a small object from a full one."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(f"another `radstream lake compact` is running on {folder.parent}; run it once at a time") from None
        yield
    finally:
        os.close(fd)


def _finish_intents(lake_root: Path, folder: Path) -> int:
    """Roll each unfinished compaction forward (its output exists: remove the inputs) or back (it does not: forget it)."""
    finished = 0
    for intent in sorted(folder.glob("*.json")):
        plan = json.loads(intent.read_text())
        if (lake_root / plan["output"]).exists():
            for key in plan["inputs"]:
                (lake_root / key).unlink(missing_ok=True)
        intent.unlink()
        finished += 1
    return finished


def _partitions(lake_root: Path) -> list[Path]:
    return sorted(p for p in (lake_root / LAKE_PREFIX).glob("dt=*/hour=*") if p.is_dir())


def _groups(small: list[Path], sizes: dict[Path, int], target_bytes: int) -> list[list[Path]]:
    """Consecutive runs of small objects, each run's uncompressed total within the target."""
    groups: list[list[Path]] = []
    current: list[Path] = []
    total = 0
    for path in small:
        size = sizes[path]
        if current and total + size > target_bytes:
            groups.append(current)
            current, total = [], 0
        current.append(path)
        total += size
    if current:
        groups.append(current)
    return [g for g in groups if len(g) > 1]


def _merge(lake_root: Path, folder: Path, staging: Path, group: list[Path], quarantined: list[str]) -> tuple[int, int, int]:
    """Merge a group of objects into one; an input that does not read whole is quarantined and left out. Returns
    (lines written, repeated lines dropped, inputs merged away)."""
    seen: set[bytes] = set()
    lines: list[bytes] = []
    dropped = 0
    readable = []
    for path in group:
        try:
            records = read_lake_object(path)
        except (ValueError, OSError) as e:
            quarantined.append(quarantine_object(lake_root, path, str(e)))
            continue
        readable.append(path)
        for line in records:
            line += b"\n"
            if line in seen:
                dropped += 1
                continue
            seen.add(line)
            lines.append(line)
    if len(readable) < 2:
        return 0, 0, 0
    group = readable
    inputs = [p.relative_to(lake_root).as_posix() for p in group]
    digest = uuid.uuid5(_NAMESPACE, "\n".join(inputs))
    output = f"{group[0].parent.relative_to(lake_root).as_posix()}/{STREAM_NAME}-compacted-{time.strftime('%Y-%m-%d-%H-%M-%S', time.gmtime())}-{digest}.json.gz"
    intent = folder / f"{digest}.json"
    atomic_write(intent, json.dumps({"output": output, "inputs": inputs}).encode(), staging)
    atomic_write(lake_root / output, gzip.compress(b"".join(lines), compresslevel=6, mtime=0), staging)
    for path in group:
        path.unlink(missing_ok=True)
    intent.unlink()
    return len(lines), dropped, len(group) - 1


def _columnar_connection():
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    return con


def _write_columnar(lake_root: Path, partition: Path, staging: Path, con, columns: dict[str, str], quarantined: list[str]) -> int:
    """_write_one_columnar, moving aside each object DuckDB names as unreadable and trying again without it."""
    import duckdb

    while True:
        try:
            return _write_one_columnar(lake_root, partition, staging, con, columns)
        except duckdb.Error as e:
            bad = named_object(lake_root, e)
            if bad is None:
                raise
            quarantined.append(quarantine_object(lake_root, bad, type(e).__name__))


def _write_one_columnar(lake_root: Path, partition: Path, staging: Path, con, columns: dict[str, str]) -> int:
    """The partition's records as one Parquet file named for what the partition holds now (its objects' names and
    sizes): DuckDBQueryRunner reads it instead of the gzip NDJSON objects while the partition holds exactly those.
    Derived data only: a partition that changes later is read from its objects again until the next compaction."""
    digest, count = partition_digest(partition)
    target = cache_path(lake_root, partition, digest)
    if not count or target.is_file():
        return 0
    files = sorted(str(p) for p in partition.glob("*.json.gz"))
    if partition_digest(partition)[0] != digest:
        return 0  # a delivery landed meanwhile: the next compaction writes it
    names = ", ".join(f'"{c}"' for c in {**columns, **PARTITION_COLUMNS})
    staging.mkdir(parents=True, exist_ok=True)
    temp = staging / f"{os.getpid()}-{digest}.parquet"
    con.execute(
        f"COPY (SELECT {names} FROM {json_source(files, columns)}) TO '{str(temp).replace(chr(39), chr(39) * 2)}' "
        "(FORMAT parquet, COMPRESSION lz4)"
    )  # lz4: ~35 % less CPU to read than zstd, 1.7x the bytes
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, target)
    for stale in target.parent.glob("*.parquet"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return 1


def compact(
    lake_root: Path,
    *,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    columnar: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> CompactionReport:
    """Compact the lake under `lake_root` (<data dir>/<telemetry bucket>). `progress(done, total, partition)` after each."""
    if target_bytes <= 0:
        raise ConfigurationError("lake compact: the target size must be positive")
    lake_root = Path(lake_root)
    started = time.monotonic()
    report = CompactionReport()
    folder = lake_root / COMPACTION_DIR
    staging = folder / "staging"
    with disk_errors(f"compacting the lake {lake_root}"), _exclusive(folder):
        sweep_staging(staging)
        report.intents_finished = _finish_intents(lake_root, folder)
        report.buffers_recovered = recover_buffers(lake_root, LocalObjectStore(lake_root.parent), lake_root.name)
        partitions = _partitions(lake_root)
        con = _columnar_connection() if columnar else None
        columns = DuckDBQueryRunner(lake_root).table[2]
        report.partitions = len(partitions)
        for done, partition in enumerate(partitions, 1):
            files = sorted(partition.glob("*.json.gz"))
            report.files_before += len(files)
            quarantined_before = len(report.quarantined)
            sizes = {}
            for path in files:
                try:
                    sizes[path] = uncompressed_size(path)
                except (OSError, struct.error):  # shorter than a gzip trailer: emptied or cut by a crash
                    report.quarantined.append(quarantine_object(lake_root, path, "shorter than a gzip stream"))
            small = [p for p in sizes if sizes[p] < target_bytes // 2]
            groups = _groups(small, sizes, target_bytes)
            merged_away = 0
            for group in groups:
                written, dropped, merged = _merge(lake_root, folder, staging, group, report.quarantined)
                report.records += written
                report.repeated_lines_dropped += dropped
                merged_away += merged
            if columnar:
                report.columnar_written += _write_columnar(lake_root, partition, staging, con, columns, report.quarantined)
            report.files_after += len(files) - merged_away - (len(report.quarantined) - quarantined_before)
            if groups:
                report.compacted += 1
                report.details.append(
                    {
                        "partition": partition.relative_to(lake_root / LAKE_PREFIX).as_posix(),
                        "before": len(files),
                        "after": len(files) - merged_away,
                    }
                )
            if progress:
                progress(done, len(partitions), partition.relative_to(lake_root / LAKE_PREFIX).as_posix())
    report.seconds = round(time.monotonic() - started, 3)
    return report


# --- CLI: radstream lake compact [--data-dir DIR] [--target-mb N] [--json] [--quiet] ---


def add_lake_parser(subparsers: argparse._SubParsersAction) -> None:
    lake = subparsers.add_parser("lake", help="maintain the local telemetry lake")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True)
    p = lake_sub.add_parser(
        "compact",
        help="merge the small delivery objects of each dt=/hour= partition (crash-safe; queries answer the same)",
        description="Merge each partition's small gzip NDJSON objects into objects of up to --target-mb (uncompressed). "
        "Safe to kill and to run again; live runs may keep writing.",
    )
    add_data_dir(p)
    p.add_argument(
        "--target-mb", type=float, default=DEFAULT_TARGET_BYTES / 1024 / 1024, help="largest merged object, uncompressed (default 64)"
    )
    p.add_argument(
        "--no-columnar", action="store_true", help="do not write the partitions' Parquet copies (the queries then read the gzip objects)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compact)
    check = lake_sub.add_parser(
        "check",
        help="read every telemetry object whole; move each unreadable one to .quarantine/ and name it",
        description="Read each gzip NDJSON object of the lake whole. One that is torn, zero-filled or not records (what a crash of "
        "the machine or a failing disk can leave) is moved to <lake>/.quarantine/ (kept) and named; the queries answer "
        "from the rest. Exit 1 when something was quarantined, now or before.",
    )
    add_data_dir(check)
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=cmd_check)


def _lake_root(data_dir: str) -> Path:
    from radstream.cli import require_data_dir
    from shared.settings import Settings

    lake_root = require_data_dir(data_dir, "maintain") / Settings.from_env().telemetry_bucket
    if not (lake_root / LAKE_PREFIX).is_dir() and not (lake_root / ".buffer").is_dir():
        raise ConfigurationError(f"no telemetry lake under {lake_root}")
    return lake_root


def cmd_check(args: argparse.Namespace) -> int:
    lake_root = _lake_root(args.data_dir)
    with disk_errors(f"checking the lake {lake_root}"):
        checked, bad = check_lake(lake_root)
        held = sorted(p.relative_to(lake_root / QUARANTINE_DIR).as_posix() for p in (lake_root / QUARANTINE_DIR).rglob("*") if p.is_file())
    if args.json:
        print(
            json.dumps(
                {
                    "lake": str(lake_root),
                    "objects_read": checked,
                    "quarantined_now": [{"object": o, "why": w} for o, w in bad],
                    "quarantine": held,
                },
                indent=2,
            )
        )
    else:
        for obj, why in bad:
            print(f"quarantined {obj}: {why}")
        print(
            f"{lake_root}: {checked} objects read, {len(bad)} unreadable moved aside now; "
            f"{len(held)} object(s) in {lake_root / QUARANTINE_DIR}" + (f": {', '.join(held)}" if held else "")
        )
    return 1 if held else 0


def cmd_compact(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    lake_root = _lake_root(args.data_dir)
    target = int(args.target_mb * 1024 * 1024)
    console = Console(stderr=True)
    if args.quiet or args.json:
        report = compact(lake_root, target_bytes=target, columnar=not args.no_columnar)
    else:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("compacting", total=None)

            def progress(done: int, total: int, partition: str) -> None:
                bar.update(task, completed=done, total=total, description=f"compacting {partition}")

            report = compact(lake_root, target_bytes=target, columnar=not args.no_columnar, progress=progress)
    for obj in report.quarantined:  # stderr: stdout keeps the report
        print(f"radstream lake compact: {obj} is unreadable: moved to {lake_root / QUARANTINE_DIR / obj} and skipped", file=sys.stderr)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
        return 0
    print(
        f"{lake_root}: {report.partitions} partitions, {report.compacted} compacted; objects {report.files_before} -> {report.files_after}; "
        f"{report.records} records rewritten, {report.repeated_lines_dropped} repeated lines dropped; "
        f"{report.columnar_written} columnar copies written; "
        f"{report.buffers_recovered} buffers of killed runs delivered, {report.intents_finished} unfinished compactions finished; {report.seconds} s"
    )
    return 0
