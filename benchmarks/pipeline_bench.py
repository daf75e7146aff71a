"""Benchmark the embedded pipeline: end-to-end latency, throughput and where the time goes.

    .venv/bin/python benchmarks/pipeline_bench.py --studies 60 --size 1024 --workers 1 2

For each worker count, a fresh runtime (its cold start excluded by a warm-up study) runs the same
synthetic studies; per-stage medians come from the telemetry lake the run wrote. "Overhead" is the
end-to-end time minus the stages on the critical path (validate + prepare + slowest model + store):
what the workflow engine, the JSON hand-offs and the telemetry stage cost.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from shared.settings import Settings


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def lake(data_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for f in sorted((data_dir / "telemetry").rglob("*.json.gz"))
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]


def run(studies: list[Path], warmup: list[Path], workers: int, root: Path, triton_url: str | None) -> dict:
    data_dir = root / f"data-w{workers}"
    with LocalRuntime(Settings(data_dir=data_dir, triton_url=triton_url), workers=workers) as runtime:
        warm_ids = {o.study_id for o in runtime.run_many(warmup).outcomes}
        started = time.perf_counter()
        outcomes = runtime.run_many(studies).outcomes
        wall = time.perf_counter() - started
    failed = [o.study_id for o in outcomes if o.status != "succeeded"]
    if failed:
        raise SystemExit(f"benchmark studies failed: {failed}")
    stages: dict[str, list[float]] = defaultdict(list)
    per_study: dict[str, dict[str, float]] = defaultdict(dict)
    for r in lake(data_dir):
        if r["study_id"] in warm_ids or r["duration_ms"] is None:
            continue
        name = r["stage"] if not r["model_name"] else f"{r['stage']}:{r['model_name']}"
        stages[name].append(r["duration_ms"])
        per_study[r["study_id"]][name] = r["duration_ms"]
    e2e = [o.end_to_end_ms for o in outcomes]
    overhead = []
    for o in outcomes:
        s = per_study[o.study_id]
        critical = s["validate"] + s["prepare"] + max(v for k, v in s.items() if k.startswith("inference:")) + s["store"]
        overhead.append(o.end_to_end_ms - critical)
    return {
        "workers": workers,
        "studies": len(outcomes),
        "wall_s": wall,
        "per_minute": len(outcomes) / wall * 60,
        "e2e_median": statistics.median(e2e),
        "e2e_p95": p95(e2e),
        "overhead_median": statistics.median(overhead),
        "stages": {k: statistics.median(v) for k, v in sorted(stages.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--triton-url", help="run the models on this Triton server instead of in-process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radstream-bench-") as tmp:
        root = Path(tmp)
        print(f"generating {args.studies} synthetic {args.size}x{args.size} studies ...", file=sys.stderr)
        studies = write_demo_studies(root / "studies", args.studies, size=args.size, invalid=False, seed=11)
        # Their own ids (warm-001, warm-dicom), so their cold-start records are the ones left out of the figures.
        warmup = write_demo_studies(root / "warmup", 2, size=args.size, invalid=False, seed=12, prefix="warm")
        results = [run(studies, warmup, w, root, args.triton_url) for w in args.workers]
    print(
        f"\nembedded pipeline, {args.size}x{args.size} studies ({args.studies} + 1 DICOM per run), {'Triton ' + args.triton_url if args.triton_url else 'ONNX Runtime in-process'}"
    )
    print(f"{'workers':>7} {'studies/min':>12} {'e2e median ms':>14} {'e2e p95 ms':>11} {'overhead ms':>12}")
    for r in results:
        print(f"{r['workers']:>7} {r['per_minute']:>12.0f} {r['e2e_median']:>14.1f} {r['e2e_p95']:>11.1f} {r['overhead_median']:>12.1f}")
    print("\nmedian ms per stage")
    names = sorted({k for r in results for k in r["stages"]})
    print(f"{'stage':<38}" + "".join(f"{'w=' + str(r['workers']):>10}" for r in results))
    for name in names:
        print(f"{name:<38}" + "".join(f"{r['stages'].get(name, float('nan')):>10.1f}" for r in results))


if __name__ == "__main__":
    main()
