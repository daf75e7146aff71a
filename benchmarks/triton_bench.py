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
instances (instance_group count), warmup (all: model_warmup at every batch size up to max_batch_size, zeros, which
Triton runs while the model loads), cuda (KEY=VALUE[/KEY=VALUE...] set on the config's CUDA accelerator, e.g.
cudnn_conv_algo_search=HEURISTIC). With --model-config-name the named configs are edited. The variants are
measured interleaved, level by level, `--rounds` times in a rotating order, so a change in the machine's load
reaches them all alike; the table gives medians over the rounds and each variant's throughput against the current
config. The load average is printed before and after.

Each level of concurrency runs that many threads, each with its own client, sending `--batch-sizes` images per
request (one by default) until `--requests` requests are done or `--duration` seconds have passed. The repository
itself is never written to.

On a GPU machine (onnxruntime-gpu importable ahead of the CPU build):

    python -m benchmarks.triton_bench --model-config-name gpu --batch-sizes 1,2,4,8,16 --concurrency 1,16 --direct

serves each model's configs/gpu.pbtxt (KIND_GPU; the providers each instance runs on are printed from the server's
log) and, with --direct, runs the same ONNX models in this process with the same providers, serially, at each batch
size: the yardstick that shows what Triton's serving costs. images/s counts images, inf/s requests. --direct also
prints what the first call at each batch size cost (cuDNN picks its kernels then), and with --mixed a run whose
batch size changes every call, as dynamic batching feeds a backend; --cuda-option KEY=VALUE overrides a CUDA provider
option of the in-process run (e.g. cudnn_conv_algo_search=HEURISTIC).

After every level served by Triton, a `server:` line gives the server's own account from its statistics: the
requests, the executions (batches) they ran in and their mean size, and per request the time queued, copying
input, executing (for the Python-backend copy, the stub's execute()) and handling output. That tells a slow level's
queue from its execution.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from radstream.triton_server import (  # noqa: E402
    TritonServer,
    gpu_execution_providers,
    iter_models,
    model_config_path,
    open_onnx_session,
)
from services.triton.triton_client import TritonInference  # noqa: E402

REAL_REPOSITORY = ROOT / "services" / "triton" / "model_repository"


@dataclass
class Level:
    mode: str
    model: str
    concurrency: int
    completed: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    batch: int = 1
    server: ServerStats | None = None

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def images_per_s(self) -> float:
        return self.throughput * self.batch

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class ServerStats:
    """What the server says of one level: requests served, the executions (batches) it ran them in, and where a
    request's time went, per successful request: waiting in the scheduler's queue, then the input copy, execution
    and output handling of the batch it ran in (Triton counts a batch's whole duration for each of its requests).
    For the Python backend's serving copy, compute_infer is the stub's execute()."""

    requests: int
    images: int
    executions: int
    ms: dict[str, float]

    @property
    def mean_batch(self) -> float:
        return self.images / self.executions if self.executions else float("nan")

    def line(self) -> str:
        return (
            f"server: {self.requests} requests in {self.executions} executions (mean batch {self.mean_batch:.1f} "
            f"images); per request ms: " + ", ".join(f"{k} {v:.2f}" for k, v in self.ms.items())
        )


def statistics_counts(admin, model: str) -> dict[str, int]:
    """The server's cumulative counters for `model` (Triton's statistics extension), as plain integers."""
    stats = admin.get_inference_statistics(model, as_json=True)["model_stats"][0]
    counts = {
        "images": int(stats.get("inference_count", 0)),
        "executions": int(stats.get("execution_count", 0)),
        "requests": int(stats.get("inference_stats", {}).get("success", {}).get("count", 0)),
    }
    for stage in STAGES:
        counts[stage] = int(stats.get("inference_stats", {}).get(stage, {}).get("ns", 0))
    return counts


def server_delta(admin, model: str, before: dict[str, int], completed: int, deadline_s: float = 10.0) -> ServerStats:
    """The counters' change since `before`, once they count the level's `completed` requests: the backend reports a
    batch's statistics after sending its responses, so the last batch can lag the client's last answer."""
    deadline = time.monotonic() + deadline_s
    after = statistics_counts(admin, model)
    while after["requests"] - before["requests"] < completed and time.monotonic() < deadline:
        time.sleep(0.05)
        after = statistics_counts(admin, model)
    delta = {k: after[k] - before[k] for k in after}
    per = max(delta["requests"], 1)
    return ServerStats(delta["requests"], delta["images"], delta["executions"], {stage: delta[stage] / per / 1e6 for stage in STAGES})


def measured_level(
    admin,
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    concurrency: int,
    requests: int,
    duration_s: float,
    mode: str,
    batch: int = 1,
) -> Level:
    """run_level, with the server's own account of the level (its statistics before and after)."""
    before = statistics_counts(admin, model)
    level = run_level(url, model, inputs, concurrency, requests, duration_s, mode, batch)
    # run_level's untimed first request per client is counted by the server too
    level.server = server_delta(admin, model, before, level.completed + concurrency)
    return level


def admin_client(server: TritonServer):
    import tritonclient.grpc as grpcclient  # gRPC: the http client needs gevent, which a GPU image may lack

    return grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))


def read_config(model_dir: Path, config_name: str | None = None):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(model_config_path(model_dir, config_name).read_text(), model_config_pb2.ModelConfig())


def write_config(model_dir: Path, config, config_name: str | None = None) -> None:
    from google.protobuf import text_format

    model_config_path(model_dir, config_name).write_text(text_format.MessageToString(config))


def edited_copy(
    repository: Path,
    dest: Path,
    *,
    dynamic_batching: bool,
    queue_delay_us: int | None,
    instances: int | None,
    config_name: str | None = None,
    warmup: bool = False,
) -> Path:
    """Copy `repository` to `dest` and edit its configs there (the original stays as it is)."""
    shutil.copytree(repository, dest, symlinks=True)
    for model_dir in iter_models(dest):
        # The file the server will load: config.pbtxt, or configs/<name>.pbtxt where the model has one.
        config = read_config(model_dir, config_name)
        if not dynamic_batching:
            config.ClearField("dynamic_batching")
        elif queue_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
        if instances is not None:
            for group in config.instance_group:
                group.count = instances
        if warmup:
            add_warmup(config)
        write_config(model_dir, config, config_name)
    return dest


VARIANT_KEYS = ("batching", "delay_us", "preferred", "instances", "warmup", "cuda")


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
    if edits.get("warmup") == "all":
        add_warmup(config)
    if "cuda" in edits:  # KEY=VALUE[/KEY=VALUE...] on the config's cuda accelerator, e.g. cudnn_conv_algo_search=HEURISTIC
        accelerators = [a for a in config.optimization.execution_accelerators.gpu_execution_accelerator if a.name == "cuda"]
        if not accelerators:
            raise SystemExit(f"variant cuda:{edits['cuda']}: {config.name}'s config has no cuda accelerator (use --model-config-name gpu)")
        for item in edits["cuda"].split("/"):
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"variant cuda:{edits['cuda']}: want KEY=VALUE[/KEY=VALUE...]")
            for accelerator in accelerators:
                accelerator.parameters[key] = value


def add_warmup(config) -> None:
    """model_warmup at every batch size up to max_batch_size (zeros): Triton runs them while the model loads,
    before the server is ready, so a first request of a new batch size never pays for its kernel choice."""
    for batch in range(1, max(config.max_batch_size, 1) + 1):
        warmup = config.model_warmup.add(name=f"batch_{batch}", batch_size=batch)
        for i in config.input:
            warmup.inputs[i.name].data_type = i.data_type
            warmup.inputs[i.name].dims.extend(i.dims)
            warmup.inputs[i.name].zero_data = True


def variant_repository(
    repository: Path, dest: Path, models: list[str], variants: dict[str, dict[str, str]], config_name: str | None = None
) -> Path:
    """`<model>__current` (the config as it is) and `<model>__<variant>` (edited) for each model, in one repository."""
    dest.mkdir(parents=True)
    for model in models:
        for name, edits in {"current": {}, **variants}.items():
            served = dest / f"{model}__{name}"
            shutil.copytree(repository / model, served, symlinks=True)
            config = read_config(served, config_name)
            config.name = served.name
            apply_edits(config, edits)
            write_config(served, config, config_name)
    return dest


def bench_variants(
    repository: Path,
    models: list[str],
    variants: dict[str, dict[str, str]],
    levels: list[int],
    requests: int,
    duration_s: float,
    protocol: str,
    rounds: int,
    config_name: str | None = None,
) -> list[Level]:
    names = ["current", *variants]
    results: list[Level] = []
    with started_server(repository, config_name, protocol, "", " (model_warmup runs before readiness)") as (url, admin):
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # rotate, so no variant always goes first
            for model in models:
                inputs = one_image(repository / f"{model}__current")
                for concurrency in levels:
                    for name in order:
                        level = measured_level(admin, url, f"{model}__{name}", inputs, concurrency, requests, duration_s, name)
                        level.model = model
                        results.append(level)
                        print(
                            f"  round {r + 1} {name:<10} {model:<22} c={concurrency:<3} {level.throughput:8.1f} inf/s  "
                            f"p50 {level.percentile(50):7.1f} ms  p95 {level.percentile(95):7.1f} ms",
                            flush=True,
                        )
                        print(f"          {level.server.line()}", flush=True)
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
            rows.append(
                f"| {model:<22} | {concurrency:>5} | {name:<10} | {rate:>7.1f} | {p50:>7.1f} | {p95:>7.1f} | "
                f"{rate / base if base else float('nan'):>9.2f}x | {sum(x.errors for x in levels):>6} |"
            )
    return "\n".join(rows)


def tiny_repository(dest: Path) -> Path:
    from synthetic.models import build_tiny_repository

    return build_tiny_repository(dest)


def one_image(model_dir: Path, batch: int = 1, config_name: str | None = None) -> dict[str, np.ndarray]:
    config = read_config(model_dir, config_name)
    rng = np.random.default_rng(0)
    return {i.name: rng.random((batch, *i.dims), dtype=np.float32) for i in config.input}


def run_level(
    url: str, model: str, inputs: dict[str, np.ndarray], concurrency: int, requests: int, duration_s: float, mode: str, batch: int = 1
) -> Level:
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
            except Exception:
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
    return Level(mode, model, concurrency, len(latencies), errors, elapsed, latencies, batch)


def print_level(level: Level) -> None:
    print(
        f"  {level.mode:<10} {level.model:<22} c={level.concurrency:<3} b={level.batch:<3} "
        f"{level.throughput:8.1f} inf/s {level.images_per_s:9.1f} images/s  "
        f"p50 {level.percentile(50):7.1f} ms  p95 {level.percentile(95):7.1f} ms",
        flush=True,
    )
    if level.server:
        print(f"             {level.server.line()}", flush=True)


def provider_lines(server: TritonServer) -> list[str]:
    """What each model instance runs on, as the generated model.py logged it."""
    if not server.log_file or not server.log_file.is_file():
        return []
    return [
        line.split("] ", 1)[-1].strip().strip('"')
        for line in server.log_file.read_text(errors="replace").splitlines()
        if "ONNX Runtime" in line and "providers" in line
    ]


@contextmanager
def started_server(repository: Path, config_name: str | None, protocol: str, prefix: str, note: str = "") -> Iterator[tuple[str, Any]]:
    """A Triton server on `repository` for one measurement: its start time and ONNX Runtime providers printed (each line
    after `prefix`), then its URL for `protocol` and an admin client."""
    started = time.perf_counter()
    with TritonServer(repository, model_config_name=config_name, ready_deadline_s=600) as server:
        print(f"  {prefix}server ready in {time.perf_counter() - started:.1f}s{note}")
        for line in provider_lines(server):
            print(f"  {prefix}{line}")
        yield (server.grpc_url if protocol == "grpc" else server.http_url), admin_client(server)


def bench_server(
    repository: Path,
    mode: str,
    models: list[str],
    levels: list[int],
    requests: int,
    duration_s: float,
    protocol: str,
    batch_sizes: tuple[int, ...] = (1,),
    config_name: str | None = None,
) -> list[Level]:
    results = []
    with started_server(repository, config_name, protocol, f"{mode:<10} ") as (url, admin):
        for model in models:
            max_batch = read_config(repository / model, config_name).max_batch_size
            for batch in batch_sizes:
                if batch > max(max_batch, 1):
                    continue
                inputs = one_image(repository / model, batch, config_name)
                for concurrency in levels:
                    level = measured_level(admin, url, model, inputs, concurrency, requests, duration_s, mode, batch)
                    results.append(level)
                    print_level(level)
    return results


def add_cuda_option(parser: argparse.ArgumentParser, help: str) -> None:
    """--cuda-option KEY=VALUE (repeatable): the overrides with_cuda_options applies."""
    parser.add_argument("--cuda-option", action="append", default=[], metavar="KEY=VALUE", help=help)


def with_cuda_options(providers: list, overrides: dict[str, str] | None) -> list:
    """`providers` (as gpu_execution_providers gives them) with the CUDA provider's options overridden."""
    return [p if isinstance(p, str) or p[0] != "CUDAExecutionProvider" else (p[0], {**p[1], **(overrides or {})}) for p in providers]


def bench_direct(
    repository: Path,
    models: list[str],
    requests: int,
    duration_s: float,
    batch_sizes: tuple[int, ...],
    config_name: str | None,
    cuda_overrides: dict[str, str] | None = None,
    mixed: bool = False,
) -> list[Level]:
    """The same ONNX models in this process, serially, on the providers the served config asks for (the CUDA
    provider's options overridden by `cuda_overrides`, e.g. use_tf32=1 to see what TF32 buys)."""
    import onnxruntime as ort

    results = []
    for model in models:
        config = read_config(repository / model, config_name)
        gpu = any(g.kind == g.KIND_GPU for g in config.instance_group)
        providers = with_cuda_options(gpu_execution_providers(config), cuda_overrides) if gpu else ["CPUExecutionProvider"]
        session = open_onnx_session(
            ort,
            str(repository / model / "1" / "model.onnx"),
            ort.SessionOptions(),
            providers,
            lambda m, model=model: print(f"  direct     {model}: {m}"),
        )
        cuda = session.get_provider_options().get("CUDAExecutionProvider", {})
        print(
            f"  direct     {model}: ONNX Runtime {ort.__version__} providers {session.get_providers()}"
            + (f" (CUDA use_tf32={cuda.get('use_tf32')})" if cuda else "")
        )
        if gpu and "CUDAExecutionProvider" not in session.get_providers():
            raise SystemExit(f"{model}: the config asks for the GPU but ONNX Runtime has no CUDA provider here")
        for batch in batch_sizes:
            if batch > max(config.max_batch_size, 1):
                continue
            inputs = one_image(repository / model, batch, config_name)
            t0 = time.perf_counter()
            session.run(None, inputs)  # the first call at a new shape: CUDA/cuDNN pick their kernels for it
            first_ms = (time.perf_counter() - t0) * 1000
            for _ in range(2):  # warm-up
                session.run(None, inputs)
            latencies = []
            start = time.perf_counter()
            while len(latencies) < requests and time.perf_counter() - start < duration_s:
                t0 = time.perf_counter()
                session.run(None, inputs)
                latencies.append((time.perf_counter() - t0) * 1000)
            level = Level("direct", model, 1, len(latencies), 0, time.perf_counter() - start, latencies, batch)
            results.append(level)
            print_level(level)
            print(f"             first call at this batch size {first_ms:.1f} ms", flush=True)
        if mixed and len(batch_sizes) > 1:
            print_mixed(model, mixed_batches(session, repository / model, batch_sizes, config, config_name, requests, duration_s))
    return results


def mixed_batches(
    session, model_dir: Path, batch_sizes: tuple[int, ...], config, config_name: str | None, requests: int, duration_s: float
) -> tuple[int, int, float, list[float]]:
    """Calls whose batch size changes from call to call, as dynamic batching feeds a backend: the sizes drawn in a
    seeded random order (with n sizes, a call repeats the one before about once in n), every size already run
    before the clock starts. (calls, images, seconds, latencies ms)."""
    sizes = [b for b in batch_sizes if b <= max(config.max_batch_size, 1)]
    feeds = {b: one_image(model_dir, b, config_name) for b in sizes}
    for b in sizes:
        session.run(None, feeds[b])
    order = np.random.default_rng(0).choice(sizes, size=4096)
    latencies, images = [], 0
    start = time.perf_counter()
    while len(latencies) < requests and time.perf_counter() - start < duration_s:
        b = int(order[len(latencies) % len(order)])
        t0 = time.perf_counter()
        session.run(None, feeds[b])
        latencies.append((time.perf_counter() - t0) * 1000)
        images += b
    return len(latencies), images, time.perf_counter() - start, latencies


def print_mixed(model: str, measured: tuple[int, int, float, list[float]]) -> None:
    calls, images, seconds, latencies = measured
    print(
        f"  mixed      {model:<22} c=1   b=mix  {calls / seconds:8.1f} inf/s {images / seconds:9.1f} images/s  "
        f"p50 {float(np.percentile(latencies, 50)):7.1f} ms  p95 {float(np.percentile(latencies, 95)):7.1f} ms "
        f"(batch size changing call to call, mean {images / max(calls, 1):.1f})",
        flush=True,
    )


def table(results: list[Level]) -> str:
    head = (
        f"| {'serving':<10} | {'model':<22} | {'conc.':>5} | {'batch':>5} | {'requests':>8} | {'errors':>6} "
        f"| {'inf/s':>7} | {'images/s':>8} | {'p50 ms':>7} | {'p95 ms':>7} |"
    )
    rule = "|" + "|".join("-" * (len(cell)) for cell in head.split("|")[1:-1]) + "|"
    rows = [head, rule]
    for r in results:
        rows.append(
            f"| {r.mode:<10} | {r.model:<22} | {r.concurrency:>5} | {r.batch:>5} | {r.completed:>8} "
            f"| {r.errors:>6} | {r.throughput:>7.1f} | {r.images_per_s:>8.1f} | {r.percentile(50):>7.1f} "
            f"| {r.percentile(95):>7.1f} |"
        )
    return "\n".join(rows)


def best_batches(results: list[Level]) -> list[str]:
    """Per model and serving: images/s at batch 1 against the best batch size (any concurrency)."""
    lines = []
    for mode, model in dict.fromkeys((r.mode, r.model) for r in results):
        mine = [r for r in results if r.mode == mode and r.model == model and not r.errors]
        ones = [r for r in mine if r.batch == 1]
        if not ones or len({r.batch for r in mine}) < 2:
            continue
        one, best = max(ones, key=lambda r: r.images_per_s), max(mine, key=lambda r: r.images_per_s)
        lines.append(
            f"{mode} {model}: batch 1 {one.images_per_s:.1f} images/s (c={one.concurrency}); best "
            f"batch {best.batch} {best.images_per_s:.1f} images/s (c={best.concurrency}): "
            f"{best.images_per_s / one.images_per_s:.2f}x"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-repository", type=Path, default=None, help="default: services/triton/model_repository, or the tiny test models if absent"
    )
    parser.add_argument("--tiny", action="store_true", help="benchmark the tiny test models")
    parser.add_argument("--models", default="chest_xray_classifier,anomaly_detector,report_encoder")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=300, help="requests per level at most")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level at most")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--queue-delay-us", type=int, default=None, help="try another dynamic_batching.max_queue_delay_microseconds (on a copy)"
    )
    parser.add_argument("--instances", type=int, default=None, help="try another instance_group count (on a copy, both runs)")
    parser.add_argument("--modes", default="dynamic,batch1")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KEY:VALUE,...",
        help="measure this config beside the current one, interleaved in one server (repeatable)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --variant: interleaved rounds (medians are reported)")
    parser.add_argument("--batch-sizes", default="1", help="images per request, e.g. 1,4,16 (up to max_batch_size)")
    parser.add_argument(
        "--model-config-name",
        default=None,
        metavar="NAME",
        help="serve configs/NAME.pbtxt where a model has one (gpu: KIND_GPU, onnxruntime-gpu)",
    )
    parser.add_argument(
        "--warmup-all", action="store_true", help="serve copies with model_warmup at every batch size (see --variant warmup:all)"
    )
    parser.add_argument(
        "--direct", action="store_true", help="also run the models in this process, serially, on the providers the config asks for"
    )
    parser.add_argument(
        "--mixed", action="store_true", help="with --direct and several --batch-sizes: also a run whose batch size changes every call"
    )
    add_cuda_option(parser, "with --direct: override a CUDA provider option of the in-process run (repeatable), e.g. use_tf32=1")
    args = parser.parse_args(argv)
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b)
    if args.variant and (batch_sizes != (1,) or args.direct):
        parser.error("--variant measures one image per request: no --batch-sizes or --direct")
    if (args.cuda_option or args.mixed) and not args.direct:
        parser.error("--cuda-option and --mixed apply to the in-process run: add --direct")
    cuda_overrides = dict(o.split("=", 1) for o in args.cuda_option)

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
        print(
            f"repository {repository}; {args.protocol}; concurrency {levels}; ≤{args.requests} requests and ≤{args.duration:.0f}s per level"
        )
        if args.variant:
            variants = dict(parse_variant(v) for v in args.variant)
            print(
                f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores); "
                f"variants: {variants}; {args.rounds} interleaved rounds"
            )
            served = variant_repository(repository, tmp_path / "variants", models, variants, args.model_config_name)
            results = bench_variants(
                served, models, variants, levels, args.requests, args.duration, args.protocol, args.rounds, args.model_config_name
            )
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print()
            print(variant_table(results, ["current", *variants]))
            return 1 if any(r.errors for r in results) else 0
        results: list[Level] = []
        for mode in filter(None, args.modes.split(",")):  # --modes "" with --direct: the in-process run alone
            dynamic = mode == "dynamic"
            if dynamic and args.queue_delay_us is None and args.instances is None and not args.warmup_all:
                served = repository
            else:
                served = edited_copy(
                    repository,
                    tmp_path / mode,
                    dynamic_batching=dynamic,
                    queue_delay_us=args.queue_delay_us,
                    instances=args.instances,
                    config_name=args.model_config_name,
                    warmup=args.warmup_all,
                )
            results += bench_server(
                served, mode, models, levels, args.requests, args.duration, args.protocol, batch_sizes, args.model_config_name
            )
        if args.direct:
            results += bench_direct(
                repository, models, args.requests, args.duration, batch_sizes, args.model_config_name, cuda_overrides, args.mixed
            )
    print()
    print(table(results))
    for line in best_batches(results):
        print(line)
    by_key = {(r.mode, r.model, r.concurrency): r for r in results if r.batch == 1}
    top = max(levels)
    for model in models:
        dyn, one = by_key.get(("dynamic", model, top)), by_key.get(("batch1", model, top))
        if dyn and one and one.throughput:
            print(f"{model}: dynamic batching at concurrency {top}: {dyn.throughput / one.throughput:.2f}x batch-1 throughput")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
