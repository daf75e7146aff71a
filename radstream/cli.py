"""The radstream command: run studies through the embedded pipeline, make demo studies, serve models."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from radstream.cli_args import add_data_dir
from radstream.analytics import add_query_parser
from radstream.console.cli import add_console_parsers
from radstream.lake import add_lake_parser
from shared.errors import ConfigurationError, RadStreamError, StorageUnavailable
from shared.settings import DEFAULT_MODEL_REPOSITORY, Settings

EXIT_FAILED_STUDIES = 1
EXIT_USAGE = 2  # the command could not do its work: a usage error, or the environment refused (a full or read-only disk, no data dir)
EXIT_INTERRUPTED = 3  # stopped by Ctrl-C or SIGTERM: the summary names what was not run; `radstream resume` finishes it


def whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (--workers)."""
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be 0 (--count, a port where 0 picks a free one)."""
    return whole_number(text, 0)


def port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0 for a free one, up to 65535), got {value}")
    return value


def resume_command(args: argparse.Namespace) -> str:
    """The exact command that finishes what this one left: the same data dir and model settings, quoted for a shell."""
    words = ["radstream", "resume", "--data-dir", str(args.data_dir)]
    for flag, name in (("--triton-url", "triton_url"), ("--model-repository", "model_repository")):
        if getattr(args, name, None):
            words += [flag, str(getattr(args, name))]
    return shlex.join(words)


def require_data_dir(data_dir: str | Path, what: str) -> Path:
    """A data dir the command reads must exist: a typo is an error, never an empty answer."""
    path = Path(data_dir)
    if not path.is_dir():
        raise ConfigurationError(f"no data dir {path} (--data-dir): nothing to {what}; `radstream run PATH --data-dir {path}` makes one")
    return path


def stdout_closed() -> None:
    """The reader of stdout went away (`… | head -1`): what is left to print goes nowhere, and Python's last flush
    at exit does not fail again with a second BrokenPipeError."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


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
            if o.critical_findings:
                top += f" (critical: {', '.join(o.critical_findings)})"
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


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside the block, SIGTERM (a supervisor, `kill`, a container stop) stops work as Ctrl-C does; the previous
    handler comes back after. Only the main thread can set a handler: elsewhere this changes nothing."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def run_studies(folders: list[Path] | None, args: argparse.Namespace, root: Path | None = None):
    """Run study folders; None: resume what the journals and the images bucket say is unfinished. Returns the RunReport."""
    from radstream.runtime import LocalRuntime

    settings = settings_from(args)
    if folders is None:
        require_data_dir(settings.data_dir, "resume")
    err = Console(stderr=True)
    with sigterm_as_ctrl_c(), LocalRuntime(settings, workers=args.workers) as runtime:
        runtime.warm()  # libraries and model sessions loaded before the first study (issue 23), not by it
        started = time.perf_counter()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=args.quiet,
            transient=not err.is_terminal,
        ) as progress:
            task = progress.add_task("studies", total=len(folders) if folders is not None else None)
            advance = lambda o: progress.advance(task)  # noqa: E731
            if folders is None:
                report = runtime.resume(advance)
            else:
                report = runtime.run_many(folders, advance, root=root)
        totals = summarise(report.outcomes, time.perf_counter() - started)
    report.warnings += runtime.close_warnings
    totals |= {"not_run": len(report.not_run), "interrupted": report.interrupted}
    for warning in report.warnings:  # stderr, always: stdout carries the table or exactly one JSON document
        print(f"radstream: warning: {warning}", file=sys.stderr)
    try:
        print_summary(report, totals, settings, args)
    except BrokenPipeError:  # `run --json | head -1`: the run is done and journalled; its exit code still says how it went
        stdout_closed()
        print(
            f"radstream: stdout closed before the summary was printed; the results are in {settings.data_dir / settings.results_bucket}",
            file=sys.stderr,
        )
    return report


def print_summary(report, totals: dict, settings: Settings, args: argparse.Namespace) -> None:
    if args.json:
        print(
            json.dumps(
                {
                    "totals": totals,
                    "data_dir": str(settings.data_dir),
                    "journal": str(report.journal),
                    "not_run": report.not_run,
                    "warnings": report.warnings,
                    "recovered": report.recovered,
                    "studies": [asdict(o) for o in report.outcomes],
                },
                indent=2,
            )
        )
    else:
        print_table(Console(width=None if sys.stdout.isatty() else 160), report.outcomes, totals)
        print(
            f"results: {settings.data_dir / settings.results_bucket}   telemetry: {settings.data_dir / settings.telemetry_bucket}   "
            f"logs: {settings.data_dir / 'logs'}   journal: {report.journal}"
        )
        unrecorded = sum(o.output is None for o in report.outcomes)
        if report.interrupted or unrecorded:
            print(f"interrupted: {len(report.not_run)} studies not run; " if report.interrupted else "", end="")
            print(f"{unrecorded} failures not recorded; " if unrecorded else "", end="")
            print(f"`{resume_command(args)}` finishes them")


def exit_code(report) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED_STUDIES if any(o.status != "succeeded" for o in report.outcomes) else 0


def cmd_run(args: argparse.Namespace) -> int:
    from radstream.local_aws import find_studies

    return exit_code(run_studies(find_studies(Path(args.path)), args, root=Path(args.path)))


def cmd_resume(args: argparse.Namespace) -> int:
    code = exit_code(run_studies(None, args))
    if code == EXIT_INTERRUPTED:
        return code  # stopped by Ctrl-C: the next resume replays the notifications too
    # What a notifier killed mid-delivery left pending (results/<study_id>/notifications.json) goes out now, once.
    replay_notifications(settings_from(args))
    return code


def replay_notifications(settings: Settings) -> tuple[int, int]:
    """Send every pending or dead-lettered critical-finding notification again; (delivered, still failing) studies."""
    from services.notify.domain import replay
    from shared import wiring

    store, events = wiring.object_store(settings), wiring.event_publisher(settings)
    try:
        replayed = replay(store, events, settings)
    finally:
        wiring.close_all(store, events)
    failed = [r for r in replayed if r.dead_letters]
    for r in replayed:
        state = f"still failing ({', '.join(r.dead_letters)})" if r.dead_letters else f"delivered {', '.join(r.delivered) or 'nothing new'}"
        print(f"{r.study_id}: notifications {state}", file=sys.stderr)
    return len(replayed) - len(failed), len(failed)


def cmd_notify(args: argparse.Namespace) -> int:
    """Critical-finding notifications: list what is pending or dead-lettered; --replay sends it again; --ack records who saw one."""
    from services.notify.domain import pending_ledgers
    from shared import wiring
    from shared.notifications import acknowledge

    settings = settings_from(args)
    require_data_dir(settings.data_dir, "notify")
    if args.ack:
        store = wiring.object_store(settings)
        try:
            acknowledged = acknowledge(store, settings.results_bucket, args.ack[0], args.ack[1], args.by or "")
        finally:
            wiring.close_all(store)
        print(
            f"{args.ack[0]} {acknowledged.rule}: acknowledged by {acknowledged.acknowledged_by} at {acknowledged.acknowledged_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        return 0
    if args.replay:
        delivered, failed = replay_notifications(settings)
        print(
            f"replayed {delivered + failed} stud{'y' if delivered + failed == 1 else 'ies'}' notifications: {delivered} delivered, {failed} still failing"
        )
        return EXIT_FAILED_STUDIES if failed else 0
    store = wiring.object_store(settings)
    try:
        ledgers = pending_ledgers(store, settings.results_bucket)
    finally:
        wiring.close_all(store)
    for ledger in ledgers:
        for n in ledger.notifications:
            for name, channel in n.channels.items():
                if channel.status in ("pending", "dead_letter"):
                    print(f"{ledger.study_id} {n.rule} {name}: {channel.status} ({channel.last_error or 'not sent yet'})")
    print(
        f"{len(ledgers)} stud{'y' if len(ledgers) == 1 else 'ies'} with undelivered notifications"
        + ("; `radstream notify --replay` sends them" if ledgers else "")
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.pacs:
        return cmd_demo_pacs(args)
    from synthetic.samples import write_demo_studies

    out = Path(args.out) if args.out else Path(args.data_dir) / "demo-studies"
    folders = write_demo_studies(out, 12 if args.count is None else args.count, invalid=not args.valid_only)
    if not args.quiet:
        Console(stderr=True).print(f"wrote {len(folders)} synthetic demo studies to {out} (phantoms, not patient data)")
    report = run_studies(folders, args, root=out)
    if args.valid_only or report.interrupted:
        return exit_code(report)
    # The demo includes studies broken on purpose (bad-*): it succeeds when exactly those fail, each with its record.
    wrong = [o.study_id for o in report.outcomes if (o.status == "succeeded") == o.study_id.startswith("bad-") or o.output is None]
    if wrong:
        print(f"demo: unexpected outcome for {', '.join(wrong)}", file=sys.stderr)
        return EXIT_FAILED_STUDIES
    print(
        "demo: every valid study has a result; every broken one (bad-*) has a failure record, as intended",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0


def cmd_demo_pacs(args: argparse.Namespace) -> int:
    """Orthanc as the hospital's PACS, the gateway in front of the pipeline: the demo DICOMs go in by storescu (C-STORE), each
    study's SR and overlay come back to Orthanc by C-STORE (DeliverResults), found there by QIDO-RS."""
    import shutil
    import subprocess

    import numpy as np
    import pydicom

    from radstream.orthanc import Orthanc, dicom_json_value
    from synthetic.phantoms import generate_phantom
    from radstream.runtime import LocalRuntime
    from synthetic.samples import write_dicom_study
    from services.gateway.domain import pseudonym_key, study_id_for
    from services.gateway.server import Gateway, LocalPipeline

    storescu = shutil.which("storescu")
    if not storescu:
        raise ConfigurationError("storescu (Debian package dcmtk) is not installed: `make dcmtk` installs it")
    settings = settings_from(args)
    out = Path(args.out) if args.out else settings.data_dir / "demo-pacs-studies"
    rng = np.random.default_rng(11)
    files = [
        write_dicom_study(out / f"pacs-{i + 1:03d}", generate_phantom(rng, size=512).image, patient_name=f"DEMO^PATIENT{i + 1}")
        / "study.dcm"
        for i in range(max(1, 3 if args.count is None else args.count))
    ]
    print(f"wrote {len(files)} synthetic DICOM studies to {out} (phantoms, not patient data)", flush=True)
    with Orthanc(settings.data_dir / "orthanc") as pacs:
        print(f"Orthanc (the PACS): AE {pacs.ae_title} on 127.0.0.1:{pacs.dimse_port}, web/DICOMweb {pacs.url}", flush=True)
        settings = settings.model_copy(
            update={
                "gateway_dimse_port": 0,
                "gateway_http_port": 0,
                "export_dicom_peer": pacs.peer,
                "gateway_pseudonym_key": settings.gateway_pseudonym_key or local_pseudonym_key(settings.data_dir),
            }
        )
        with LocalRuntime(settings, workers=args.workers) as runtime:
            pipeline = LocalPipeline(runtime, workers=args.workers)
            with Gateway(settings, store=runtime.store, on_stored=pipeline) as gateway:
                print(f"gateway: AE {gateway.ae_title} on 127.0.0.1:{gateway.dimse.port}; sending with storescu", flush=True)
                sent = subprocess.run(
                    [storescu, "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), *map(str, files)],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if sent.returncode != 0:
                    print(f"demo --pacs: storescu failed ({sent.returncode}): {sent.stderr[-1000:]}", file=sys.stderr)
                    return EXIT_FAILED_STUDIES
                deadline = time.monotonic() + 600
                while len(pipeline.futures) < len(files) and time.monotonic() < deadline:
                    time.sleep(0.1)
                outcomes = {
                    o.study_id: o for o in (f.result(timeout=max(1, deadline - time.monotonic())) for f in list(pipeline.futures.values()))
                }
                pipeline.close()
        results = settings.data_dir / settings.results_bucket / "results"
        key = pseudonym_key(settings.gateway_pseudonym_key)
        wrong = 0
        for file in files:
            header = pydicom.dcmread(file, stop_before_pixels=True)
            study_uid = header.StudyInstanceUID
            outcome = outcomes.get(study_id_for(key, study_uid, header.SOPInstanceUID)[0])
            if outcome is None:
                print(f"\n{file.parent.name}: not received by the gateway within 600 s", flush=True)
                wrong += 1
                continue
            _, series = pacs.qido_study(study_uid)
            found = {dicom_json_value(s, "00080060"): dicom_json_value(s, "0008103E") for s in series}
            print(
                f"\nstudy {outcome.study_id} ({file.parent.name}): {outcome.status}"
                + (f" ({outcome.message})" if outcome.message else "")
                + delivery_text(outcome)
            )
            print(f"  results:  {results / outcome.study_id}/  (result.json, report.sr.dcm, report.overlay.dcm, report.fhir.json)")
            print(f"  in Orthanc by QIDO-RS: {pacs.url}/dicom-web/studies?StudyInstanceUID={study_uid}")
            for modality, description in sorted(found.items()):
                print(f"    series {modality}: {description}")
            if outcome.status != "succeeded" or not {"SR", "OT"} <= set(found):
                wrong += 1
        if args.keep_running:
            print(f"\nOrthanc keeps running at {pacs.url} (its viewer: {pacs.url}/app/explorer.html); Ctrl-C stops", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
    if wrong:
        print(f"demo --pacs: {wrong} stud{'y' if wrong == 1 else 'ies'} without its SR and overlay in Orthanc", file=sys.stderr)
        return EXIT_FAILED_STUDIES
    print("\ndemo --pacs: every study's SR and overlay are in Orthanc, filed under the source's StudyInstanceUID")
    return 0


def cmd_serve_models(args: argparse.Namespace) -> int:
    from radstream.triton_server import serve_models

    return serve_models(
        Path(args.model_repository or DEFAULT_MODEL_REPOSITORY),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_config_name=args.model_config_name,
    )


def cmd_import_xrv(args: argparse.Namespace) -> int:
    from radstream.models_import import run_import

    return run_import(
        Path(args.weights),
        Path(args.model_repository or DEFAULT_MODEL_REPOSITORY),
        weights_name=args.weights_name,
        allow_pickle=args.allow_pickle,
    )


def cmd_trace(args: argparse.Namespace) -> int:
    from radstream.traces import latest_trace, waterfall

    document = latest_trace(require_data_dir(args.data_dir, "trace"), args.study_id)
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
    import secrets

    from shared.atomicfile import create_once, staging_dir

    path = data_dir / "gateway" / "pseudonym.key"
    if not path.exists():
        # Durable before first use (a key lost to a power cut would give the same patient's next study another id), and
        # the first writer's: a second gateway starting at the same moment reads the same key.
        create_once(path, secrets.token_hex(32).encode(), staging_dir(data_dir))
    key = path.read_text(errors="replace").strip()
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ConfigurationError(
            f"{path} does not hold a pseudonym key (64 hex digits): restore it from a backup, or set GATEWAY_PSEUDONYM_KEY"
        )
    return key


def with_destinations(settings: Settings, args: argparse.Namespace) -> Settings:
    """EXPORT_DICOM_PEER / EXPORT_STOW_URL / EXPORT_FHIR_URL, overridden by --dicom-peer / --stow-url / --fhir-url."""
    update = {
        name: value
        for name, value in (("export_dicom_peer", args.dicom_peer), ("export_stow_url", args.stow_url), ("export_fhir_url", args.fhir_url))
        if value
    }
    return settings.model_copy(update=update)


def delivery_text(outcome) -> str:
    """What DeliverResults did for a study, in a line: where the exports went, or the dead letter."""
    delivery = outcome.delivery or {}
    if delivery.get("dead_letter"):
        return f"; exports NOT delivered: dead letter {delivery['dead_letter']} (`radstream export --retry` replays it)"
    if delivery.get("destinations"):
        return f"; SR and overlay delivered to {', '.join(delivery['destinations'])}"
    return ""


def cmd_gateway(args: argparse.Namespace) -> int:
    """The DICOM gateway on free loopback ports (or --dimse-port/--http-port); each stored instance runs through the local pipeline."""
    import threading

    from radstream.runtime import LocalRuntime
    from services.gateway.server import Gateway, LocalPipeline, configure_logging

    settings = with_destinations(settings_from(args), args)
    settings = settings.model_copy(
        update={
            "gateway_dimse_port": args.dimse_port,
            "gateway_http_port": args.http_port,
            "gateway_pseudonym_key": settings.gateway_pseudonym_key or local_pseudonym_key(settings.data_dir),
        }
    )
    configure_logging()
    with LocalRuntime(settings, workers=args.workers) as runtime:
        runtime.warm()  # the first instance a modality sends is not the one that loads the export's libraries
        pipeline = LocalPipeline(runtime, workers=args.workers)
        # What an earlier gateway (or run) acknowledged and did not finish: planned before this one listens, so a new
        # instance is never mistaken for old work, then run beside what arrives.
        backlog = runtime.plan_resume()
        for warning in backlog.warnings:
            print(f"radstream: warning: {warning}", file=sys.stderr, flush=True)
        acknowledgements = runtime.acknowledgements()

        def show(outcome) -> None:
            print(
                f"study {outcome.study_id}: {outcome.status}"
                + (f" ({outcome.message})" if outcome.message else "")
                + delivery_text(outcome),
                flush=True,
            )

        def report(received):
            # Journalled (fsynced) before the callback returns, and so before the gateway answers Success.
            acknowledgements.acknowledged(received.key)
            pipeline(received)
            future = pipeline.futures[received.key]

            def done(f):
                outcome = f.result()
                acknowledgements.ended(outcome)
                show(outcome)

            future.add_done_callback(done)

        if backlog.entries:
            print(
                f"finishing {len(backlog.entries)} stud{'y' if len(backlog.entries) == 1 else 'ies'} an earlier run or gateway left unfinished",
                flush=True,
            )
            pipeline.pool.submit(runtime.resume, show, backlog)

        # SIGTERM stops it as cleanly as Ctrl-C: servers closed, studies finished.
        with sigterm_as_ctrl_c(), Gateway(settings, store=runtime.store, on_stored=report) as gateway:
            print(f"AE title: {gateway.ae_title}", flush=True)
            print(
                f"DIMSE:    {settings.gateway_host} port {gateway.dimse.port}  (e.g. storescu -aec {gateway.ae_title} {settings.gateway_host} {gateway.dimse.port} FILE.dcm)",
                flush=True,
            )
            print(f"STOW-RS:  {gateway.stow.url}", flush=True)
            print(f"results:  {settings.data_dir / settings.results_bucket / 'results'}; Ctrl-C stops", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
        pipeline.close()
        acknowledgements.close()
    return 0


def add_destination_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dicom-peer", help="send each DICOM study's SR and overlay by C-STORE to AE_TITLE@host:port (EXPORT_DICOM_PEER)")
    p.add_argument("--stow-url", help="send them by STOW-RS to this …/studies URL (EXPORT_STOW_URL)")
    p.add_argument("--fhir-url", help="POST each FHIR bundle to this URL, e.g. https://fhir.example/fhir/Bundle (EXPORT_FHIR_URL)")


def cmd_export(args: argparse.Namespace) -> int:
    """The dead letters in the results bucket; with --retry, each replayed: a failed build built again, then (as a failed
    delivery) sent to the destinations configured now."""
    from services.export.deliver import DeadLetter, dead_letters, replay_dead_letters
    from shared import wiring

    # The environment's backend: local folders by default; RADSTREAM_BACKEND=aws with RESULTS_BUCKET replays a stack's letters.
    base = Settings.from_env()
    if base.backend == "local":
        require_data_dir(args.data_dir, "export")
    settings = with_destinations(base.model_copy(update={"data_dir": Path(args.data_dir)}) if base.backend == "local" else base, args)
    store = wiring.object_store(settings)
    try:
        keys = dead_letters(store, settings.results_bucket)
        if not args.retry:
            for key in keys:
                letter = DeadLetter.model_validate_json(store.get_bytes(settings.results_bucket, key))
                what = "not built" if letter.kind == "build" else "not delivered"
                print(f"{key}: {letter.error_type}: {letter.message} ({what}; failed {letter.failed_at:%Y-%m-%d %H:%M:%S} UTC)")
            print(f"{len(keys)} dead letter(s)" + ("; `radstream export --retry` builds and sends them again" if keys else ""))
            return 0
        delivered = failed = 0
        for i, replayed in enumerate(replay_dead_letters(store, settings), start=1):
            if replayed.error is None:
                delivered += 1
                done = [
                    *(["exports built"] if replayed.rebuilt else []),
                    *([f"delivered to {', '.join(replayed.delivered)}"] if replayed.delivered else []),
                ]
                print(
                    f"[{i}/{len(keys)}] {replayed.study_id}: {' and '.join(done) or 'nothing to send'}; {replayed.key} removed", flush=True
                )
            else:
                failed += 1
                print(
                    f"[{i}/{len(keys)}] {replayed.study_id}: still failing: {replayed.error.error_name}: {replayed.error.message}",
                    flush=True,
                )
        print(f"replayed {delivered + failed} dead letter(s): {delivered} delivered, {failed} still failing")
        return EXIT_FAILED_STUDIES if failed else 0
    finally:
        wiring.close_all(store)


def add_run_options(p: argparse.ArgumentParser) -> None:
    add_data_dir(p)
    p.add_argument(
        "--triton-url", help="serve models from Triton (http://host:8000 or grpc://host:8001) instead of in-process ONNX Runtime"
    )
    p.add_argument("--model-repository", help="Triton model repository (default: services/triton/model_repository)")
    p.add_argument("--workers", type=positive_int, default=2, help="studies run at once (default 2)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="radstream", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study folder, or a folder of study folders, through the pipeline")
    run.add_argument("path")
    add_run_options(run)
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser(
        "resume",
        help="finish what earlier runs left: studies never run, cut short or failed transiently (after a crash, Ctrl-C or an outage)",
    )
    add_run_options(resume)
    resume.set_defaults(func=cmd_resume)

    demo = sub.add_parser("demo", help="generate synthetic demo studies (some broken on purpose) and run them")
    demo.add_argument("--count", type=non_negative_int, default=None, help="valid studies to generate (default 12; with --pacs 3)")
    demo.add_argument("--out", help="where to write the studies (default: DATA_DIR/demo-studies)")
    demo.add_argument("--valid-only", action="store_true", help="skip the broken-on-purpose studies")
    demo.add_argument(
        "--pacs",
        action="store_true",
        help="start Orthanc (`make orthanc`) and the gateway, send DICOM demo studies with storescu, "
        "and show where their SRs and overlays landed in Orthanc (QIDO-RS)",
    )
    demo.add_argument("--keep-running", action="store_true", help="with --pacs: keep Orthanc running to browse it, until Ctrl-C")
    add_run_options(demo)
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve-models", help="start a local Triton server on the model repository")
    serve.add_argument("--model-repository")
    serve.add_argument("--http-port", type=port, default=8000)
    serve.add_argument("--grpc-port", type=port, default=8001)
    serve.add_argument("--metrics-port", type=port, default=8002)
    serve.add_argument(
        "--model-config-name",
        metavar="NAME",
        help="serve each model's configs/NAME.pbtxt where it has one (gpu: KIND_GPU, CUDA/TensorRT; "
        "needs a GPU and onnxruntime-gpu), as tritonserver --model-config-name does on EKS",
    )
    serve.set_defaults(func=cmd_serve_models)

    models = sub.add_parser("models", help="manage the model repository")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    from radstream.model_lifecycle import add_parsers as add_lifecycle_parsers

    add_lifecycle_parsers(models_sub)
    xrv = models_sub.add_parser("import-torchxrayvision", help="put a torchxrayvision DenseNet (weights on disk) into the classifier slot")
    from radstream.models_import import add_arguments as add_import_arguments

    add_import_arguments(xrv)
    xrv.set_defaults(func=cmd_import_xrv)

    demo_models = sub.add_parser(
        "demo-models", help="model lifecycle demo: import a second classifier, run it in shadow, load feedback, compare"
    )
    add_data_dir(demo_models)
    demo_models.add_argument("--count", type=positive_int, default=8, help="phantom studies (default 8)")
    demo_models.add_argument("--json", action="store_true", help="print JSON")
    from radstream.demo_models import cmd_demo_models

    demo_models.set_defaults(func=cmd_demo_models)

    trace = sub.add_parser("trace", help="show the trace of a study's latest run (an X-Ray segment document)")
    trace.add_argument("study_id")
    add_data_dir(trace)
    trace.add_argument("--json", action="store_true", help="print the segment document")
    trace.set_defaults(func=cmd_trace)

    gateway = sub.add_parser(
        "gateway", help="start the DICOM gateway (C-ECHO/C-STORE SCP, STOW-RS) and run what it receives through the local pipeline"
    )
    gateway.add_argument("--dimse-port", type=port, default=0, help="DIMSE port (default: a free one)")
    gateway.add_argument("--http-port", type=port, default=0, help="STOW-RS port (default: a free one)")
    add_destination_options(gateway)
    add_run_options(gateway)
    gateway.set_defaults(func=cmd_gateway)

    export = sub.add_parser("export", help="list the dead letters of deliveries that kept failing; --retry sends them again")
    export.add_argument(
        "--retry", action="store_true", help="send each dead letter's SR, overlay and FHIR bundle again; a delivered one is removed"
    )
    export.add_argument(
        "--data-dir",
        default="radstream-data",
        help="folder holding the local buckets (default: ./radstream-data; "
        "RADSTREAM_BACKEND=aws and RESULTS_BUCKET: the stack's results bucket)",
    )
    add_destination_options(export)
    export.set_defaults(func=cmd_export, triton_url=None, model_repository=None)

    notify = sub.add_parser(
        "notify", help="critical-finding notifications: list undelivered ones; --replay sends them; --ack records who saw one"
    )
    notify.add_argument("--replay", action="store_true", help="send every pending or dead-lettered notification again (NOTIFY_MLLP_PEER)")
    notify.add_argument("--ack", nargs=2, metavar=("STUDY_ID", "RULE"), help="acknowledge a study's notification (recorded, never deleted)")
    notify.add_argument("--by", help="who acknowledges (with --ack)")
    add_data_dir(notify)
    notify.set_defaults(func=cmd_notify, triton_url=None, model_repository=None)

    add_query_parser(sub)
    add_lake_parser(sub)
    add_console_parsers(sub)
    return root


def own_usage(root: argparse.ArgumentParser) -> None:
    """Each subcommand's parser remembers itself (`_parser`), so a bad flag shows that subcommand's usage, not the top's."""
    stack = [root]
    while stack:
        current = stack.pop()
        current.set_defaults(_parser=current)
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())


def describe_os_error(e: OSError) -> str:
    """An environment fault in one line: what was refused, where, and what to do; no traceback."""
    import errno
    import os

    name = errno.errorcode.get(e.errno or 0, type(e).__name__)
    where = f" {e.filename}" if e.filename else ""
    advice = {
        errno.ENOSPC: "the disk is full: free space",
        errno.EDQUOT: "the disk quota is spent: free space",
        errno.EROFS: "the disk is read-only: choose a writable --data-dir",
        errno.EACCES: "permission denied: choose a --data-dir you can write",
        errno.EPERM: "not permitted: choose a --data-dir you can write",
        errno.ENOTDIR: "a path in --data-dir is a file, not a folder",
        errno.EIO: "the disk failed to read or write",
    }.get(e.errno or 0, "the system refused")
    return f"{advice} ({name}: {os.strerror(e.errno) if e.errno else e}){where}"


def keep_stdout_for_output() -> None:
    """The local telemetry sink warns from its own timer thread, where no study's log file is in force, and the lake
    names the objects it quarantines: the operator's warnings (stderr), never mixed into the table or the one JSON
    document on stdout."""
    import logging

    record_attributes = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    class Stderr(logging.StreamHandler):
        @property
        def stream(self):  # whatever sys.stderr is at the time of the line
            return sys.stderr

        @stream.setter
        def stream(self, value) -> None:
            pass

    class Fields(logging.Formatter):
        """The message, then the line's fields (`extra={...}`) as key=value."""

        def format(self, record: logging.LogRecord) -> str:
            fields = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in record_attributes)
            return f"{super().format(record)} {fields}".rstrip()

    for name in ("radstream.telemetry", "radstream.lake"):
        own = logging.getLogger(name)
        if own.propagate:
            own.propagate = False
            handler = Stderr()
            handler.setFormatter(Fields())
            own.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    keep_stdout_for_output()
    root = parser()
    own_usage(root)
    args, extra = root.parse_known_args(argv)
    if extra:
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    resumable = hasattr(args, "workers") and args.func in (cmd_run, cmd_resume, cmd_demo)
    hint = f"; then `{resume_command(args)}` finishes what was not run" if resumable else ""
    try:
        return args.func(args)
    except StorageUnavailable as e:  # a full, read-only or failing disk under the data dir: the environment, not a study
        print(f"radstream: {e}{hint}", file=sys.stderr)
        return EXIT_USAGE
    except RadStreamError as e:
        print(f"radstream: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C while in-flight studies were finishing: those stay unfinished in the journal
        print(
            f"radstream: interrupted; `{resume_command(args)}` finishes what was not run" if resumable else "radstream: interrupted",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        stdout_closed()
        print("radstream: stdout closed before the output was all printed", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"radstream: {describe_os_error(e)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
