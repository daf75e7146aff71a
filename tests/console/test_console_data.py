"""The console's data layer without a browser: the lake snapshot answers as the plain DuckDB runner does and takes in
new delivery objects; the study index keeps each study's latest record; the CLI refuses what it should."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, UTC
from pathlib import Path


from radstream.analytics import DuckDBQueryRunner
from radstream.cli import main as radstream
from radstream.console.data import LakeSnapshotRunner, StudyIndex, StudyFilter, local_data
from shared.observability import telemetry_record
from shared.storage import LocalObjectStore
from shared.telemetry import LocalLakeSink

NOW = datetime.now(UTC) - timedelta(minutes=5)


def records(study: str, status: str = "succeeded", at: datetime = NOW) -> list:
    stages = [("validate", 2.0), ("prepare", 20.0), ("store", 1.0), ("workflow", 40.0)]
    return [
        telemetry_record(
            stage=s,
            study_id=study,
            execution_id=f"x-{study}",
            status=status if s == "workflow" else "succeeded",
            duration_ms=ms,
            error_type="InvalidImage" if status == "failed" and s == "workflow" else None,
        ).model_copy(update={"time": at})
        for s, ms in stages
    ]


def test_lake_snapshot_equals_the_plain_runner_and_takes_in_new_objects(tmp_path: Path) -> None:
    sink = LocalLakeSink(LocalObjectStore(tmp_path), "telemetry")
    for i in range(5):
        sink.send(records(f"s{i}", "failed" if i == 3 else "succeeded", NOW - timedelta(days=i)))
    snapshot = LakeSnapshotRunner(tmp_path / "telemetry", refresh_s=0)
    plain = DuckDBQueryRunner(tmp_path / "telemetry")
    names = [q for q in plain.list_queries()]
    for name in names:
        for days in (1, 7):
            assert snapshot.run(name, days=days) == plain.run(name, days=days), name
    sink.send(records("late"))
    assert snapshot.refresh(force=True) == 1 and snapshot.refresh(force=True) == 0  # each object is loaded once
    assert snapshot.run("study_end_to_end", days=7) == plain.run("study_end_to_end", days=7)
    assert "late" in [r[0] for r in snapshot.run("study_end_to_end", days=7).rows]


def test_lake_snapshot_reloads_when_a_compaction_replaces_objects(tmp_path: Path) -> None:
    from radstream.lake import compact

    sink = LocalLakeSink(LocalObjectStore(tmp_path), "telemetry")
    for i in range(6):
        sink.send(records(f"s{i}"))
    snapshot = LakeSnapshotRunner(tmp_path / "telemetry", refresh_s=0)
    before = snapshot.run("study_end_to_end", days=7)
    assert compact(tmp_path / "telemetry").files_after == 1
    assert snapshot.refresh(force=True) == 1, "the merged object, loaded in place of the six it replaced"
    assert snapshot._con.execute(f"SELECT count(*) FROM {snapshot._target}").fetchone()[0] == 6 * 4, "no row kept twice"
    assert snapshot.run("study_end_to_end", days=7) == before == DuckDBQueryRunner(tmp_path / "telemetry").run("study_end_to_end", days=7)


def test_study_index_keeps_the_latest_record_of_a_rerun_study(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    failure = {
        "study_id": "s1",
        "stage": "validate",
        "error_type": "InvalidImage",
        "message": "study s1: bad",
        "failed_at": "2026-01-01T10:00:00Z",
    }
    store.put_bytes("results", "failed/s1/error.json", json.dumps(failure).encode())
    store.put_bytes("results", "results/s2/result.json", b"not json")
    index = StudyIndex(store, "results", refresh_s=0)
    index.refresh(force=True)
    assert [(r.study_id, r.status, r.error_type) for r in index.rows()] == [("s1", "failed", "InvalidImage")]
    result = {
        "study_id": "s1",
        "completed_at": "2026-01-01T11:00:00Z",
        "models": {"m": {"name": "m", "version": "2"}},
        "findings": [{"label": "Edema", "positive": True}, {"label": "Cardiomegaly", "positive": False}],
        "detections": [{}, {}],
    }
    store.put_bytes("results", "results/s1/result.json", json.dumps(result).encode())
    index.refresh(force=True)
    row = {r.study_id: r for r in index.rows()}["s1"]
    assert (row.status, row.positives, row.boxes, row.models) == ("succeeded", ["Edema"], 2, "m v2")


def test_a_new_study_shows_on_a_later_load_without_a_page_waiting_for_the_listing(tmp_path: Path) -> None:
    assert radstream(["demo", "--count", "1", "--valid-only", "--data-dir", str(tmp_path), "--quiet", "--json"]) == 0
    data = local_data(tmp_path, refresh_s=0)
    data.warm()
    before = {r.study_id for r in data.studies(StudyFilter()).rows}
    assert before == {"demo-001", "demo-dicom"}
    doc = json.loads((tmp_path / "results" / "results" / "demo-001" / "result.json").read_text()) | {"study_id": "copy"}
    LocalObjectStore(tmp_path).put_bytes("results", "results/copy/result.json", json.dumps(doc).encode())
    deadline = time.monotonic() + 10
    while "copy" not in {r.study_id for r in data.studies(StudyFilter()).rows}:
        assert time.monotonic() < deadline, "the background refresh never picked up the new result"
        time.sleep(0.05)


def test_console_cli_refuses_a_remote_bind_a_missing_data_dir_and_aws_without_athena_names(tmp_path: Path, capsys) -> None:
    assert radstream(["console", "--data-dir", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert radstream(["console", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "radstream demo" in capsys.readouterr().err
    assert radstream(["report", "--backend", "aws", "--out", str(tmp_path / "r")]) == 2
    assert "--workgroup" in capsys.readouterr().err


def test_timeline_shows_each_attempt_so_a_retry_is_visible() -> None:
    from radstream.console.charts import timeline

    document = {
        "start_time": 100.0,
        "end_time": 100.5,
        "subsegments": [
            {"name": "ValidateMetadata", "start_time": 100.0, "end_time": 100.01},
            {
                "name": "PrepareTensors",
                "start_time": 100.01,
                "end_time": 100.05,
                "error": True,
                "cause": {"exceptions": [{"type": "StorageUnavailable"}]},
            },
            {"name": "PrepareTensors", "start_time": 100.25, "end_time": 100.45},
        ],
    }
    svg = str(timeline(document))
    assert svg.count('data-task="PrepareTensors"') == 2
    assert 'class="attempt failed" data-task="PrepareTensors" data-status="StorageUnavailable"' in svg
    assert 'data-task="PrepareTensors" data-status="ok"' in svg and "500 ms" in svg


def test_the_study_page_shows_the_export_status_of_this_results_run(tmp_path: Path) -> None:
    """A DICOM study's page says what became of its exports: built by the run, or not built with the reason and the
    dead letter that replays them; a status left by an earlier run is not shown as this result's."""
    from radstream.console.pages import Pages, ServerLinks
    from services.export.status import write_status
    from shared.contracts import ObjectRef

    assert radstream(["demo", "--count", "1", "--valid-only", "--data-dir", str(tmp_path), "--quiet", "--json"]) == 0
    data = local_data(tmp_path, refresh_s=0)
    pages = Pages(data)
    result = json.loads((tmp_path / "results" / "results" / "demo-dicom" / "result.json").read_text())
    detail = data.study("demo-dicom")
    assert detail.exports is not None and detail.exports["status"] == "built"
    assert 'data-status="built"' in pages.study(ServerLinks(), "demo-dicom")
    assert data.study("demo-001").exports is None and 'id="exports"' not in pages.study(ServerLinks(), "demo-001")
    store = LocalObjectStore(tmp_path)
    write_status(
        store,
        "results",
        "demo-dicom",
        result["execution_id"],
        "build_failed",
        error_type="StorageUnavailable",
        message="study demo-dicom: the results bucket cannot be written (EIO); send again later",
        dead_letter=ObjectRef(bucket="results", key="export-failed/demo-dicom/run.json"),
    )
    html = pages.study(ServerLinks(), "demo-dicom")
    assert 'data-status="build_failed"' in html and "the results bucket cannot be written (EIO)" in html
    assert "export-failed/demo-dicom/run.json" in html and "radstream export --retry" in html
    assert json.loads(data.raw("demo-dicom", "exports.json"))["status"] == "build_failed"
    write_status(store, "results", "demo-dicom", "an-earlier-run", "delivery_failed", message="old")
    assert data.study("demo-dicom").exports is None


def test_the_study_page_shows_the_quality_flags_of_a_real_run(tmp_path: Path) -> None:
    """A DICOM whose header says MONOCHROME1 over MONOCHROME2 pixels runs end to end: the result, the text report and
    the console's study page say the picture looks inverted; its twin, declared correctly, says nothing."""
    import numpy as np

    from radstream.console.pages import Pages, ServerLinks
    from synthetic.phantoms import generate_phantom
    from synthetic.transfer_syntaxes import dataset_bytes, dicom_dataset, stored_values

    values = stored_values(generate_phantom(np.random.default_rng(5), size=256).image, 12)
    for study, photometric in (("wrong-polarity", "MONOCHROME1"), ("right-polarity", "MONOCHROME2")):
        (tmp_path / "in" / study).mkdir(parents=True)
        (tmp_path / "in" / study / "study.dcm").write_bytes(dataset_bytes(dicom_dataset(values, photometric)))
    data_dir = tmp_path / "data"
    assert radstream(["run", str(tmp_path / "in"), "--data-dir", str(data_dir), "--quiet", "--json"]) == 0
    flags = {}
    for folder in (data_dir / "results" / "results").iterdir():
        result = json.loads((folder / "result.json").read_text())
        flags[folder.name] = result["input"]["quality_flags"]
        html = Pages(local_data(data_dir, refresh_s=0)).study(ServerLinks(), folder.name)
        report = (folder / "report.txt").read_text()
        if flags[folder.name]:
            assert 'data-flag="polarity_suspicious"' in html and "the picture looks inverted" in html
            assert "polarity_suspicious" in report
        else:
            assert "quality-flags" not in html and "quality flags" not in report
    assert sorted(flags.values()) == [[], ["polarity_suspicious"]], flags
