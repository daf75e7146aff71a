"""Benchmark the named queries over a large local telemetry lake: one object per study, buffered, compacted.

    .venv/bin/python benchmarks/lake_bench.py                        # 100,000 studies over the last 6 days
    .venv/bin/python benchmarks/lake_bench.py --studies 10000 --repeat 3

Generates a lake in a temporary folder (nothing to commit; --work-dir keeps it): the records the pipeline writes for each
study (validate, prepare, three inference records, store, the workflow record; export for DICOM studies), with the
failures, resumes, re-runs and retried deliveries a real lake holds (shares below), each study at its own time spread
evenly over --days days, so an hour partition holds ~700 studies at 100,000 over 6 days (the seed's 10 studies/min
sustained). Every record is validated against `shared.contracts.TelemetryRecord`.

The same records are laid out three ways, and every named query of template.yaml is timed on each (DuckDBQueryRunner.run,
one runner per layout as the console or a script holds one: it lists the lake again for every query and keeps its DuckDB
connection and translations, so the median of three leaves out the first query's connection and sqlglot warm-up):

  per study   one gzip object per study and partition: what the unbuffered sink wrote until now;
  buffered    what the buffered sink (shared.telemetry.BufferedLakeSink) writes when one process runs the studies as
              they come: its size and interval hints (TELEMETRY_BUFFER_MB / TELEMETRY_BUFFER_SECONDS, default 64 MB,
              60 s), its clock driven by the studies' own times;
  compacted   the per-study lake after `radstream lake compact` without its columnar copies (--no-columnar's layout);
  + columnar  the same after `radstream lake compact` wrote each partition's Parquet copy, which DuckDBQueryRunner
              reads while the partition holds exactly the objects it was made from (docs/analytics.md).

The results must be identical across layouts (approx_percentile aside, which may differ in its last digit with the
order rows arrive in); the table says so per query. `--compare-template OTHER/template.yaml` also runs that template's
named queries on the compacted lake and checks they give the same rows (a reshaped query must not change its answer).
The machine's load average is printed before and after.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from radstream.analytics import DuckDBQueryRunner, load_named_queries  # noqa: E402
from radstream.lake import compact  # noqa: E402
from shared.contracts import TelemetryRecord  # noqa: E402
from shared.observability import telemetry_event_id  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import LocalObjectStore  # noqa: E402
from shared.telemetry import BufferedLakeSink, partition_prefix  # noqa: E402

MODELS = (("chest_xray_classifier", "1", 5.2), ("anomaly_detector", "1", 12.7), ("report_encoder", "1", 8.9))
STAGE_MS = {"validate": 2.0, "prepare": 26.4, "store": 1.6, "export": 177.5}
# Shares of studies (the rest succeed once): what a lake holds besides clean runs.
SHARES = {"invalid": 0.03, "bad_image": 0.01, "resumed": 0.005, "rerun": 0.01, "retried_delivery": 0.005, "dicom": 0.01}
ARN = "arn:aws:states:local:000000000000:execution:StateMachine:"


def _time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # as TelemetryRecord.model_dump_json writes a UTC time


def _line(
    study: str,
    execution: str,
    stage: str,
    status: str,
    at: datetime,
    ms: float | None,
    model: tuple | None = None,
    error: str | None = None,
    bytes_in: int = 0,
    bytes_out: int = 0,
    cold: bool = False,
) -> str:
    name, version = (model[0], model[1]) if model else (None, None)
    return json.dumps(
        {
            "schema_version": "1",
            "event_id": telemetry_event_id(study_id=study, execution_id=execution, stage=stage, status=status, model_name=name),
            "time": _time(at),
            "study_id": study,
            "execution_id": execution,
            "stage": stage,
            "status": status,
            "duration_ms": None if ms is None else round(ms, 3),
            "model_name": name,
            "model_version": version,
            "error_type": error,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "cold_start": cold,
        },
        separators=(",", ":"),
    )


def execution_batch(
    rng: random.Random, study: str, at: datetime, *, fail: tuple[str, str] | None = None, dicom: bool = False, cold: bool = False
) -> tuple[list[str], datetime]:
    """One execution's batch as SendTelemetry ships it: each stage's record stamped when it ended, then the workflow's."""
    execution = f"{ARN}{study}-{rng.getrandbits(32):08x}"
    t, lines = at, []

    def ms(median: float) -> float:
        return median * rng.lognormvariate(0, 0.25)

    def stage(name: str, median: float, **kw) -> None:
        nonlocal t
        took = ms(median)
        t += timedelta(milliseconds=took)
        lines.append(_line(study, execution, name, "succeeded", t, took, **kw))

    def failed(name: str, error: str) -> None:
        lines.append(_line(study, execution, name, "failed", t, None, error=error))

    size = rng.randrange(400_000, 9_000_000)
    for name in ("validate", "prepare"):
        if fail and fail[0] == name:
            failed(name, fail[1])
            break
        stage(name, STAGE_MS[name], bytes_in=size, bytes_out=size if name == "validate" else 3 * 224 * 224 * 4, cold=cold)
    else:
        slowest = 0.0
        for model in MODELS:
            took = ms(model[2])
            slowest = max(slowest, took)
            lines.append(
                _line(
                    study,
                    execution,
                    "inference",
                    "succeeded",
                    t + timedelta(milliseconds=took),
                    took,
                    model=model,
                    bytes_in=224 * 224 * 4,
                    bytes_out=rng.randrange(40, 4000),
                )
            )
        t += timedelta(milliseconds=slowest)
        if fail and fail[0] == "store":
            failed("store", fail[1])
        else:
            stage("store", STAGE_MS["store"], bytes_out=rng.randrange(2000, 6000))
            if dicom:
                stage("export", STAGE_MS["export"], bytes_out=rng.randrange(20_000, 60_000))
    end = t + timedelta(milliseconds=ms(6))
    error = fail[1] if fail else None
    lines.append(
        _line(study, execution, "workflow", "failed" if fail else "succeeded", end, (end - at).total_seconds() * 1000, error=error)
    )
    return lines, end


def generate(studies: int, days: float, seed: int = 12) -> list[tuple[datetime, list[str]]]:
    """Every delivery batch of the lake, in delivery order: (when it was sent, its NDJSON lines)."""
    rng = random.Random(seed)
    end = datetime.now(UTC) - timedelta(minutes=5)
    start = end - timedelta(days=days)
    step = (end - start) / studies
    batches: list[tuple[datetime, list[str]]] = []
    for i in range(studies):
        study = f"study-{i:06d}"
        at = start + step * i
        roll = rng.random()
        cold = i % 500 == 0
        if roll < SHARES["invalid"]:
            lines, done = execution_batch(rng, study, at, fail=("validate", rng.choice(["InvalidStudy", "InvalidImage"])), cold=cold)
        elif roll < SHARES["invalid"] + SHARES["bad_image"]:
            lines, done = execution_batch(rng, study, at, fail=("prepare", "InvalidImage"), cold=cold)
        else:
            dicom = rng.random() < SHARES["dicom"]
            if rng.random() < SHARES["resumed"]:  # failed on a storage outage, then `radstream resume` ran it again
                lines, done = execution_batch(rng, study, at, fail=("store", "StorageUnavailable"), dicom=dicom, cold=cold)
                batches.append((done, lines))
                at = done + timedelta(minutes=rng.uniform(1, 30))
            lines, done = execution_batch(rng, study, at, dicom=dicom, cold=cold)
            if rng.random() < SHARES["retried_delivery"]:  # SendTelemetry retried: the same batch, its workflow record restamped
                batches.append((done, lines))
                again = json.loads(lines[-1])
                again["time"] = _time(done + timedelta(seconds=1))
                lines = lines[:-1] + [json.dumps(again, separators=(",", ":"))]
                done += timedelta(seconds=1)
            if rng.random() < SHARES["rerun"]:  # the folder run again later: a new execution
                batches.append((done, lines))
                lines, done = execution_batch(rng, study, done + timedelta(hours=rng.uniform(0.1, 12)), dicom=dicom)
        batches.append((done, lines))
    batches.sort(key=lambda b: b[0])
    return [(when, lines) for when, lines in batches if when < end + timedelta(minutes=4)]


def _partition(line: str) -> str:
    return partition_prefix(datetime.fromisoformat(line[line.index('"time":"') + 8 : line.index('"', line.index('"time":"') + 8)]))


def write_per_study(lake: Path, batches: list[tuple[datetime, list[str]]]) -> int:
    """One gzip object per batch and partition under the lake root, as the unbuffered LocalLakeSink wrote them."""
    count = 0
    for when, lines in batches:
        by_partition: dict[str, list[str]] = defaultdict(list)
        for line in lines:
            by_partition[_partition(line)].append(line)
        for prefix, part in by_partition.items():
            folder = lake / prefix
            folder.mkdir(parents=True, exist_ok=True)
            name = f"radstream-telemetry-1-{when:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}.json.gz"
            (folder / name).write_bytes(gzip.compress("".join(x + "\n" for x in part).encode(), mtime=0))
            count += 1
    return count


def write_buffered(data: Path, batches: list[tuple[datetime, list[str]]], settings: Settings) -> int:
    """Through the buffered sink itself, its clock the batches' own times (one process running the studies as they come)."""
    now = [0.0]
    sink = BufferedLakeSink(
        LocalObjectStore(data),
        "telemetry",
        data / "telemetry",
        size_bytes=int(settings.telemetry_buffer_mb * 1024 * 1024),
        interval_s=settings.telemetry_buffer_s,
        clock=lambda: now[0],
        timer=False,
    )
    for when, lines in batches:
        now[0] = when.timestamp()
        sink.send([TelemetryRecord.model_validate_json(line) for line in lines])
    sink.close()
    return sum(1 for _ in (data / "telemetry" / "telemetry").rglob("*.json.gz"))


def time_queries(lake_root: Path, repeat: int, names: list[str], template: Path | None = None) -> dict[str, tuple[float, list]]:
    runner = DuckDBQueryRunner(lake_root, template)
    out = {}
    for name in names:
        times, rows = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            rows = runner.run(name).rows
            times.append(time.perf_counter() - started)
        out[name] = (statistics.median(times), rows)
    return out


def _last_digit(x: float) -> float:
    """One unit in the last decimal a rounded result shows (7.9 -> 0.1): round(approx_percentile(...), 1) moves by one."""
    text = repr(x)
    return 10.0 ** -(len(text.split(".")[1]) if "." in text and "e" not in text else 0)


def same(a: list, b: list) -> bool:
    """The same rows; floats may differ by 1 % or by one unit in their last shown decimal (approx_percentile depends on the
    order rows arrive in, and a sum in another order can round the other way)."""
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if u == v:
                continue
            if not (isinstance(u, float) and isinstance(v, float)):
                return False
            if abs(u - v) > max(0.01 * max(abs(u), abs(v), 1), 1.000001 * max(_last_digit(u), _last_digit(v))):
                return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=100_000)
    p.add_argument("--days", type=float, default=6.0, help="the studies are spread over the last DAYS days (default 6)")
    p.add_argument("--repeat", type=int, default=3, help="runs per query on the buffered and compacted lakes (median)")
    p.add_argument("--repeat-per-study", type=int, default=1, help="runs per query on the one-object-per-study lake")
    p.add_argument(
        "--per-study-queries",
        type=int,
        default=8,
        help="time only the first N queries on the one-object-per-study lake (each reads every object: minutes at 100,000)",
    )
    p.add_argument("--work-dir", help="keep the lakes here (default: a temporary folder, removed)")
    p.add_argument("--compare-template", help="also run this template's named queries on the compacted lake; their rows must match")
    args = p.parse_args()

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="radstream-lake-bench-"))
    settings = Settings.from_env()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    try:
        started = time.perf_counter()
        batches = generate(args.studies, args.days)
        records = sum(len(lines) for _, lines in batches)
        for _, lines in batches[:: max(1, len(batches) // 2000)]:
            for line in lines:
                TelemetryRecord.model_validate_json(line)  # the pipeline's shape (every record is validated again below)
        print(
            f"generated {args.studies} studies, {len(batches)} delivery batches, {records} records in {time.perf_counter() - started:.1f} s"
        )

        per_study = work / "per-study"
        started = time.perf_counter()
        objects = {"per study": write_per_study(per_study / "telemetry", batches)}
        print(f"per-study lake: {objects['per study']} objects in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        objects["buffered"] = write_buffered(work / "buffered", batches, settings)
        print(
            f"buffered lake ({settings.telemetry_buffer_mb:g} MB / {settings.telemetry_buffer_s:g} s hints): "
            f"{objects['buffered']} objects in {time.perf_counter() - started:.1f} s"
        )
        compacted = work / "compacted"
        shutil.copytree(per_study, compacted)
        started = time.perf_counter()
        report = compact(compacted / "telemetry", columnar=False)
        print(
            f"`radstream lake compact` (objects only) on the per-study lake: {report.files_before} -> {report.files_after} objects, "
            f"{report.partitions} partitions, {report.repeated_lines_dropped} repeated lines dropped, {time.perf_counter() - started:.1f} s"
        )
        objects["compacted"] = objects["+ columnar"] = report.files_after

        names = list(load_named_queries())
        results = {
            "per study": time_queries(per_study / "telemetry", args.repeat_per_study, names[: args.per_study_queries]),
            "buffered": time_queries(work / "buffered" / "telemetry", args.repeat, names),
            "compacted": time_queries(compacted / "telemetry", args.repeat, names),
        }
        started = time.perf_counter()
        report = compact(compacted / "telemetry")
        print(
            f"`radstream lake compact` again, writing the columnar copies: {report.columnar_written} partitions, "
            f"{time.perf_counter() - started:.1f} s"
        )
        results["+ columnar"] = time_queries(compacted / "telemetry", args.repeat, names)
        layouts = list(results)
        header = f"{'named query':26s}" + "".join(f"{f'{k} ({objects[k]:,} obj)':>24s}" for k in layouts) + "  same rows"
        print(
            f"\n{args.studies:,} studies over {args.days:g} days, {records:,} records; seconds per query (median of "
            f"{args.repeat_per_study} per study, else {args.repeat}), DuckDB via DuckDBQueryRunner.run"
        )
        print(header)
        print("-" * len(header))
        for name in names:
            rows = [results[k][name][1] for k in layouts if name in results[k]]
            identical = all(same(rows[0], other) for other in rows[1:])
            cells = "".join(f"{results[k][name][0]:>24.3f}" if name in results[k] else f"{'-':>24s}" for k in layouts)
            print(f"{name:26s}{cells}  {'yes' if identical else 'NO'}")
            if not identical:
                for k in layouts:
                    if name in results[k] and not same(rows[0], results[k][name][1]):
                        diff = [(a, b) for a, b in zip(rows[0], results[k][name][1]) if a != b][:2]
                        print(f"    {k}: {len(results[k][name][1])} rows against {len(rows[0])}; first differences {diff}")
        if args.compare_template:
            other = time_queries(compacted / "telemetry", args.repeat, names, Path(args.compare_template))
            print(f"\n{args.compare_template} on the compacted lake (+ columnar), its seconds against ours, and whether the rows match:")
            for name in names:
                ours, theirs = results["+ columnar"][name], other[name]
                print(
                    f"{name:26s}{theirs[0]:>10.3f}{ours[0]:>10.3f}  {'yes' if same(theirs[1], ours[1]) else 'NO'}"
                    f"{'' if theirs[1] == ours[1] else ' (approx_percentile within its tolerance)' if same(theirs[1], ours[1]) else ''}"
                )
        slowest = {k: max((v[0] for v in results[k].values()), default=float("nan")) for k in layouts}
        print("slowest" + " " * 19 + "".join(f"{slowest[k]:>24.3f}" for k in layouts))
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
