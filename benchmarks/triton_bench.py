"""Local Triton throughput and latency: the model repository's dynamic batching against batch-1 serving.

    python -m benchmarks.triton_bench --requests 400 --duration 15
    python benchmarks/triton_bench.py --models chest_xray_classifier,report_encoder --concurrency 1,4,16

Starts `tritonserver` (nvidia-pytriton's, CPU) twice on free ports: once on the repository as it is, once
on a temporary copy whose config.pbtxt files have `dynamic_batching` removed. Each level of concurrency
runs that many threads, each with its own client, sending one image per request until `--requests`
requests are done or `--duration` seconds have passed. The repository itself is never written to.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from radstream.triton_server import TritonServer, iter_models  # noqa: E402
from services.triton.triton_client import TritonInference  # noqa: E402

REAL_REPOSITORY = ROOT / "services" / "triton" / "model_repository"
TESTS_CONFTEST = ROOT / "services" / "triton" / "tests" / "conftest.py"


@dataclass
class Level:
    mode: str
    model: str
    concurrency: int
    completed: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def read_config(model_dir: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def write_config(model_dir: Path, config) -> None:
    from google.protobuf import text_format

    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))


def edited_copy(repository: Path, dest: Path, *, dynamic_batching: bool, queue_delay_us: int | None,
                instances: int | None) -> Path:
    """Copy `repository` to `dest` and edit its configs there (the original stays as it is)."""
    shutil.copytree(repository, dest, symlinks=True)
    for model_dir in iter_models(dest):
        config = read_config(model_dir)
        if not dynamic_batching:
            config.ClearField("dynamic_batching")
        elif queue_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
        if instances is not None:
            for group in config.instance_group:
                group.count = instances
        write_config(model_dir, config)
    return dest


def tiny_repository(dest: Path) -> Path:
    spec = importlib.util.spec_from_file_location("_triton_test_fixtures", TESTS_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_repository(dest)


def one_image(model_dir: Path) -> dict[str, np.ndarray]:
    config = read_config(model_dir)
    rng = np.random.default_rng(0)
    return {i.name: rng.random((1, *i.dims), dtype=np.float32) for i in config.input}


def run_level(url: str, model: str, inputs: dict[str, np.ndarray], concurrency: int, requests: int,
              duration_s: float, mode: str) -> Level:
    clients = [TritonInference(url, timeout_s=60) for _ in range(concurrency)]
    for c in clients:  # connect and fetch metadata outside the timed window
        c.infer(model, inputs)
    lock = threading.Lock()
    issued = 0
    errors = 0
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + duration_s

    def worker(client: TritonInference) -> None:
        nonlocal issued, errors
        mine = []
        while time.perf_counter() < deadline:
            with lock:
                if issued >= requests:
                    break
                issued += 1
            t0 = time.perf_counter()
            try:
                client.infer(model, inputs)
            except Exception:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors += 1
                continue
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 120)
    elapsed = time.perf_counter() - start
    for c in clients:
        c.close()
    return Level(mode, model, concurrency, len(latencies), errors, elapsed, latencies)


def bench_server(repository: Path, mode: str, models: list[str], levels: list[int], requests: int,
                 duration_s: float, protocol: str) -> list[Level]:
    results = []
    with TritonServer(repository) as server:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        for model in models:
            inputs = one_image(repository / model)
            for concurrency in levels:
                level = run_level(url, model, inputs, concurrency, requests, duration_s, mode)
                results.append(level)
                print(f"  {mode:<10} {model:<22} c={concurrency:<3} {level.throughput:8.1f} inf/s  "
                      f"p50 {level.percentile(50):7.1f} ms  p95 {level.percentile(95):7.1f} ms", flush=True)
    return results


def table(results: list[Level]) -> str:
    head = (f"| {'serving':<10} | {'model':<22} | {'conc.':>5} | {'requests':>8} | {'errors':>6} "
            f"| {'inf/s':>7} | {'p50 ms':>7} | {'p95 ms':>7} |")
    rule = "|" + "|".join("-" * (len(cell)) for cell in head.split("|")[1:-1]) + "|"
    rows = [head, rule]
    for r in results:
        rows.append(f"| {r.mode:<10} | {r.model:<22} | {r.concurrency:>5} | {r.completed:>8} | {r.errors:>6} "
                    f"| {r.throughput:>7.1f} | {r.percentile(50):>7.1f} | {r.percentile(95):>7.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="default: services/triton/model_repository, or the tiny test models if absent")
    parser.add_argument("--tiny", action="store_true", help="benchmark the tiny test models")
    parser.add_argument("--models", default="chest_xray_classifier")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=300, help="requests per level at most")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level at most")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--queue-delay-us", type=int, default=None,
                        help="try another dynamic_batching.max_queue_delay_microseconds (on a copy)")
    parser.add_argument("--instances", type=int, default=None,
                        help="try another instance_group count (on a copy, both runs)")
    parser.add_argument("--modes", default="dynamic,batch1")
    args = parser.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",")]
    models = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="radstream-bench-") as tmp:
        tmp_path = Path(tmp)
        repository = args.model_repository
        if repository is None:
            complete = all((REAL_REPOSITORY / m / "1" / "model.onnx").is_file() for m in models)
            repository = REAL_REPOSITORY if complete and not args.tiny else None
        if repository is None:
            repository = tiny_repository(tmp_path / "tiny")
            print("benchmarking the tiny test models (no trained repository)")
        repository = repository.resolve()
        print(f"repository {repository}; {args.protocol}; concurrency {levels}; "
              f"≤{args.requests} requests and ≤{args.duration:.0f}s per level")
        results: list[Level] = []
        for mode in args.modes.split(","):
            dynamic = mode == "dynamic"
            if dynamic and args.queue_delay_us is None and args.instances is None:
                served = repository
            else:
                served = edited_copy(repository, tmp_path / mode, dynamic_batching=dynamic,
                                     queue_delay_us=args.queue_delay_us, instances=args.instances)
            results += bench_server(served, mode, models, levels, args.requests, args.duration, args.protocol)
    print()
    print(table(results))
    by_key = {(r.mode, r.model, r.concurrency): r for r in results}
    top = max(levels)
    for model in models:
        dyn, one = by_key.get(("dynamic", model, top)), by_key.get(("batch1", model, top))
        if dyn and one and one.throughput:
            print(f"{model}: dynamic batching at concurrency {top}: "
                  f"{dyn.throughput / one.throughput:.2f}x batch-1 throughput")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
