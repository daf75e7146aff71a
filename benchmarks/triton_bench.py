"""Local Triton throughput and latency: the model repository's dynamic batching against batch-1 serving and
against other batching settings, for all three models.

    python -m benchmarks.triton_bench --requests 400 --duration 15
    python benchmarks/triton_bench.py --models chest_xray_classifier,report_encoder --concurrency 1,4,16
    python -m benchmarks.triton_bench --concurrency 1,16 --duration 4 --rounds 3 \
        --variant batch1=batching:off --variant d500=delay_us:500 --variant i2=instances:2

Without --variant: starts `tritonserver` (nvidia-pytriton's, CPU) twice on free ports, once on the repository as
it is, once on a temporary copy whose config.pbtxt files have `dynamic_batching` removed.

With --variant NAME=KEY:VALUE[,KEY:VALUE...] (repeatable): one server on a temporary repository that holds each
model as it is (`<model>__current`) and once per variant with its config edited (`<model>__NAME`); keys: batching
(off), delay_us (max_queue_delay_microseconds), preferred (batch sizes joined by /, e.g. 4/8/16, or none),
instances (instance_group count). The variants are measured interleaved, level by level, `--rounds` times in a
rotating order, so a change in the machine's load reaches them all alike; the table gives medians over the rounds
and each variant's throughput against the current config. The load average is printed before and after.

Each level of concurrency runs that many threads, each with its own client, sending one image per request until
`--requests` requests are done or `--duration` seconds have passed. The repository itself is never written to.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
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


VARIANT_KEYS = ("batching", "delay_us", "preferred", "instances")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, sep, spec = text.partition("=")
    if not sep or not name.isidentifier() or name == "current":
        raise SystemExit(f"--variant wants NAME=KEY:VALUE[,KEY:VALUE...] (NAME not 'current'), got {text!r}")
    edits = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition(":")
        if not sep or key not in VARIANT_KEYS:
            raise SystemExit(f"--variant {name}: {item!r} is not one of {', '.join(VARIANT_KEYS)}:VALUE")
        edits[key] = value
    return name, edits


def apply_edits(config, edits: dict[str, str]) -> None:
    if edits.get("batching") == "off":
        config.ClearField("dynamic_batching")
        return
    if "delay_us" in edits:
        config.dynamic_batching.max_queue_delay_microseconds = int(edits["delay_us"])
    if "preferred" in edits:
        del config.dynamic_batching.preferred_batch_size[:]
        if edits["preferred"] != "none":
            config.dynamic_batching.preferred_batch_size.extend(int(b) for b in edits["preferred"].split("/"))
    if "instances" in edits:
        for group in config.instance_group:
            group.count = int(edits["instances"])


def variant_repository(repository: Path, dest: Path, models: list[str], variants: dict[str, dict[str, str]]) -> Path:
    """`<model>__current` (the config as it is) and `<model>__<variant>` (edited) for each model, in one repository."""
    dest.mkdir(parents=True)
    for model in models:
        for name, edits in {"current": {}, **variants}.items():
            served = dest / f"{model}__{name}"
            shutil.copytree(repository / model, served, symlinks=True)
            config = read_config(served)
            config.name = served.name
            apply_edits(config, edits)
            write_config(served, config)
    return dest


def bench_variants(repository: Path, models: list[str], variants: dict[str, dict[str, str]], levels: list[int],
                   requests: int, duration_s: float, protocol: str, rounds: int) -> list[Level]:
    names = ["current", *variants]
    results: list[Level] = []
    with TritonServer(repository) as server:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate, so no variant always goes first
            for model in models:
                inputs = one_image(repository / f"{model}__current")
                for concurrency in levels:
                    for name in order:
                        level = run_level(url, f"{model}__{name}", inputs, concurrency, requests, duration_s, name)
                        level.model = model
                        results.append(level)
                        print(f"  round {r + 1} {name:<10} {model:<22} c={concurrency:<3} {level.throughput:8.1f} inf/s  "
                              f"p50 {level.percentile(50):7.1f} ms  p95 {level.percentile(95):7.1f} ms", flush=True)
    return results


def variant_table(results: list[Level], names: list[str]) -> str:
    groups: dict[tuple[str, int, str], list[Level]] = {}
    for level in results:
        groups.setdefault((level.model, level.concurrency, level.mode), []).append(level)
    head = f"| {'model':<22} | {'conc.':>5} | {'config':<10} | {'inf/s':>7} | {'p50 ms':>7} | {'p95 ms':>7} | {'vs current':>10} | {'errors':>6} |"
    rows = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for model, concurrency in dict.fromkeys((m, c) for m, c, _ in groups):
        base = statistics.median(x.throughput for x in groups[(model, concurrency, "current")])
        for name in names:
            levels = groups[(model, concurrency, name)]
            rate = statistics.median(x.throughput for x in levels)
            p50 = statistics.median(x.percentile(50) for x in levels)
            p95 = statistics.median(x.percentile(95) for x in levels)
            rows.append(f"| {model:<22} | {concurrency:>5} | {name:<10} | {rate:>7.1f} | {p50:>7.1f} | {p95:>7.1f} | "
                        f"{rate / base if base else float('nan'):>9.2f}x | {sum(x.errors for x in levels):>6} |")
    return "\n".join(rows)


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
    parser.add_argument("--models", default="chest_xray_classifier,anomaly_detector,report_encoder")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=300, help="requests per level at most")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level at most")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--queue-delay-us", type=int, default=None,
                        help="try another dynamic_batching.max_queue_delay_microseconds (on a copy)")
    parser.add_argument("--instances", type=int, default=None,
                        help="try another instance_group count (on a copy, both runs)")
    parser.add_argument("--modes", default="dynamic,batch1")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY:VALUE,...",
                        help="measure this config beside the current one, interleaved in one server (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="with --variant: interleaved rounds (medians are reported)")
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
        if args.variant:
            variants = dict(parse_variant(v) for v in args.variant)
            print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores); "
                  f"variants: {variants}; {args.rounds} interleaved rounds")
            served = variant_repository(repository, tmp_path / "variants", models, variants)
            results = bench_variants(served, models, variants, levels, args.requests, args.duration, args.protocol, args.rounds)
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print()
            print(variant_table(results, ["current", *variants]))
            return 1 if any(r.errors for r in results) else 0
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
