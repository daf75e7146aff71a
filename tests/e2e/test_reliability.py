"""Nothing lost, nothing misattributed: each observation of the issue, reproduced, on the embedded runtime.

Every test here failed on the runtime before the run journal, the per-study failure path and the thread-safe
log keys (observations 1–3 and 5–8; 4 is in tests/analytics, 9 in shared/tests, 10 in radstream/asl/tests).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from radstream.cli import EXIT_FAILED_STUDIES, EXIT_INTERRUPTED, main
from radstream.journal import read_journal
from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies, write_study
from services.triton.onnx_backend import OnnxRuntimeBackend
from shared.errors import InferenceUnavailable
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def no_sleep(seconds: float) -> None:
    """The workflow's Retry waits are real in a run; here they are skipped, their count still applies."""


def results(data: Path) -> set[str]:
    return {p.parent.name for p in (data / "results" / "results").glob("*/result.json")}


def failures(data: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (data / "results" / "failed").glob("*/error.json")}


def lake(data: Path) -> list[dict]:
    return [
        json.loads(line) for f in sorted((data / "telemetry").rglob("*.json.gz")) for line in gzip.decompress(f.read_bytes()).splitlines()
    ]


def run_json(args: list[str], capsys) -> tuple[int, dict]:
    code = main(args + ["--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


# 1. One bad input never aborts a batch -----------------------------------------------------------------------


def test_a_sidecar_json_cannot_parse_fails_alone_and_the_batch_finishes(tmp_path, capsys):
    studies = tmp_path / "studies"
    write_demo_studies(studies, 5, size=128, invalid=False)
    bomb = studies / "deep"
    bomb.mkdir()
    (bomb / "image.png").write_bytes(cv2.imencode(".png", np.eye(64, dtype=np.uint8) * 255)[1].tobytes())
    (bomb / "study.json").write_text("[" * 100_000)  # json gives up with RecursionError, not a JSONDecodeError
    code, summary = run_json(["run", str(studies), "--data-dir", str(tmp_path / "data")], capsys)
    assert code == EXIT_FAILED_STUDIES
    by_id = {s["study_id"]: s for s in summary["studies"]}
    assert summary["totals"]["studies"] == 7 and summary["totals"]["succeeded"] == 6
    assert by_id["deep"]["error_type"] == "InvalidStudy" and "nested too deeply" in by_id["deep"]["message"]
    assert by_id["deep"]["output"], "its failure record"


def test_a_trace_that_cannot_be_written_loses_no_study(tmp_path, monkeypatch):
    folders = write_demo_studies(tmp_path / "studies", 3, size=128, invalid=False)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("radstream.local_aws.write_trace", full_disk)
    with LocalRuntime(Settings(data_dir=tmp_path / "data"), sleep=no_sleep) as runtime:
        report = runtime.run_many(folders)
    assert [o.status for o in report.outcomes] == ["succeeded"] * 4


def test_an_unexpected_error_in_the_runtime_becomes_that_studys_record(tmp_path, monkeypatch):
    folders = write_demo_studies(tmp_path / "studies", 2, size=128, invalid=False)
    original = LocalRuntime.upload

    def buggy(self, folder, study_id):
        if study_id == "demo-002":
            raise KeyError("a bug of ours")
        return original(self, folder, study_id)

    monkeypatch.setattr(LocalRuntime, "upload", buggy)
    with LocalRuntime(Settings(data_dir=tmp_path / "data"), sleep=no_sleep) as runtime:
        outcomes = {o.study_id: o for o in runtime.run_many(folders).outcomes}
    assert outcomes["demo-001"].status == "succeeded"
    bad = outcomes["demo-002"]
    assert (bad.status, bad.stage, bad.error_type) == ("failed", "upload", "KeyError") and bad.output
    assert "a bug of ours" not in bad.message, "an unexpected error's text stays out of the record"
    assert failures(tmp_path / "data")["demo-002"]["error_type"] == "KeyError"


# 2. resume finishes a folder after SIGKILL or Ctrl-C ---------------------------------------------------------


def runner(studies: Path, data: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RADSTREAM_", "TRITON_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "radstream.cli", "run", str(studies), "--data-dir", str(data), "--quiet", "--workers", "1", *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_journal_lines(data: Path, at_least: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        lines = (
            sum("status" in line for p in (data / "journal").glob("*.jsonl") for _, line in read_journal(p)[0])
            if (data / "journal").is_dir()
            else 0
        )
        if lines >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"the runner journalled fewer than {at_least} studies in {deadline_s} s")


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_resume_finishes_every_study_after_a_kill_or_an_interrupt(tmp_path, capsys, kill):
    studies, data = tmp_path / "studies", tmp_path / "data"
    write_demo_studies(studies, 24, size=128, invalid=False)
    process = runner(studies, data)
    wait_for_journal_lines(data, 2)
    process.send_signal(kill)
    out, err = process.communicate(timeout=60)
    if kill == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:  # a clean stop: in-flight studies finish, the summary says what was not run
        assert process.returncode == EXIT_INTERRUPTED, err
        assert "Traceback" not in err and "interrupted:" in out and "radstream resume" in out
    assert len(results(data)) < 25, "the kill came before the end"
    code, summary = run_json(["resume", "--data-dir", str(data)], capsys)
    assert code == 0 and summary["totals"]["failed"] == 0
    assert results(data) == {f"demo-{i:03d}" for i in range(1, 25)} | {"demo-dicom"}
    assert run_json(["resume", "--data-dir", str(data)], capsys)[1]["totals"]["studies"] == 0, "nothing left, nothing twice"


# 3. A crash between StoreResults and SendTelemetry loses no telemetry ----------------------------------------


class Killed(BaseException):
    """What a SIGKILL does to the process, as far as the study in flight is concerned: nothing after it runs."""


def test_a_crash_after_the_result_before_the_telemetry_is_resumed(tmp_path, monkeypatch):
    folders = write_demo_studies(tmp_path / "studies", 1, size=128, invalid=False)[:1]
    settings = Settings(data_dir=tmp_path / "data")
    from services.telemetry import handler as telemetry

    def crash(event, deps):
        raise Killed

    monkeypatch.setattr(telemetry.lambda_handler, "run", crash)
    with LocalRuntime(settings, sleep=no_sleep) as runtime, pytest.raises(Killed):
        runtime.run_many(folders)
    monkeypatch.undo()
    assert results(tmp_path / "data") == {"demo-001"} and not lake(tmp_path / "data")
    with LocalRuntime(settings, sleep=no_sleep) as runtime:
        (outcome,) = runtime.resume().outcomes
    assert outcome.status == "succeeded"
    workflow = [r for r in lake(tmp_path / "data") if r["stage"] == "workflow"]
    assert [r["study_id"] for r in workflow] == ["demo-001"]


# 5. An inference outage as long as a Triton restart is outlasted; a later success leaves no stale record ------


@pytest.mark.parametrize("failed_calls, status", [(12, "succeeded"), (13, "failed")])
def test_inference_retries_outlast_an_outage_of_many_attempts(tmp_path, monkeypatch, failed_calls, status):
    """Each model meets `failed_calls` refusals before Triton answers, as every branch does while a pod restarts.

    The budget is template.yaml's: 12 retries after the first attempt. 12 refusals per model are outlasted
    (today's 4 retries gave up); a 13th is one more than the budget and the study fails, resumable. The
    count is per model, so which branch meets which refusal never depends on thread timing (a shared
    count over parallel branches let one branch meet 13 of 15 now and then: CI failed on it).
    """
    folders = write_demo_studies(tmp_path / "studies", 1, size=128, invalid=False)[:1]
    calls: dict[str, int] = {}
    infer = OnnxRuntimeBackend.infer

    def restarting(self, model_name, inputs, priority=0, version=None):
        calls[model_name] = calls.get(model_name, 0) + 1
        if calls[model_name] <= failed_calls:
            raise InferenceUnavailable("Triton restarting (test)")
        return infer(self, model_name, inputs, priority, version)

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", restarting)
    sleeps: list[float] = []
    with LocalRuntime(Settings(data_dir=tmp_path / "data"), sleep=sleeps.append) as runtime:
        (outcome,) = runtime.run_many(folders).outcomes
    assert outcome.status == status, outcome.message
    assert sleeps and max(sleeps) <= 16
    if status == "failed":
        assert outcome.error_type == "InferenceUnavailable"
        assert max(calls.values()) == 13, calls  # the first attempt and 12 retries, no more
    else:
        assert sorted(calls.values()) == [13] * len(calls) and len(calls) == 3, calls


def test_a_transient_failure_is_resumed_and_its_record_removed(tmp_path, monkeypatch):
    folders = write_demo_studies(tmp_path / "studies", 1, size=128, invalid=False)[:1]
    settings = Settings(data_dir=tmp_path / "data")

    def down(self, model_name, inputs, priority=0, version=None):
        raise InferenceUnavailable("Triton down (test)")

    with monkeypatch.context() as m:
        m.setattr(OnnxRuntimeBackend, "infer", down)
        with LocalRuntime(settings, sleep=no_sleep) as runtime:
            (outcome,) = runtime.run_many(folders).outcomes
    assert outcome.error_type == "InferenceUnavailable" and failures(tmp_path / "data")["demo-001"]
    with LocalRuntime(settings, sleep=no_sleep) as runtime:
        (outcome,) = runtime.resume().outcomes
    assert outcome.status == "succeeded"
    assert results(tmp_path / "data") == {"demo-001"} and failures(tmp_path / "data") == {}, "one study, one record"


# 6. Local disk errors are retried, then recorded or named -----------------------------------------------------


def test_an_unwritable_results_store_ends_loudly_named_and_resumable(tmp_path):
    folders = write_demo_studies(tmp_path / "studies", 2, size=128, invalid=False)[:2]
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    data.mkdir()
    (data / "results").write_text("a file where the results folder should be")  # every write under results/ fails
    with LocalRuntime(settings, sleep=no_sleep) as runtime:
        outcomes = runtime.run_many(folders).outcomes
    for o in outcomes:
        assert (o.status, o.stage, o.error_type) == ("failed", "record", "FailureNotRecorded"), o
        assert "StorageUnavailable" in o.message and "resume" in o.message and o.output is None
    (data / "results").unlink()
    with LocalRuntime(settings, sleep=no_sleep) as runtime:
        assert [o.status for o in runtime.resume().outcomes] == ["succeeded", "succeeded"]


def test_a_full_disk_fails_every_study_with_a_name_and_resume_finishes_them(tmp_path):
    folders = write_demo_studies(tmp_path / "studies", 3, size=128, invalid=False)
    settings = Settings(data_dir=tmp_path / "data")
    with LocalRuntime(settings.model_copy(update={"fault_injection": "enospc=1"}), sleep=no_sleep) as runtime:
        outcomes = runtime.run_many(folders).outcomes
    assert len(outcomes) == 4 and all(o.status == "failed" and o.error_type == "StorageUnavailable" for o in outcomes)
    assert all("ENOSPC" in o.message for o in outcomes)
    with LocalRuntime(settings, sleep=no_sleep) as runtime:
        assert sorted(o.status for o in runtime.resume().outcomes) == ["succeeded"] * 4


# 7. Every log line names its own study ---------------------------------------------------------------------


def test_log_lines_carry_their_own_study_with_four_workers(tmp_path):
    folders = write_demo_studies(tmp_path / "studies", 12, size=128)
    data = tmp_path / "data"
    with LocalRuntime(Settings(data_dir=data), workers=4, sleep=no_sleep) as runtime:
        outcomes = runtime.run_many(folders).outcomes
    lines = [json.loads(line) for line in (data / "logs" / "radstream.log").read_text().splitlines()]
    stage_lines = [line for line in lines if line.get("message", "").startswith("stage ")]
    assert len(stage_lines) >= 13 * 8
    wrong = [line for line in stage_lines if not line.get("study_id") or line["study_id"] not in line.get("execution_id", "")]
    assert wrong == [], f"{len(wrong)} lines name another study (or none)"
    assert {line["study_id"] for line in stage_lines if line["stage"] == "validate"} == {o.study_id for o in outcomes}


def test_an_unexpected_error_is_logged_with_its_type_and_place_never_its_message(tmp_path, monkeypatch):
    folders = write_demo_studies(tmp_path / "studies", 1, size=128, invalid=False)[:1]
    from services.prepare import handler as prepare

    def bug(event, deps):
        raise TypeError("DOE^JOHN would be here")

    monkeypatch.setattr(prepare.lambda_handler, "run", bug)
    data = tmp_path / "data"
    with LocalRuntime(Settings(data_dir=data), sleep=no_sleep) as runtime:
        (outcome,) = runtime.run_many(folders).outcomes
    assert (outcome.stage, outcome.error_type) == ("prepare", "TypeError") and "see the logs" in outcome.message
    log = (data / "logs" / "radstream.log").read_text()
    (line,) = [json.loads(line) for line in log.splitlines() if "unexpectedly" in line]
    assert line["error_type"] == "TypeError" and "test_reliability.py" in line["code_path"] and line["study_id"] == "demo-001"
    assert "DOE^JOHN" not in log


# 8. A study id names one input -------------------------------------------------------------------------------


def test_a_different_image_under_a_known_id_is_refused_and_the_result_kept(tmp_path, capsys):
    studies, data = tmp_path / "studies", tmp_path / "data"
    (folder,) = write_demo_studies(studies, 1, size=128, invalid=False)[:1]
    assert run_json(["run", str(folder), "--data-dir", str(data)], capsys)[0] == 0
    before = (data / "results" / "results" / "demo-001" / "result.json").read_text()
    other = write_demo_studies(tmp_path / "other", 1, size=128, seed=99, invalid=False)[0]
    code, summary = run_json(["run", str(other), "--data-dir", str(data)], capsys)
    (refused,) = summary["studies"]
    assert code == EXIT_FAILED_STUDIES and refused["error_type"] == "StudyConflict" and "sha256" in refused["message"]
    assert (data / "results" / "results" / "demo-001" / "result.json").read_text() == before
    assert failures(data) == {}, "the refusal is about the new input; the study keeps its one record"
    renamed = tmp_path / "renamed" / "demo-001"
    shutil.copytree(folder, renamed)
    (renamed / "image.png").rename(renamed / "scan.png")
    doc = json.loads((renamed / "study.json").read_text()) | {"image": "scan.png"}
    (renamed / "study.json").write_text(json.dumps(doc))
    _, summary = run_json(["run", str(renamed), "--data-dir", str(data)], capsys)
    assert summary["studies"][0]["error_type"] == "StudyConflict" and "scan.png" in summary["studies"][0]["message"]
    assert sorted(p.name for p in (data / "images" / "incoming" / "demo-001").iterdir()) == ["image.png", "study.json"]
    assert run_json(["run", str(folder), "--data-dir", str(data)], capsys)[0] == 0, "the same input again is a re-run"


def test_two_folders_claiming_one_id_in_a_batch_are_both_refused(tmp_path, capsys):
    studies = tmp_path / "studies"
    (first,) = write_demo_studies(studies, 1, size=128, invalid=False)[:1]
    twin = studies / "twin"
    shutil.copytree(first, twin)  # its sidecar says study_id demo-001 too
    code, summary = run_json(["run", str(studies), "--data-dir", str(tmp_path / "data")], capsys)
    by_source = {Path(s["source"]).name: s for s in summary["studies"]}
    assert code == EXIT_FAILED_STUDIES
    for name in ("demo-001", "twin"):
        assert (
            by_source[name]["error_type"] == "StudyConflict"
            and "2 folders of this batch claim study_id demo-001" in by_source[name]["message"]
        )
    assert by_source["demo-dicom"]["status"] == "succeeded"
    assert not (tmp_path / "data" / "images" / "incoming" / "demo-001").exists()


def test_a_study_written_by_hand_keeps_working(tmp_path, capsys):
    """The journal and the conflict rule change nothing for an ordinary study written by hand."""
    image = cv2.imencode(".png", (np.linspace(0, 255, 128 * 128).reshape(128, 128)).astype(np.uint8))[1].tobytes()
    doc = {
        "schema_version": "1",
        "study_id": "hand-1",
        "image": "x.png",
        "modality": "DX",
        "body_part": "CHEST",
        "view_position": "PA",
        "patient": {"pseudo_id": "p", "age_years": 50, "sex": "M"},
        "acquired_at": "2026-01-01T00:00:00Z",
        "priority": "routine",
        "source": "test",
    }
    folder = write_study(tmp_path / "hand-1", doc, "x.png", image)
    code, summary = run_json(["run", str(folder), "--data-dir", str(tmp_path / "data")], capsys)
    assert code == 0 and summary["studies"][0]["status"] == "succeeded"
    (journal,) = (tmp_path / "data" / "journal").glob("*.jsonl")
    lines, damaged = read_journal(journal)
    (_, header), (_, plan), (_, done) = lines
    assert not damaged and header["studies"] == 1 and header["roots"] == [str(folder.resolve())]
    assert (plan["planned"], plan["source"]) == ("hand-1", str(folder)) and done["status"] == "succeeded"


# A runtime without process globals -------------------------------------------------------------------------------


def test_two_runtimes_in_one_process_do_not_disturb_each_other(tmp_path):
    import threading

    environ = dict(os.environ)
    runs = {}

    def run(prefix: str) -> None:
        folders = write_demo_studies(tmp_path / prefix / "studies", 3, size=128, invalid=False, prefix=prefix)
        with LocalRuntime(Settings(data_dir=tmp_path / prefix / "data"), sleep=no_sleep) as runtime:
            runs[prefix] = runtime.run_many(folders).outcomes

    threads = [threading.Thread(target=run, args=(prefix,)) for prefix in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert dict(os.environ) == environ, "no setting travels through the environment"
    for prefix, other in (("left", "right"), ("right", "left")):
        data = tmp_path / prefix / "data"
        assert all(o.status == "succeeded" for o in runs[prefix]) and len(runs[prefix]) == 4
        assert results(data) == {f"{prefix}-001", f"{prefix}-002", f"{prefix}-003", f"{prefix}-dicom"}
        log = (data / "logs" / "radstream.log").read_text()
        assert f'"{prefix}-001' in log and f'"{other}-' not in log, "each runtime's log holds its own studies only"


def test_resume_runs_journalled_studies_from_their_upload_or_names_them_gone(tmp_path):
    """A journal names folders; by resume time a folder may be gone: its upload runs, or its absence is its record."""
    from radstream.journal import Journal, JournalEntry

    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    uploaded, never = write_demo_studies(tmp_path / "studies", 2, size=128, invalid=False)[:2]
    with LocalRuntime(settings, sleep=no_sleep) as runtime:
        runtime.upload(uploaded, "demo-001")
        Journal(runtime.journal_dir, "run", [JournalEntry("demo-001", str(uploaded)), JournalEntry("demo-002", str(never))]).close()
    shutil.rmtree(uploaded)
    shutil.rmtree(never)
    with LocalRuntime(settings, sleep=no_sleep) as runtime:
        outcomes = {o.study_id: o for o in runtime.resume().outcomes}
    assert outcomes["demo-001"].status == "succeeded"
    gone = outcomes["demo-002"]
    assert (gone.status, gone.stage, gone.error_type) == ("failed", "upload", "ConfigurationError") and "is gone" in gone.message
    assert gone.output, "its record says so"
    with LocalRuntime(settings, sleep=no_sleep) as runtime:
        assert runtime.resume().outcomes == [], "a permanent failure is a terminal record: not run again"


def test_the_runtimes_own_store_calls_retry_with_the_templates_storage_budget(tmp_path):
    """A throttle or a full-disk blip during an upload costs a wait, not a resume (the soak's 5–9 % before)."""
    folders = write_demo_studies(tmp_path / "studies", 6, size=128, invalid=False)
    sleeps: list[float] = []
    settings = Settings(data_dir=tmp_path / "data", fault_injection="enospc=0.05,throttle=0.05,timeout=0.02,seed=3")
    with LocalRuntime(settings, sleep=sleeps.append) as runtime:
        outcomes = runtime.run_many(folders).outcomes
        injected = sum(runtime.store.inner.injected.values())
    assert injected > 0 and sleeps, "faults were injected and waited out"
    assert [o.status for o in outcomes] == ["succeeded"] * 7
    assert max(sleeps) <= 8, "the template's storage budget: 1 s doubling, capped at 8 s"
