"""The radstream command: `run` on a mixed folder, its --json summary and its exit code; `demo`; bad paths."""

from __future__ import annotations

import json
from pathlib import Path

from radstream.cli import EXIT_FAILED_STUDIES, EXIT_USAGE, main
from synthetic.samples import write_demo_studies


def test_run_json_and_exit_code_agree_with_the_buckets(tmp_path, capsys):
    studies = tmp_path / "studies"
    write_demo_studies(studies, 2, size=256)
    code = main(["run", str(studies), "--data-dir", str(tmp_path / "data"), "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert code == EXIT_FAILED_STUDIES
    totals = summary["totals"]
    assert (totals["studies"], totals["succeeded"], totals["failed"]) == (7, 3, 4)
    assert totals["studies_per_minute"] > 0 and totals["end_to_end_ms_p95"] >= totals["end_to_end_ms_median"]
    results = tmp_path / "data" / "results"
    for study in summary["studies"]:
        if study["status"] == "succeeded":
            assert Path(study["output"]) == results / "results" / study["study_id"] / "result.json"
            assert study["findings"] and {"label", "probability", "positive"} <= set(study["findings"][0])
        else:
            assert Path(study["output"]) == results / "failed" / study["study_id"] / "error.json"
            record = json.loads(Path(study["output"]).read_text())
            assert (study["stage"], study["error_type"], study["message"]) == (record["stage"], record["error_type"], record["message"])


def test_run_of_valid_studies_exits_zero_and_prints_a_table(tmp_path, capsys):
    studies = tmp_path / "studies"
    write_demo_studies(studies, 1, size=256, invalid=False)
    assert main(["run", str(studies / "demo-001"), "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "demo-001" in out and "succeeded" in out and "1 succeeded, 0 failed of 1" in out
    assert "not for clinical use" in out


def test_a_folder_with_no_study_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "data")]) == EXIT_USAGE
    assert "holds no study" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing"), "--data-dir", str(tmp_path / "data")]) == EXIT_USAGE


def test_a_study_folder_with_two_sidecars_fails_alone(tmp_path, capsys):
    studies = tmp_path / "studies"
    write_demo_studies(studies, 1, size=256, invalid=False)
    odd = studies / "two-sidecars"
    odd.mkdir()
    (odd / "a.json").write_text("{}")
    (odd / "b.json").write_text("{}")
    assert main(["run", str(studies), "--data-dir", str(tmp_path / "data"), "--json", "--quiet"]) == EXIT_FAILED_STUDIES
    by_id = {s["study_id"]: s for s in json.loads(capsys.readouterr().out)["studies"]}
    assert by_id["demo-001"]["status"] == "succeeded"
    assert by_id["two-sidecars"]["stage"] == "upload" and "found 2 sidecar(s)" in by_id["two-sidecars"]["message"]


def test_demo_succeeds_when_exactly_the_broken_studies_fail(tmp_path, capsys):
    assert main(["demo", "--count", "2", "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    assert "every broken one (bad-*) has a failure record" in capsys.readouterr().out


def test_trace_shows_each_task_of_the_latest_run(tmp_path, capsys):
    studies = tmp_path / "studies"
    write_demo_studies(studies, 1, size=256, invalid=False)
    main(["run", str(studies), "--data-dir", str(tmp_path / "data"), "--quiet"])
    capsys.readouterr()
    assert main(["trace", "demo-001", "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "study demo-001, SUCCEEDED" in out
    for task in ("ValidateMetadata", "PrepareTensors", "Classify", "Detect", "Encode", "StoreResults", "SendTelemetry"):
        assert task in out
    assert main(["trace", "nobody", "--data-dir", str(tmp_path / "data")]) == 2


def test_resume_after_a_crash(tmp_path, capsys):
    from radstream.runtime import LocalRuntime
    from shared.settings import Settings

    folder = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)[0]
    runtime = LocalRuntime(Settings(data_dir=tmp_path / "data"))
    runtime.upload(folder, "demo-001")  # and no run: the crash
    runtime.close()
    assert main(["resume", "--data-dir", str(tmp_path / "data"), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(s["study_id"], s["status"]) for s in summary["studies"]] == [("demo-001", "succeeded")]
    assert main(["resume", "--data-dir", str(tmp_path / "data"), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["studies"] == 0
