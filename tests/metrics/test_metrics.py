"""EMF metrics: the documents shared.metrics builds with Powertools, their local capture, and the reader the console uses."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, UTC
from pathlib import Path

import pytest

from shared.metrics import NAMESPACE, EmfLog, LocalEmfFile, ModelLatency, StdoutEmf, parse_emf, stage_metrics

FINDINGS = [
    {"label": "Edema", "probability": 0.8, "threshold": 0.5, "positive": True},
    {"label": "Cardiomegaly", "probability": 0.1, "threshold": 0.4, "positive": False},
    {"label": "Pleural Effusion", "probability": 0.9, "threshold": 0.1, "positive": True},
]
DETECTIONS = [
    {"label": "nodule_mass", "score": 0.7, "box": [1, 2, 3, 4]},
    {"label": "nodule_mass", "score": 0.6, "box": [5, 6, 7, 8]},
    {"label": "focal_opacity", "score": 0.5, "box": [1, 1, 2, 2]},
]


def by_metric(documents: list[dict]) -> dict[str, list]:
    """metric name -> [(dimensions dict, values)] as CloudWatch would extract them."""
    out: dict[str, list] = {}
    for doc in documents:
        for p in parse_emf(doc):
            out.setdefault(p.name, []).append((dict(p.dimensions), p.values))
    return out


def test_a_stored_result_emits_stage_study_findings_and_detections() -> None:
    docs = stage_metrics(
        stage="store",
        status="succeeded",
        duration_ms=12.5,
        bytes_in=100,
        bytes_out=2048,
        findings=FINDINGS,
        detections=DETECTIONS,
        study_status="succeeded",
        study_id="study-7",
        execution_id="exec-7",
    )
    for doc in docs:
        directive = doc["_aws"]["CloudWatchMetrics"]
        assert len(directive) == 1 and directive[0]["Namespace"] == NAMESPACE == "RadStream"
        for dimension_set in directive[0]["Dimensions"]:
            assert "service" in dimension_set and "study_id" not in dimension_set and "execution_id" not in dimension_set
        assert doc["study_id"] == "study-7" and doc["service"] == "radstream"  # ids are metadata: in the log line, not dimensions
        json.dumps(doc)  # serialisable as one log line
    m = by_metric(docs)
    assert m["StageDuration"] == [({"stage": "store", "service": "radstream"}, (12.5,))]
    assert m["StageSucceeded"][0][1] == (1.0,) and m["StageFailed"][0][1] == (0.0,)
    assert m["StageBytesIn"][0][1] == (100.0,) and m["StageBytesOut"][0][1] == (2048.0,)
    assert m["StudiesSucceeded"] == [({"service": "radstream"}, (1.0,))] and m["StudiesFailed"][0][1] == (0.0,)
    assert sorted((d["label"], v) for d, v in m["PositiveFindings"]) == [("Edema", (1.0,)), ("Pleural Effusion", (1.0,))]
    assert sorted((d["label"], v) for d, v in m["Detections"]) == [("focal_opacity", (1.0,)), ("nodule_mass", (2.0,))]
    assert "StageErrors" not in m and "ModelLatency" not in m


def test_a_failed_stage_counts_its_error_type_and_the_failed_study() -> None:
    m = by_metric(stage_metrics(stage="prepare", status="failed", duration_ms=3.0, error_type="InvalidImage", study_status="failed"))
    assert m["StageFailed"] == [({"stage": "prepare", "service": "radstream"}, (1.0,))]
    assert m["StageErrors"] == [({"stage": "prepare", "error_type": "InvalidImage", "service": "radstream"}, (1.0,))]
    assert m["StudiesFailed"][0][1] == (1.0,) and m["StudiesSucceeded"][0][1] == (0.0,)


def test_inference_reports_latency_per_model_and_version() -> None:
    m = by_metric(
        stage_metrics(
            stage="inference",
            status="succeeded",
            duration_ms=40.0,
            models=[ModelLatency("chest_xray_classifier", "1", 4.5), ModelLatency("anomaly_detector", "2", 11.0)],
        )
    )
    assert sorted(m["ModelLatency"], key=lambda x: x[0]["model"]) == [
        ({"model": "anomaly_detector", "model_version": "2", "service": "radstream"}, (11.0,)),
        ({"model": "chest_xray_classifier", "model_version": "1", "service": "radstream"}, (4.5,)),
    ]


def test_bad_status_is_refused() -> None:
    with pytest.raises(ValueError, match="stage status"):
        stage_metrics(stage="store", status="ok", duration_ms=1)
    with pytest.raises(ValueError, match="study status"):
        stage_metrics(stage="store", status="succeeded", duration_ms=1, study_status="done")


def test_stdout_writer_prints_one_line_per_document(capsys: pytest.CaptureFixture[str]) -> None:
    StdoutEmf().write(stage_metrics(stage="validate", status="succeeded", duration_ms=2.0))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["StageDuration"] == [2.0]


def test_local_capture_from_threads_keeps_every_line_whole(tmp_path: Path) -> None:
    sink = LocalEmfFile(tmp_path)

    def work(i: int) -> None:
        for _ in range(50):
            sink.write(stage_metrics(stage="validate", status="succeeded", duration_ms=float(i), findings=FINDINGS))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = list((tmp_path / "metrics").glob("emf-*.jsonl"))
    assert [f.name for f in files] == [sink.path().name]
    lines = files[0].read_text().splitlines()
    assert len(lines) == 4 * 50 * 3  # the stage's document and one per positive label
    assert all(parse_emf(json.loads(line)) for line in lines)


def test_emf_log_reads_incrementally_and_summarises(tmp_path: Path) -> None:
    sink = LocalEmfFile(tmp_path)
    log = EmfLog(tmp_path)
    assert log.summary() == []
    for ms in (10.0, 20.0, 30.0):
        sink.write(stage_metrics(stage="prepare", status="succeeded", duration_ms=ms))
    summary = {(s.name, s.dimensions): s for s in log.summary()}
    duration = summary[("StageDuration", (("stage", "prepare"), ("service", "radstream")))]
    assert (duration.samples, duration.total, duration.average, duration.minimum, duration.maximum, duration.unit) == (
        3,
        60.0,
        20.0,
        10.0,
        30.0,
        "Milliseconds",
    )

    # A line still being written (no newline yet) waits; a line that is not EMF is skipped and counted.
    path = sink.path()
    with path.open("a") as f:
        f.write("not json\n")
        f.write(json.dumps(stage_metrics(stage="prepare", status="succeeded", duration_ms=40.0)[0])[:30])
    summary = {(s.name, s.dimensions): s for s in log.summary()}
    assert summary[("StageDuration", (("stage", "prepare"), ("service", "radstream")))].samples == 3 and log.skipped == 1
    path.write_text(path.read_text()[:-30])  # the writer's torn line replaced by a whole one
    sink.write(stage_metrics(stage="prepare", status="succeeded", duration_ms=40.0))
    log2 = EmfLog(tmp_path)
    assert {(s.name, s.dimensions): s for s in log2.summary()}[
        ("StageDuration", (("stage", "prepare"), ("service", "radstream")))
    ].samples == 4


def test_emf_log_window_excludes_older_hours(tmp_path: Path) -> None:
    old = stage_metrics(stage="validate", status="succeeded", duration_ms=5.0)[0]
    old["_aws"]["Timestamp"] = int((datetime.now(UTC) - timedelta(days=3)).timestamp() * 1000)
    new = stage_metrics(stage="validate", status="succeeded", duration_ms=7.0)[0]
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "emf-x.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n")
    log = EmfLog(tmp_path)
    everything = [s for s in log.summary() if s.name == "StageDuration"]
    last_day = [s for s in log.summary(since=datetime.now(UTC) - timedelta(days=1)) if s.name == "StageDuration"]
    assert everything[0].samples == 2 and last_day[0].samples == 1 and last_day[0].total == 7.0


def emitted() -> set[tuple[str, frozenset[str]]]:
    """(metric, dimension names) for every metric stage_metrics can emit."""
    docs = stage_metrics(
        stage="inference",
        status="failed",
        duration_ms=1,
        error_type="X",
        findings=FINDINGS,
        detections=DETECTIONS,
        models=[ModelLatency("m", "1", 1.0)],
        study_status="failed",
    )
    return {(p.name, frozenset(d for d, _ in p.dimensions)) for doc in docs for p in parse_emf(doc)}


def test_the_template_dashboard_and_alarm_use_metrics_the_handlers_emit() -> None:
    import re

    from radstream.template import Template

    resources = Template().resources
    body = re.sub(r"\$\{[^}]+\}", "0", resources["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"])
    used: set[tuple[str, frozenset[str]]] = set()
    for widget in json.loads(body)["widgets"]:
        previous: list = []
        for line in widget["properties"]["metrics"]:
            if isinstance(line[0], dict):  # a SEARCH expression: {Namespace,dim,...} MetricName="..."
                match = re.search(r"\{(\w+),([\w,]+)\} MetricName=\"(\w+)\"", line[0]["expression"])
                if match and match[1] == NAMESPACE:
                    used.add((match[3], frozenset(match[2].split(","))))
                continue
            fields = [f for f in line if not isinstance(f, dict)]
            if fields[0] == "...":
                fields = previous[: len(previous) - len(fields) + 1] + fields[1:]
            fields = [p if f == "." else f for f, p in zip(fields, previous + [None] * len(fields))] if "." in fields else fields
            previous = fields
            if fields[0] == NAMESPACE:
                used.add((fields[1], frozenset(fields[2::2])))
    alarm = resources["StageLatencyTargetAlarm"]["Properties"]
    for m in alarm["Metrics"]:
        if "MetricStat" in m:
            metric = m["MetricStat"]["Metric"]
            assert metric["Namespace"] == NAMESPACE
            used.add((metric["MetricName"], frozenset(d["Name"] for d in metric["Dimensions"])))
    assert {name for name, _ in used} >= {
        "StageDuration",
        "StudiesSucceeded",
        "StudiesFailed",
        "PositiveFindings",
        "ModelLatency",
        "StageErrors",
    }
    assert used <= emitted(), used - emitted()


@pytest.mark.parametrize(
    "status,study_status,error_type", [("succeeded", "succeeded", None), ("failed", "failed", "InvalidImage"), ("succeeded", None, None)]
)
def test_documents_are_the_ones_powertools_serialises(
    monkeypatch: pytest.MonkeyPatch, status: str, study_status: str | None, error_type: str | None
) -> None:
    """shared.metrics builds each EMF document directly; Powertools' EphemeralMetrics is the reference it must equal
    (same keys in the same order, same values), whatever the stage emits."""
    import shared.metrics as metrics

    kwargs = dict(
        stage="store",
        status=status,
        duration_ms=3.25,
        bytes_in=1234,
        bytes_out=56,
        error_type=error_type,
        findings=FINDINGS,
        detections=DETECTIONS,
        models=[ModelLatency("chest_xray_classifier", "3", 4.5)],
        study_status=study_status,
        study_id="s-1",
        execution_id="e-1",
    )
    ours = stage_metrics(**kwargs)
    monkeypatch.setattr(metrics, "_document", metrics.powertools_document)
    reference = stage_metrics(**kwargs)
    assert len(ours) == len(reference) > 1
    for a, b in zip(ours, reference):
        assert abs(a["_aws"].pop("Timestamp") - b["_aws"].pop("Timestamp")) < 5_000
        assert json.dumps(a) == json.dumps(b)
