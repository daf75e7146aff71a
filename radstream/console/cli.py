"""`radstream console` and `radstream report`: argument parsing and the wiring from settings to ConsoleData."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from radstream.cli_args import add_data_dir
from shared.errors import ConfigurationError


def add_console_parsers(subparsers: Any) -> None:
    console = subparsers.add_parser("console", help="serve the console (studies, a study viewer, dashboards) read-only on a loopback port")
    _source_options(console)
    console.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; a non-loopback address needs --allow-remote)"
    )
    console.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    console.add_argument(
        "--allow-remote", action="store_true", help="allow binding an address other than loopback (the console has no login)"
    )
    console.add_argument(
        "--feedback",
        action="store_true",
        help="accept radiologists' verdicts on study pages (recorded in the lake with reader id and time); otherwise read-only",
    )
    console.set_defaults(func=cmd_console)

    report = subparsers.add_parser("report", help="write the console's pages as static HTML, with a PNG overlay per study")
    _source_options(report)
    report.add_argument("--out", required=True, help="folder to write the report into")
    report.set_defaults(func=cmd_report)


def _source_options(p: argparse.ArgumentParser) -> None:
    add_data_dir(p)
    p.add_argument(
        "--backend",
        choices=["local", "aws"],
        help="local data dir, or a deployed stack's S3 + Athena (default: RADSTREAM_BACKEND, else local)",
    )
    p.add_argument("--workgroup", help="AWS: the Athena workgroup (radstream-<env>)")
    p.add_argument("--database", help="AWS: the Glue database (radstream_<env>)")


def console_data(args: argparse.Namespace):
    from radstream.console.data import aws_data, local_data
    from shared.settings import Settings

    settings = Settings.from_env()
    backend = args.backend or settings.backend
    if backend == "aws":
        if not (args.workgroup and args.database):
            raise ConfigurationError(
                "the AWS console needs --workgroup radstream-<env> and --database radstream_<env> (the stack's Athena workgroup and Glue database)"
            )
        return aws_data(settings.model_copy(update={"backend": "aws"}), workgroup=args.workgroup, database=args.database)
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise ConfigurationError(f"no data dir {data_dir} (run `radstream demo --data-dir {data_dir}` first, or pass --data-dir)")
    return local_data(data_dir, results_bucket=settings.results_bucket, telemetry_bucket=settings.telemetry_bucket)


def cmd_console(args: argparse.Namespace) -> int:
    from radstream.console.server import ConsoleServer, is_loopback

    if not is_loopback(args.host) and not args.allow_remote:
        raise ConfigurationError(
            f"--host {args.host} is not a loopback address; the console has no login, so pass --allow-remote to mean it"
        )
    data = console_data(args)
    data.warm()
    server = ConsoleServer(data, args.host, args.port, feedback=args.feedback)
    posture = "acknowledges notifications, accepts feedback" if args.feedback else "read-only but for acknowledging notifications"
    print(f"RadStream console: {server.url}  ({posture}; reference models, not for clinical use; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from radstream.console.report import write_report

    summary = write_report(console_data(args), Path(args.out))
    print(
        f"wrote {summary.pages} pages ({summary.studies} studies, {summary.images} PNG overlays) to {summary.out}; open {summary.out / 'index.html'}"
    )
    if summary.skipped:
        n = len(summary.skipped)
        print(
            f"radstream report: skipped {n} record{'s' if n > 1 else ''} that do{'es' if n == 1 else ''} not parse: {', '.join(summary.skipped)} "
            "(`radstream resume` moves them aside and runs those studies again)",
            file=sys.stderr,
        )
        return 1
    return 0
