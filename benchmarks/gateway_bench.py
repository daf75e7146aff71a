"""Gateway throughput and C-STORE-to-SR latency, with dcmtk's storescu as the modality.

    .venv/bin/python benchmarks/gateway_bench.py --instances 20 [--syntax jpeg-ls-lossless] [--workers 2]

1. Throughput: one storescu association sends N CR instances (each its own study UID); instances/s is N over
   storescu's wall time, with the pipeline off (receive + check + durable store only).
2. Latency: the same N again to a gateway feeding the local pipeline; for each instance, the time from the
   gateway storing it (the C-STORE success point) to its report.sr.dcm being written: median and p95.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from radstream.runtime import LocalRuntime  # noqa: E402
from services.gateway.server import Gateway, LocalPipeline  # noqa: E402
from services.gateway.tests.test_gateway import cr_instance  # noqa: E402
from shared.settings import Settings  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def send(port: int, files: list[Path], syntax_flag: str) -> float:
    started = time.perf_counter()
    run = subprocess.run([shutil.which("storescu") or "storescu", syntax_flag, "-aec", "RADSTREAM", "127.0.0.1", str(port), *map(str, files)],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"storescu failed: {run.stderr.strip()}")
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--syntax", default="jpeg-ls-lossless")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    flag = {"jpeg-ls-lossless": "-xt", "explicit-le": "-xe", "jpeg2000-lossless": "-xv"}[args.syntax]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        files = []
        for i in range(args.instances):
            path = tmp_path / f"cr{i}.dcm"
            path.write_bytes(cr_instance(args.syntax, seed=i))
            files.append(path)
        base = dict(gateway_dimse_port=0, gateway_http_port=0, gateway_pseudonym_key="bench-key-0123456789abcdef")

        settings = Settings(data_dir=tmp_path / "store-only", **base)
        with Gateway(settings) as gateway:
            wall = send(gateway.dimse.port, files, flag)
        stored = len(list((settings.data_dir / "images").rglob("*.dcm")))

        settings = Settings(data_dir=tmp_path / "pipeline", **base)
        stored_at: dict[str, float] = {}
        with LocalRuntime(settings, workers=args.workers) as runtime:
            pipeline = LocalPipeline(runtime, workers=args.workers)

            def on_stored(received):
                stored_at[received.study_id] = time.time()
                pipeline(received)

            with Gateway(settings, store=runtime.store, on_stored=on_stored) as gateway:
                started = time.perf_counter()
                send(gateway.dimse.port, files, flag)
                outcomes = [f.result(timeout=600) for f in list(pipeline.futures.values())]
                total = time.perf_counter() - started
            pipeline.close()
        latencies = []
        for study_id, t0 in stored_at.items():
            sr = settings.data_dir / "results" / "results" / study_id / "report.sr.dcm"
            if sr.exists():
                latencies.append((sr.stat().st_mtime - t0) * 1000)
        summary = {
            "instances": args.instances, "syntax": args.syntax, "bytes_per_instance": files[0].stat().st_size,
            "store_only": {"stored": stored, "wall_s": round(wall, 3), "instances_per_s": round(args.instances / wall, 1)},
            "with_pipeline": {"workers": args.workers, "succeeded": sum(o.status == "succeeded" for o in outcomes), "wall_s": round(total, 2),
                              "instances_per_s": round(args.instances / total, 2),
                              "cstore_to_sr_ms_median": round(percentile(latencies, 0.5), 1) if latencies else None,
                              "cstore_to_sr_ms_p95": round(percentile(latencies, 0.95), 1) if latencies else None},
        }
    print(json.dumps(summary, indent=2))
    return 0 if summary["with_pipeline"]["succeeded"] == args.instances and stored == args.instances else 1


if __name__ == "__main__":
    raise SystemExit(main())
