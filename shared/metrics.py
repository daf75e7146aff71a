"""CloudWatch custom metrics as Embedded Metric Format (EMF) lines, the documents Powertools serialises, and their local capture.

In Lambda an EMF line written to stdout reaches CloudWatch through the function's log stream, and
CloudWatch turns it into metrics; nothing calls the CloudWatch API. Locally the same lines are appended
to `<data dir>/metrics/emf-YYYY-MM-DD.jsonl` (UTC day), which the console reads with `EmfLog`.

Namespace `RadStream`. Every metric carries the `service` dimension (POWERTOOLS_SERVICE_NAME, "radstream");
the other dimensions are few and low-cardinality (never a study id: ids go in as EMF metadata, which
CloudWatch keeps in the log line but does not turn into dimensions):

| metric | unit | dimensions | when |
|---|---|---|---|
| `StageDuration` | Milliseconds | service, stage | every stage invocation, succeeded or failed |
| `StageSucceeded`, `StageFailed` | Count | service, stage | every stage invocation (one of them is 1) |
| `StageBytesIn`, `StageBytesOut` | Bytes | service, stage | every stage invocation |
| `StageErrors` | Count | service, stage, error_type | a failed stage invocation |
| `StudiesSucceeded`, `StudiesFailed` | Count | service | the stage that ends a study (store's result, or the failure record) |
| `PositiveFindings` | Count | service, label | each finding above its threshold in a stored result |
| `Detections` | Count | service, label | each box in a stored result |
| `ModelLatency` | Milliseconds | service, model, model_version | each inference |
| `InputExposure` | None | service | each prepared study: the picture's mean intensity, 0..1 (input drift; docs/model-lifecycle.md) |
| `ModelDriftPSI` | None | service; and service, model, model_version, feature | each feature of the scheduled drift check (model_drift's population stability index) |

Why one document per dimension set, and not Powertools' module-wide `Metrics`: `Metrics` keeps one metric set in
class attributes shared by every instance in the process, so two studies running at once in the local runtime's
threads would mix their dimensions; and one EMF document has one dimension set for all its metrics, so metrics
with different dimensions need separate documents anyway. Each document is built directly as the dict Powertools'
`EphemeralMetrics` serialises (`powertools_document`, held equal by tests/metrics): building a metric set per
call through Powertools cost a tenth of the embedded pipeline's overhead per study (benchmarks/limit_bench.py).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import IO, Any, Protocol

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "RadStream"
SERVICE = "radstream"
METRICS_FOLDER = "metrics"  # under the data dir


@dataclass(frozen=True)
class ModelLatency:
    name: str
    version: str
    duration_ms: float


def _document(
    dimensions: Mapping[str, str], values: Iterable[tuple[str, MetricUnit, float]], metadata: Mapping[str, str], service: str
) -> dict[str, Any]:
    """One EMF document: the very dict Powertools' EphemeralMetrics serialises for these dimensions, metadata and
    values (tests/metrics holds the two equal), built directly: Powertools' per-call metric set, validation and
    serialisation cost ~0.19 ms a stage, a tenth of a study's whole pipeline overhead, for names and units that
    are constants of this module. `powertools_document` is the reference."""
    metrics = list(values)
    return {
        "_aws": {
            "Timestamp": int(datetime.now().timestamp() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [[*dimensions, "service"]],
                    "Metrics": [{"Name": name, "Unit": str(getattr(unit, "value", unit))} for name, unit, _ in metrics],
                }
            ],
        },
        **dimensions,
        "service": service,
        **metadata,
        **{name: [float(value)] for name, _, value in metrics},
    }


def powertools_document(
    dimensions: Mapping[str, str], values: Iterable[tuple[str, MetricUnit, float]], metadata: Mapping[str, str], service: str
) -> dict[str, Any]:
    """The same document through Powertools (the reference `_document` is held to)."""
    metrics = EphemeralMetrics(namespace=NAMESPACE, service=service)
    for name, dimension in dimensions.items():
        metrics.add_dimension(name=name, value=dimension)
    for key, text in metadata.items():
        metrics.add_metadata(key=key, value=text)
    for name, unit, value in values:
        metrics.add_metric(name=name, unit=unit, value=value)
    return dict(metrics.serialize_metric_set())


def stage_metrics(
    *,
    stage: str,
    status: str,
    duration_ms: float,
    bytes_in: int = 0,
    bytes_out: int = 0,
    error_type: str | None = None,
    findings: Sequence[Mapping[str, Any]] = (),
    detections: Sequence[Mapping[str, Any]] = (),
    models: Sequence[ModelLatency] = (),
    study_status: str | None = None,
    study_id: str | None = None,
    execution_id: str | None = None,
    service: str | None = None,
    exposure: float | None = None,
) -> list[dict[str, Any]]:
    """The EMF documents for one stage invocation, one per dimension set (see the module's table).

    `findings` and `detections` are a stored result's (dicts with `label`, and `positive` for findings);
    `models` the inferences this invocation ran; `study_status` ("succeeded"/"failed") only from the stage
    that ends the study. `study_id`/`execution_id` go in as metadata, not dimensions.
    """
    if status not in ("succeeded", "failed"):
        raise ValueError(f"stage status must be succeeded or failed, got {status!r}")
    if study_status not in (None, "succeeded", "failed"):
        raise ValueError(f"study status must be succeeded or failed, got {study_status!r}")
    service = service or os.environ.get("POWERTOOLS_SERVICE_NAME") or SERVICE
    metadata = {k: v for k, v in (("study_id", study_id), ("execution_id", execution_id)) if v}
    documents = [
        _document(
            {"stage": stage},
            [
                ("StageDuration", MetricUnit.Milliseconds, duration_ms),
                ("StageSucceeded", MetricUnit.Count, 1 if status == "succeeded" else 0),
                ("StageFailed", MetricUnit.Count, 1 if status == "failed" else 0),
                ("StageBytesIn", MetricUnit.Bytes, bytes_in),
                ("StageBytesOut", MetricUnit.Bytes, bytes_out),
            ],
            metadata,
            service,
        )
    ]
    if status == "failed":
        documents.append(
            _document({"stage": stage, "error_type": error_type or "Unknown"}, [("StageErrors", MetricUnit.Count, 1)], metadata, service)
        )
    if study_status:
        documents.append(
            _document(
                {},
                [
                    ("StudiesSucceeded", MetricUnit.Count, 1 if study_status == "succeeded" else 0),
                    ("StudiesFailed", MetricUnit.Count, 1 if study_status == "failed" else 0),
                ],
                metadata,
                service,
            )
        )
    positives: dict[str, int] = {}
    for finding in findings:
        if finding.get("positive"):
            positives[str(finding["label"])] = positives.get(str(finding["label"]), 0) + 1
    for label, count in sorted(positives.items()):
        documents.append(_document({"label": label}, [("PositiveFindings", MetricUnit.Count, count)], metadata, service))
    boxes: dict[str, int] = {}
    for detection in detections:
        boxes[str(detection["label"])] = boxes.get(str(detection["label"]), 0) + 1
    for label, count in sorted(boxes.items()):
        documents.append(_document({"label": label}, [("Detections", MetricUnit.Count, count)], metadata, service))
    if exposure is not None:
        documents.append(_document({}, [("InputExposure", MetricUnit.NoUnit, exposure)], metadata, service))
    for model in models:
        documents.append(
            _document(
                {"model": model.name, "model_version": model.version},
                [("ModelLatency", MetricUnit.Milliseconds, model.duration_ms)],
                metadata,
                service,
            )
        )
    return documents


def drift_metrics(rows: Iterable[Mapping[str, Any]], service: str | None = None) -> list[dict[str, Any]]:
    """EMF documents for model_drift's rows (model_name, model_version, feature, psi): each PSI under the feature's own
    dimensions (which feature moved) and under `service` alone, where ModelDriftAlarm reads their Maximum (one alarm
    for every feature: exposure, size, bit depth, modality, view, scanner and each label's output)."""
    service = service or os.environ.get("POWERTOOLS_SERVICE_NAME") or SERVICE
    documents = []
    for row in rows:
        if row.get("psi") is None:
            continue
        value = [("ModelDriftPSI", MetricUnit.NoUnit, float(row["psi"]))]
        dimensions = {"model": str(row["model_name"]), "model_version": str(row["model_version"]), "feature": str(row["feature"])}
        documents.append(_document(dimensions, value, {}, service))
        documents.append(_document({}, value, {"feature": str(row["feature"])}, service))
    return documents


def emf_line(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":")) + "\n"


class EmfWriter(Protocol):
    def write(self, documents: Iterable[Mapping[str, Any]]) -> None: ...


class StdoutEmf:
    """Lambda: the log stream (whatever sys.stdout is at the time), where CloudWatch extracts the metrics."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def write(self, documents: Iterable[Mapping[str, Any]]) -> None:
        out = self.stream or sys.stdout
        out.write("".join(emf_line(d) for d in documents))
        out.flush()


class LocalEmfFile:
    """The embedded mode: EMF lines appended to `<data dir>/metrics/emf-YYYY-MM-DD.jsonl` (UTC day of writing).

    One write per stage invocation, under a lock and with O_APPEND, so lines from threads never interleave. The
    day's file stays open between writes (a stage's lines cost one write, not an open, a write and a close);
    a new UTC day opens the next file. `close` when done (the local runtime does).
    """

    def __init__(self, data_dir: Path) -> None:
        self.folder = Path(data_dir) / METRICS_FOLDER
        self._lock = threading.Lock()
        self._open: tuple[Path, int] | None = None

    def path(self, now: datetime | None = None) -> Path:
        return self.folder / f"emf-{(now or datetime.now(UTC)):%Y-%m-%d}.jsonl"

    def write(self, documents: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(emf_line(d) for d in documents)
        if not text:
            return
        day = time.strftime("%Y-%m-%d", time.gmtime())  # the file's UTC day, without building a Path per write
        with self._lock:
            name = f"emf-{day}.jsonl"
            if self._open is None or self._open[0].name != name:
                path = self.folder / name
                self._close()
                self.folder.mkdir(parents=True, exist_ok=True)
                self._open = (path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
            os.write(self._open[1], text.encode())

    def _close(self) -> None:
        if self._open is not None:
            os.close(self._open[1])
            self._open = None

    def close(self) -> None:
        with self._lock:
            self._close()


# --- reading captured EMF (the console's dashboard) ---


@dataclass(frozen=True)
class MetricPoint:
    """One metric value of one EMF document, under one of its dimension sets."""

    namespace: str
    name: str
    unit: str
    dimensions: tuple[tuple[str, str], ...]
    timestamp_ms: int
    values: tuple[float, ...]


def parse_emf(document: Mapping[str, Any]) -> list[MetricPoint]:
    """The metrics an EMF document defines, as CloudWatch would extract them (one point per dimension set)."""
    aws = document.get("_aws")
    if not isinstance(aws, Mapping):
        raise ValueError("not an EMF document: no _aws member")
    timestamp = int(aws.get("Timestamp", 0))
    points = []
    for directive in aws.get("CloudWatchMetrics", []):
        namespace = directive["Namespace"]
        for definition in directive.get("Metrics", []):
            raw = document.get(definition["Name"])
            if raw is None:
                continue
            values = tuple(float(v) for v in (raw if isinstance(raw, list) else [raw]))
            for dimension_set in directive.get("Dimensions", []) or [[]]:
                dims = tuple((d, str(document.get(d, ""))) for d in dimension_set)
                points.append(MetricPoint(namespace, definition["Name"], definition.get("Unit", "None"), dims, timestamp, values))
    return points


@dataclass
class Aggregate:
    count: int = 0
    total: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")

    def add(self, values: Iterable[float]) -> None:
        for v in values:
            self.count += 1
            self.total += v
            self.minimum = min(self.minimum, v)
            self.maximum = max(self.maximum, v)

    def merge(self, other: Aggregate) -> None:
        self.count += other.count
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    @property
    def average(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class MetricSummary:
    name: str
    unit: str
    dimensions: tuple[tuple[str, str], ...]
    samples: int
    total: float
    average: float | None
    minimum: float | None
    maximum: float | None


@dataclass
class EmfLog:
    """The captured EMF lines under `<data dir>/metrics/`, read incrementally (each file from where the last read stopped)
    and kept as per-hour aggregates, so a dashboard over weeks of lines costs a read of only the new ones.

    A line that is not an EMF document (a torn last line, something else in the file) is counted in `skipped`, not fatal.
    """

    data_dir: Path
    namespace: str = NAMESPACE
    skipped: int = 0
    _offsets: dict[Path, int] = field(default_factory=dict)
    _hours: dict[tuple[int, str, str, tuple[tuple[str, str], ...]], Aggregate] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def folder(self) -> Path:
        return Path(self.data_dir) / METRICS_FOLDER

    def refresh(self) -> None:
        with self._lock:
            for path in sorted(self.folder.glob("*.jsonl")):
                start = self._offsets.get(path, 0)
                with path.open("rb") as f:
                    f.seek(start)
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
                for line in chunk[:end].splitlines():
                    self._add(line)
                self._offsets[path] = start + end

    def _add(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            points = parse_emf(json.loads(line))
        except (ValueError, KeyError, TypeError):
            self.skipped += 1
            return
        for p in points:
            if p.namespace != self.namespace:
                continue
            key = (p.timestamp_ms // 3_600_000, p.name, p.unit, p.dimensions)
            self._hours.setdefault(key, Aggregate()).add(p.values)

    def summary(self, since: datetime | None = None) -> list[MetricSummary]:
        """Per metric and dimension set, over the hours from `since` (None: everything captured)."""
        self.refresh()
        first_hour = int(since.timestamp() // 3600) if since else None
        totals: dict[tuple[str, str, tuple[tuple[str, str], ...]], Aggregate] = {}
        with self._lock:
            for (hour, name, unit, dims), agg in self._hours.items():
                if first_hour is not None and hour < first_hour:
                    continue
                totals.setdefault((name, unit, dims), Aggregate()).merge(agg)
        return [
            MetricSummary(name, unit, dims, a.count, a.total, a.average, a.minimum if a.count else None, a.maximum if a.count else None)
            for (name, unit, dims), a in sorted(totals.items())
        ]
