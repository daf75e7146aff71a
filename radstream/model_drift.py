"""`radstream models drift [--alarm]`: the model_drift named query over the local lake (DuckDB), each feature's PSI, and
the template's ModelDriftAlarm evaluated on them, as the daily drift check (services/telemetry/drift.py) and CloudWatch
do in AWS. The same EMF documents (ModelDriftPSI) go to the local metrics capture the console reads."""

from __future__ import annotations

import argparse
import json
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radstream.cli_args import add_data_dir
from shared.errors import ConfigurationError

ALARM = "ModelDriftAlarm"
METRIC = "ModelDriftPSI"
EXIT_ALARM = 1
_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanOrEqualToThreshold": operator.ge,
    "GreaterThanThreshold": operator.gt,
}


@dataclass(frozen=True)
class DriftAlarm:
    """ModelDriftAlarm as template.yaml defines it: its threshold and comparison, read, never copied."""

    threshold: float
    comparison: str

    def fires(self, psi: float | None) -> bool:
        return psi is not None and _COMPARISONS[self.comparison](float(psi), self.threshold)

    @property
    def symbol(self) -> str:
        return ">=" if self.comparison == "GreaterThanOrEqualToThreshold" else ">"


def drift_alarm(template_path: Path | None = None) -> DriftAlarm:
    from radstream.template import DEFAULT_TEMPLATE, Template

    template = Template(template_path or DEFAULT_TEMPLATE)
    props = template.resources.get(ALARM, {}).get("Properties", {})
    if props.get("MetricName") != METRIC or props.get("Statistic") != "Maximum" or props.get("ComparisonOperator") not in _COMPARISONS:
        raise ConfigurationError(f"{template.path}: {ALARM} must watch the Maximum of {METRIC} with a greater-than comparison")
    return DriftAlarm(float(props["Threshold"]), str(props["ComparisonOperator"]))


def evaluate(data_dir: Path, days: int = 1, baseline_days: int = 28) -> tuple[list[dict[str, Any]], DriftAlarm]:
    """model_drift's rows over the local lake, each with `alarm` (the template's alarm fires on its PSI)."""
    from radstream.analytics import DuckDBQueryRunner
    from shared.settings import Settings

    alarm = drift_alarm()
    runner = DuckDBQueryRunner(Path(data_dir) / Settings().telemetry_bucket)
    try:
        rows = runner.run("model_drift", days=days, baseline_days=baseline_days).as_dicts()
    finally:
        runner.close()
    return [{**r, "alarm": alarm.fires(r["psi"])} for r in rows], alarm


def add_parser(models_sub: Any) -> None:
    drift = models_sub.add_parser(
        "drift", help="each live model feature's population stability index (model_drift), with ModelDriftAlarm evaluated on it"
    )
    add_data_dir(drift)
    drift.add_argument("--days", type=int, default=1, help="the recent window in days (default 1)")
    drift.add_argument("--baseline-days", type=int, default=28, help="the baseline window before it (default 28)")
    drift.add_argument("--alarm", action="store_true", help=f"exit {EXIT_ALARM} and print each alarm when a feature shifted")
    drift.add_argument("--json", action="store_true", help="print JSON")
    drift.set_defaults(func=cmd_drift)


def cmd_drift(args: argparse.Namespace) -> int:
    from shared.metrics import LocalEmfFile, drift_metrics

    try:
        rows, alarm = evaluate(Path(args.data_dir), args.days, args.baseline_days)
    except ConfigurationError as e:
        print(f"radstream: {e}", file=sys.stderr)
        return 2
    emf = LocalEmfFile(Path(args.data_dir))
    try:
        emf.write(drift_metrics(rows))
    finally:
        emf.close()
    firing = [r for r in rows if r["alarm"]]
    if args.json:
        print(json.dumps({"threshold": alarm.threshold, "comparison": alarm.comparison, "features": rows}, indent=2, default=str))
    elif not rows:
        print(f"no feature to compare: the lake holds no live model outputs in both windows ({args.days} + {args.baseline_days} days)")
    else:
        for r in rows:
            mark = "ALARM" if r["alarm"] else "ok"
            print(
                f"{mark:5} {r['model_name']}@{r['model_version']} {r['feature']}: PSI {r['psi']} ({r['level']}; "
                f"{r['recent_studies']} recent against {r['baseline_studies']} baseline studies)"
            )
    if args.alarm and firing:
        for r in firing:
            print(
                f"{ALARM}: {r['model_name']}@{r['model_version']} {r['feature']} PSI {r['psi']} {alarm.symbol} {alarm.threshold:g}",
                file=sys.stderr,
            )
        return EXIT_ALARM
    return 0
