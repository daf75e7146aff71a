"""The console's three pages, rendered by Jinja2 from ConsoleData; the live server and the static report share them.

Only the links differ: `ServerLinks` point at the server's routes, `StaticLinks` at the report's files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from radstream.console import charts
from radstream.console.data import ConsoleData, StudyDetail, StudyFilter
from shared.contracts import NOT_FOR_CLINICAL_USE, QUALITY_FLAGS

HERE = Path(__file__).resolve().parent
RANGES = (1, 7, 30, 90)  # days: the named queries' window parameter
DEFAULT_DAYS = 7
TABLE_ROWS = 100  # rows of a query shown under its chart; all of them are in its JSON
MAX_COLUMNS = 300  # time buckets in the throughput chart
# The Models page (docs/model-lifecycle.md): template.yaml's model-table queries; model_drift runs with its own window.
MODEL_QUERIES = (
    "model_agreement",
    "model_version_cost",
    "model_performance",
    "model_calibration",
    "box_acceptance",
    "daily_distributions",
)
DASHBOARD_QUERIES = (
    "throughput_per_minute",
    "latency_per_stage",
    "error_rate",
    "model_comparison",
    "cost_breakdown",
    "triage_latency_by_priority",
)


class ServerLinks:
    static = False
    css = "/static/console.css"

    def studies(self, **params: Any) -> str:
        query = urlencode({k: v for k, v in params.items() if v not in ("", None)})
        return "/studies" + ("?" + query if query else "")

    def study(self, study_id: str) -> str:
        return f"/study/{quote(study_id)}"

    def study_file(self, study_id: str, name: str) -> str:
        return f"/study/{quote(study_id)}/{name}"

    def dashboard(self, days: int) -> str:
        return f"/dashboard?days={days}"

    def worklist(self) -> str:
        return "/worklist"

    def acknowledge(self, study_id: str) -> str:
        return f"/study/{quote(study_id)}/acknowledge"

    def query_json(self, name: str, days: int) -> str:
        return f"/query/{name}.json?days={days}"

    def models(self, days: int) -> str:
        return f"/models?days={days}"


@dataclass
class StaticLinks:
    """Relative links between the report's files: index.html, studies-N.html, dashboard-Nd.html at the top,
    study/<id>.html and study/<id>/<file> below it. `up` is "../" on a study page."""

    up: str = ""
    static = True

    @property
    def css(self) -> str:
        return f"{self.up}console.css"

    def studies(self, page: int = 1, **_: Any) -> str:
        return f"{self.up}index.html" if page == 1 else f"{self.up}studies-{page}.html"

    def study(self, study_id: str) -> str:
        return f"{self.up}study/{quote(study_id)}.html"

    def study_file(self, study_id: str, name: str) -> str:
        return f"{self.up}study/{quote(study_id)}/{name}"

    def dashboard(self, days: int) -> str:
        return f"{self.up}dashboard-{days}d.html"

    def query_json(self, name: str, days: int) -> str:
        return f"{self.up}query/{name}-{days}d.json"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) < 1:
            return np.format_float_positional(value, trim="-")
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["raw_value"] = lambda v: json.dumps(v, default=str)
    env.globals["NOT_FOR_CLINICAL_USE"] = NOT_FOR_CLINICAL_USE
    env.globals["QUALITY_FLAGS"] = QUALITY_FLAGS
    return env


class Pages:
    def __init__(self, data: ConsoleData, feedback: bool = False) -> None:
        self.data = data
        self.env = environment()
        self.feedback = feedback  # the study page offers the radiologist's feedback form (radstream console --feedback)

    def _render(self, template: str, links: Any, **context: Any) -> str:
        feedback = self.feedback and not getattr(links, "static", False)
        return self.env.get_template(template).render(links=links, mode=self.data.mode, ranges=RANGES, feedback=feedback, **context)

    def _ranged(self, template: str, links: Any, days: int, results: dict[str, Any], figures: dict[str, Any], **context: Any) -> str:
        """A page of named queries over `days` (templates/_ranged.html): each query's rows and description under its chart."""
        descriptions = {name: self.data.queries.description(name) for name in results}
        return self._render(
            template, links, days=days, results=results, descriptions=descriptions, figures=figures, table_rows=TABLE_ROWS, **context
        )

    def studies(self, links: Any, flt: StudyFilter, page: int = 1, per_page: int = 50) -> str:
        result = self.data.studies(flt, page, per_page)
        return self._render("studies.html", links, page=result, flt=flt)

    def study(self, links: Any, study_id: str) -> str:
        detail = self.data.study(study_id)
        return self._render(
            "study.html",
            links,
            s=detail,
            doc=detail.document,
            boxes=boxes(detail),
            timeline=charts.timeline(detail.trace) if detail.trace else None,
        )

    def worklist(self, links: Any) -> str:
        return self._render("worklist.html", links, rows=self.data.worklist())

    def dashboard(self, links: Any, days: int = DEFAULT_DAYS) -> str:
        results = {name: self.data.query(name, days=days) for name in DASHBOARD_QUERIES}
        throughput = results["throughput_per_minute"].as_dicts()
        latency = results["latency_per_stage"].as_dicts()
        errors = [r for r in results["error_rate"].as_dicts() if r["error_type"]]
        models = results["model_comparison"].as_dicts()
        cost = results["cost_breakdown"].as_dicts()
        per_study = [r for r in cost if r["basis"] == "per study"]
        per_1000 = (
            sum(r["usd_per_1000_studies"] or 0 for r in per_study)
            if any(r["usd_per_1000_studies"] is not None for r in per_study)
            else None
        )
        bucket, labels, succeeded, failed = per_bucket(throughput)
        figures = {
            "throughput": charts.columns(
                f"studies finished per {bucket} minute{'s' if bucket > 1 else ''} (UTC)",
                labels,
                [("succeeded", succeeded), ("failed", failed)],
            ),
            "latency": charts.hbars(
                "latency per stage (ms)",
                [r["stage"] + (f" · {r['model_name']}" if r["model_name"] else "") for r in latency],
                [("p50", [r["p50_ms"] for r in latency]), ("p95", [r["p95_ms"] for r in latency])],
                " ms",
            ),
            "errors": charts.hbars(
                "error rate by stage and type",
                [f"{r['stage']} · {r['error_type']}" for r in errors],
                [("error rate %", [100 * r["error_rate"] for r in errors])],
                " %",
            ),
            "models": charts.hbars(
                "model latency (ms)",
                [f"{r['model_name']} v{r['model_version']}" for r in models],
                [("p50", [r["p50_ms"] for r in models]), ("p95", [r["p95_ms"] for r in models])],
                " ms",
            ),
            "cost": charts.hbars(
                "USD per 1,000 studies by item",
                [f"{r['service']} · {r['item']}" for r in per_study],
                [("USD / 1,000 studies", [r["usd_per_1000_studies"] for r in per_study])],
            ),
        }
        totals = {
            "studies": sum(r["studies"] for r in throughput),
            "succeeded": sum(r["succeeded"] for r in throughput),
            "failed": sum(r["failed"] for r in throughput),
            "usd_per_1000": per_1000,
            "usd_per_day_standing": sum(r["usd"] or 0 for r in cost if r["basis"] == "per day"),
            "prices_as_of": sorted({r["as_of"] for r in cost}),
        }
        return self._ranged("dashboard.html", links, days, results, figures, totals=totals, metrics=self.data.metrics(days), bucket=bucket)

    def models(self, links: Any, days: int = 30) -> str:
        """Model versions over their life: shadow agreement, latency and cost, radiologists' feedback, drift."""
        results = {name: self.data.query(name, days=days) for name in MODEL_QUERIES}
        results["model_drift"] = self.data.query("model_drift", days=1, baseline_days=max(days - 1, 1))
        drift = results["model_drift"].as_dicts()
        agreement = [r for r in results["model_agreement"].as_dicts() if r["kappa"] is not None]
        figures = {
            "agreement": charts.hbars(
                "live against shadow, per label (Cohen's kappa)",
                [f"{r['model_name']} v{r['live_version']}/v{r['shadow_version']} · {r['label']}" for r in agreement],
                [("kappa", [r["kappa"] for r in agreement])],
            ),
            "drift": charts.hbars(
                "population stability index, last day against the days before",
                [f"{r['model_name']} v{r['model_version']} · {r['feature']}" for r in drift],
                [("PSI", [r["psi"] for r in drift])],
            ),
        }
        return self._ranged("models.html", links, days, results, figures, shifted=[r for r in drift if r["level"] == "shifted"])

    def query_json(self, name: str, days: int) -> str:
        if name not in DASHBOARD_QUERIES and name not in MODEL_QUERIES:
            from shared.errors import ObjectNotFound

            raise ObjectNotFound(f"the dashboard has no query {name}")
        result = self.data.query(name, days=days)
        return json.dumps(
            {"query": name, "parameters": {"days": days}, "columns": result.columns, "rows": result.as_dicts()}, default=str, indent=1
        )


def per_bucket(throughput: list[dict[str, Any]]) -> tuple[int, list[str], list[float], list[float]]:
    """throughput_per_minute's rows (only minutes with studies) on a time axis of at most MAX_COLUMNS buckets."""
    from datetime import datetime

    if not throughput:
        return 1, [], [], []
    minutes = [datetime.strptime(r["minute_utc"], "%Y-%m-%d %H:%M") for r in throughput]
    first = minutes[0]
    span = int((minutes[-1] - first).total_seconds() // 60) + 1
    bucket = max(1, -(-span // MAX_COLUMNS))
    count = -(-span // bucket)
    succeeded, failed = [0.0] * count, [0.0] * count
    for minute, row in zip(minutes, throughput):
        i = int((minute - first).total_seconds() // 60) // bucket
        succeeded[i] += row["succeeded"]
        failed[i] += row["failed"]
    from datetime import timedelta

    labels = [(first + timedelta(minutes=i * bucket)).strftime("%Y-%m-%d %H:%M") for i in range(count)]
    return bucket, labels, succeeded, failed


def boxes(detail: StudyDetail) -> list[dict[str, Any]]:
    """The detector's boxes in original pixels (x, y, width, height), as the SVG draws them."""
    out = []
    for i, d in enumerate(detail.document.get("detections", [])):
        x1, y1, x2, y2 = d["box"]
        out.append({"i": i, "label": d["label"], "score": d["score"], "x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1})
    return out
