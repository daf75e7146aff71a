"""Issue 22: what a machine crash or a failing disk leaves behind (a torn journal, a torn record) costs no study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radstream.cli import main
from radstream.local_aws import StudyOutcome
from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from shared.settings import Settings

STUDIES = 29  # + the demo set's DICOM: 30


def results(data: Path) -> set[str]:
    return {p.parent.name for p in (data / "results" / "results").glob("*/result.json")}


def interrupted_run(tmp_path: Path, after: int) -> tuple[Path, Path, set[str]]:
    """A run of 30 studies that stops after `after` have ended (as a kill would stop it); returns (studies, data, all ids)."""
    studies, data = tmp_path / "studies", tmp_path / "data"
    folders = write_demo_studies(studies, STUDIES, size=64, invalid=False)
    ended: list[str] = []

    def stop(outcome: StudyOutcome) -> None:
        ended.append(outcome.study_id)
        if len(ended) >= after:
            raise KeyboardInterrupt

    with LocalRuntime(Settings(data_dir=data), workers=1) as runtime:
        report = runtime.run_many(folders, stop, root=studies)
    assert report.interrupted and len(results(data)) == after
    return studies, data, {f.name for f in folders}


def damage_line(path: Path, number: int, how: str) -> None:
    lines = path.read_bytes().split(b"\n")
    line = lines[number - 1]
    lines[number - 1] = {
        "cut": line[: len(line) // 2],
        "zero": b"\0" * len(line),
        "empty": b"",
        "byte": line[:9] + b"\xff\xfe" + line[11:],
    }[how]
    path.write_bytes(b"\n".join(lines))


def finished_run(tmp_path: Path, capsys) -> Path:
    """The data dir of a finished `radstream run` of nine valid demo studies (its output read and dropped)."""
    studies, data = tmp_path / "studies", tmp_path / "data"
    write_demo_studies(studies, 9, size=64, invalid=False)
    assert main(["run", str(studies), "--data-dir", str(data), "--json", "--quiet"]) == 0
    capsys.readouterr()
    return data


def resume_json(data: Path, capsys) -> tuple[int, dict, str]:
    code = main(["resume", "--data-dir", str(data), "--json", "--quiet"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


@pytest.mark.parametrize("how", ["cut", "zero", "empty", "byte"])
def test_a_torn_first_journal_line_loses_no_study(tmp_path, capsys, how):
    _, data, ids = interrupted_run(tmp_path, after=4)
    (journal,) = (data / "journal").glob("*.jsonl")
    damage_line(journal, 1, how)
    code, _summary, err = resume_json(data, capsys)
    assert code == 0 and "Traceback" not in err
    assert results(data) == ids, "every study of the run has its record"
    assert f"journal/{journal.name}: line(s) 1 torn or unreadable" in err
    assert resume_json(data, capsys)[1]["totals"]["studies"] == 0, "nothing left, nothing twice"


def test_every_plan_line_lost_is_recovered_from_the_run_folder(tmp_path, capsys):
    """The plan (30 lines) zero-filled: the outcome lines still name the folder the run was given, and resume looks there."""
    studies, data, ids = interrupted_run(tmp_path, after=4)
    (journal,) = (data / "journal").glob("*.jsonl")
    for number in range(1, STUDIES + 3):
        damage_line(journal, number, "zero")
    code, summary, err = resume_json(data, capsys)
    assert code == 0 and results(data) == ids
    assert f"recovered 26 unfinished studies from the study folders under {studies.resolve()}" in err
    assert summary["recovered"] == {"from_folders": 26, "from_uploads": 0}


def test_an_undecodable_byte_in_any_journal_line_never_stops_resume(tmp_path, capsys):
    _, data, ids = interrupted_run(tmp_path, after=6)
    (journal,) = (data / "journal").glob("*.jsonl")
    total = len(journal.read_bytes().split(b"\n")) - 1
    damage_line(journal, total, "byte")  # the last outcome line: its study is run again (idempotent)
    code, _summary, err = resume_json(data, capsys)
    assert code == 0 and "UnicodeDecodeError" not in err and results(data) == ids
    assert f"line(s) {total} torn or unreadable" in err


def test_a_journal_that_lost_every_line_resumes_from_the_uploads_and_says_so(tmp_path, capsys):
    _, data, _ = interrupted_run(tmp_path, after=3)
    (journal,) = (data / "journal").glob("*.jsonl")
    journal.write_bytes(b"\0" * journal.stat().st_size)
    code, _, err = resume_json(data, capsys)
    assert code == 0 and "no intact line names its study folders" in err and "from the uploads" in err


# observation 2: a record resume trusts is checked first ------------------------------------------------------------


def test_a_torn_result_is_moved_aside_and_its_study_run_again(tmp_path, capsys):
    data = finished_run(tmp_path, capsys)
    torn = data / "results" / "results" / "demo-003" / "result.json"
    whole = torn.read_bytes()
    torn.write_bytes(whole[: len(whole) // 2])
    wrong = data / "results" / "results" / "demo-004" / "result.json"
    wrong.write_text(json.dumps({**json.loads(wrong.read_text()), "findings": "none"}))  # parses, breaks the schema
    code, summary, err = resume_json(data, capsys)
    assert code == 0 and {s["study_id"] for s in summary["studies"]} == {"demo-003", "demo-004"}
    assert json.loads(torn.read_text())["study_id"] == "demo-003", "run again: a whole result"
    kept = sorted((data / "results" / "quarantine").rglob("*result.json"))
    assert [p.parent.name for p in kept] == ["demo-003", "demo-004"] and kept[0].read_bytes() == whole[: len(whole) // 2]
    assert "results/demo-003/result.json does not parse or match its schema: moved to" in err
    assert resume_json(data, capsys)[1]["totals"]["studies"] == 0


def test_report_counts_and_names_the_records_it_skipped(tmp_path, capsys):
    data = finished_run(tmp_path, capsys)
    torn = data / "results" / "results" / "demo-005" / "result.json"
    torn.write_bytes(torn.read_bytes()[:100])
    code = main(["report", "--data-dir", str(data), "--out", str(tmp_path / "site")])
    out, err = capsys.readouterr()
    assert code == 1, "a report that leaves a study out says so in its exit code"
    assert "9 studies" in out and "skipped 1 record that does not parse: results/demo-005/result.json" in err
    assert "skipped 1" in (tmp_path / "site" / "index.html").read_text(), "the console page shows it too"
