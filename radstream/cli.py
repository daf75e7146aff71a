"""The radstream command: run studies through the embedded pipeline, make demo studies, serve models."""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from radstream.analytics import add_query_parser
from radstream.lake import add_lake_parser
from radstream.console.cli import add_console_parsers
from shared.errors import RadStreamError
from shared.settings import DEFAULT_MODEL_REPOSITORY, Settings

EXIT_FAILED_STUDIES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3  # stopped by Ctrl-C or SIGTERM: the summary names what was not run; `radstream resume` finishes it


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarise(outcomes, wall_s: float) -> dict:
    times = [o.end_to_end_ms for o in outcomes if o.end_to_end_ms is not None and o.status == "succeeded"]
    return {
        "studies": len(outcomes),
        "succeeded": sum(o.status == "succeeded" for o in outcomes),
        "failed": sum(o.status != "succeeded" for o in outcomes),
        "wall_seconds": round(wall_s, 3),
        "studies_per_minute": round(len(outcomes) / wall_s * 60, 1) if wall_s > 0 else None,
        "end_to_end_ms_median": round(statistics.median(times), 1) if times else None,
        "end_to_end_ms_p95": round(percentile(times, 0.95), 1) if times else None,
    }


def print_table(console: Console, outcomes, totals: dict) -> None:
    table = Table(title="RadStream studies (reference models: not for clinical use)")
    for column in ("study", "status", "positive findings (top finding if none) / reason", "boxes", "end-to-end ms"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        if o.status == "succeeded":
            shown = [f for f in o.findings if f["positive"]] or o.findings[:1]
            top = ", ".join(f"{f['label']} {f['probability']:.2f}{'*' if f['positive'] else ''}" for f in shown)
            table.add_row(o.study_id, "[green]succeeded", top, str(o.detections), f"{o.end_to_end_ms:.0f}")
        else:
            reason = f"{o.stage or 'workflow'}: {o.error_type}: {o.message}"
            if o.output is None:
                reason += " [not recorded: resume runs it again]"
            table.add_row(o.study_id, "[red]failed", reason, "", f"{o.end_to_end_ms:.0f}" if o.end_to_end_ms else "")
    console.print(table)
    console.print("* = above the finding's threshold")
    console.print(
        f"{totals['succeeded']} succeeded, {totals['failed']} failed of {totals['studies']} in {totals['wall_seconds']:.2f} s "
        f"({totals['studies_per_minute']} studies/min); end-to-end median {totals['end_to_end_ms_median']} ms, "
        f"p95 {totals['end_to_end_ms_p95']} ms"
    )


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {"backend": "local", "data_dir": Path(args.data_dir)}
    if args.triton_url:
        overrides["triton_url"] = args.triton_url
    if args.model_repository:
        overrides["model_repository"] = Path(args.model_repository)
    base = Settings.from_env()
    return base.model_copy(update=overrides)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_studies(folders: list[Path] | None, args: argparse.Namespace):
    """Run study folders; None: resume what the journals and the images bucket say is unfinished. Returns the RunReport."""
    from radstream.runtime import LocalRuntime

    settings = settings_from(args)
    err = Console(stderr=True)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can a signal handler be set
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt) if in_main_thread else None
    try:
        with LocalRuntime(settings, workers=args.workers) as runtime:
            started = time.perf_counter()
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err, disable=args.quiet, transient=not err.is_terminal) as progress:
                task = progress.add_task("studies", total=len(folders) if folders is not None else None)
                advance = lambda o: progress.advance(task)  # noqa: E731
                if folders is None:
                    report = runtime.resume(advance)
                else:
                    report = runtime.run_many(folders, advance)
            totals = summarise(report.outcomes, time.perf_counter() - started)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    totals |= {"not_run": len(report.not_run), "interrupted": report.interrupted}
    if args.json:
        print(json.dumps({"totals": totals, "data_dir": str(settings.data_dir), "journal": str(report.journal),
                          "not_run": report.not_run, "studies": [asdict(o) for o in report.outcomes]}, indent=2))
    else:
        print_table(Console(width=None if sys.stdout.isatty() else 160), report.outcomes, totals)
        print(f"results: {settings.data_dir / settings.results_bucket}   telemetry: {settings.data_dir / settings.telemetry_bucket}   "
              f"logs: {settings.data_dir / 'logs'}   journal: {report.journal}")
        unrecorded = sum(o.output is None for o in report.outcomes)
        if report.interrupted or unrecorded:
            print(f"interrupted: {len(report.not_run)} studies not run; " if report.interrupted else "", end="")
            print(f"{unrecorded} failures not recorded; " if unrecorded else "", end="")
            print("`radstream resume` finishes them")
    return report


def exit_code(report) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED_STUDIES if any(o.status != "succeeded" for o in report.outcomes) else 0


def cmd_run(args: argparse.Namespace) -> int:
    from radstream.runtime import find_studies

    return exit_code(run_studies(find_studies(Path(args.path)), args))


def cmd_resume(args: argparse.Namespace) -> int:
    return exit_code(run_studies(None, args))


def cmd_demo(args: argparse.Namespace) -> int:
    from radstream.samples import write_demo_studies

    out = Path(args.out) if args.out else Path(args.data_dir) / "demo-studies"
    folders = write_demo_studies(out, args.count, invalid=not args.valid_only)
    if not args.quiet:
        Console(stderr=True).print(f"wrote {len(folders)} synthetic demo studies to {out} (phantoms, not patient data)")
    report = run_studies(folders, args)
    if args.valid_only or report.interrupted:
        return exit_code(report)
    # The demo includes studies broken on purpose (bad-*): it succeeds when exactly those fail, each with its record.
    wrong = [o.study_id for o in report.outcomes if (o.status == "succeeded") == o.study_id.startswith("bad-") or o.output is None]
    if wrong:
        print(f"demo: unexpected outcome for {', '.join(wrong)}", file=sys.stderr)
        return EXIT_FAILED_STUDIES
    print("demo: every valid study has a result; every broken one (bad-*) has a failure record, as intended", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_serve_models(args: argparse.Namespace) -> int:
    from radstream.triton_server import serve_models

    return serve_models(Path(args.model_repository or DEFAULT_MODEL_REPOSITORY), http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port)


def cmd_import_xrv(args: argparse.Namespace) -> int:
    from radstream.models_import import run_import

    return run_import(Path(args.weights), Path(args.model_repository or DEFAULT_MODEL_REPOSITORY),
                      weights_name=args.weights_name, allow_pickle=args.allow_pickle)


def cmd_trace(args: argparse.Namespace) -> int:
    from radstream.traces import latest_trace, waterfall

    document = latest_trace(Path(args.data_dir), args.study_id)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    annotations = document["annotations"]
    total_ms = (document["end_time"] - document["start_time"]) * 1000
    table = Table(title=f"trace {document['trace_id']}: study {annotations['study_id']}, {annotations['status']}, {total_ms:.1f} ms")
    for column in ("task", "start ms", "ms", "status"):
        table.add_column(column)
    table.add_column("timeline", no_wrap=True, min_width=41)
    for name, start, duration, status, bar in waterfall(document):
        table.add_row(name, f"{start:.1f}", f"{duration:.1f}", status, bar)
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def local_pseudonym_key(data_dir: Path) -> str:
    """GATEWAY_PSEUDONYM_KEY, else a random key kept in DATA_DIR/gateway/pseudonym.key (0600): study ids stay stable across restarts."""
    import os
    import secrets

    path = data_dir / "gateway" / "pseudonym.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def cmd_gateway(args: argparse.Namespace) -> int:
    """The DICOM gateway on free loopback ports (or --dimse-port/--http-port); each stored instance runs through the local pipeline."""
    import logging
    import threading

    from radstream.runtime import LocalRuntime
    from services.gateway.deliver import Deliverer
    from services.gateway.server import Gateway, LocalPipeline

    settings = settings_from(args)
    settings = settings.model_copy(update={
        "gateway_dimse_port": args.dimse_port, "gateway_http_port": args.http_port,
        "gateway_pseudonym_key": settings.gateway_pseudonym_key or local_pseudonym_key(settings.data_dir),
        "gateway_pacs": args.pacs or settings.gateway_pacs, "gateway_pacs_stow_url": args.pacs_stow_url or settings.gateway_pacs_stow_url,
    })
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with LocalRuntime(settings, workers=args.workers) as runtime:
        pipeline = LocalPipeline(runtime, workers=args.workers, deliverer=Deliverer(settings, runtime.store))

        def report(received):
            pipeline(received)
            future = pipeline.futures[received.key]
            def done(f):
                delivered = pipeline.deliveries.get(received.study_id)
                sent = f"; SR delivered to {', '.join(delivered)}" if isinstance(delivered, list) and delivered else (
                    f"; SR NOT delivered: {delivered}" if isinstance(delivered, Exception) else "")
                print(f"study {received.study_id}: {f.result().status}" + (f" ({f.result().message})" if f.result().message else "") + sent, flush=True)

            future.add_done_callback(done)

        with Gateway(settings, store=runtime.store, on_stored=report) as gateway:
            print(f"AE title: {gateway.ae_title}", flush=True)
            print(f"DIMSE:    {settings.gateway_host} port {gateway.dimse.port}  (e.g. storescu -aec {gateway.ae_title} {settings.gateway_host} {gateway.dimse.port} FILE.dcm)", flush=True)
            print(f"STOW-RS:  {gateway.stow.url}", flush=True)
            print(f"results:  {settings.data_dir / settings.results_bucket / 'results'}; Ctrl-C stops", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
        pipeline.close()
    return 0


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="radstream-data", help="folder holding the local buckets (default: ./radstream-data)")
    p.add_argument("--triton-url", help="serve models from Triton (http://host:8000 or grpc://host:8001) instead of in-process ONNX Runtime")
    p.add_argument("--model-repository", help="Triton model repository (default: services/triton/model_repository)")
    p.add_argument("--workers", type=int, default=2, help="studies run at once (default 2)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="radstream", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study folder, or a folder of study folders, through the pipeline")
    run.add_argument("path")
    add_run_options(run)
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="finish what earlier runs left: studies never run, cut short or failed transiently (after a crash, Ctrl-C or an outage)")
    add_run_options(resume)
    resume.set_defaults(func=cmd_resume)

    demo = sub.add_parser("demo", help="generate synthetic demo studies (some broken on purpose) and run them")
    demo.add_argument("--count", type=int, default=12, help="valid studies to generate (default 12)")
    demo.add_argument("--out", help="where to write the studies (default: DATA_DIR/demo-studies)")
    demo.add_argument("--valid-only", action="store_true", help="skip the broken-on-purpose studies")
    add_run_options(demo)
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve-models", help="start a local Triton server on the model repository")
    serve.add_argument("--model-repository")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.set_defaults(func=cmd_serve_models)

    models = sub.add_parser("models", help="manage the model repository")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    xrv = models_sub.add_parser("import-torchxrayvision", help="put a torchxrayvision DenseNet (weights on disk) into the classifier slot")
    from radstream.models_import import add_arguments as add_import_arguments

    add_import_arguments(xrv)
    xrv.set_defaults(func=cmd_import_xrv)

    trace = sub.add_parser("trace", help="show the trace of a study's latest run (an X-Ray segment document)")
    trace.add_argument("study_id")
    trace.add_argument("--data-dir", default="radstream-data")
    trace.add_argument("--json", action="store_true", help="print the segment document")
    trace.set_defaults(func=cmd_trace)

    gateway = sub.add_parser("gateway", help="start the DICOM gateway (C-ECHO/C-STORE SCP, STOW-RS) and run what it receives through the local pipeline")
    gateway.add_argument("--dimse-port", type=int, default=0, help="DIMSE port (default: a free one)")
    gateway.add_argument("--http-port", type=int, default=0, help="STOW-RS port (default: a free one)")
    gateway.add_argument("--pacs", help="deliver each study's SR by C-STORE to AE_TITLE@host:port (GATEWAY_PACS)")
    gateway.add_argument("--pacs-stow-url", help="deliver each study's SR by STOW-RS to this …/studies URL (GATEWAY_PACS_STOW_URL)")
    add_run_options(gateway)
    gateway.set_defaults(func=cmd_gateway)

    add_query_parser(sub)
    add_lake_parser(sub)
    add_console_parsers(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except RadStreamError as e:
        print(f"radstream: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C while in-flight studies were finishing: those stay unfinished in the journal
        print("radstream: interrupted; `radstream resume` finishes what was not run", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
