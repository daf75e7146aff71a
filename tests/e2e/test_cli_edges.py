"""Issue 22, observations 5 and 6: the CLI at its edges. Each case ends in one clear line on stderr and the README's exit
code (0 all succeeded, 1 a study failed, 2 usage or environment, 3 interrupted), never a traceback; --json prints
exactly one JSON document on stdout."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radstream.cli import EXIT_INTERRUPTED, EXIT_USAGE, main
from synthetic.samples import write_demo_studies
from shared import atomicfile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-edges") / "studies"
    write_demo_studies(folder, 2, size=64, invalid=False)
    return folder


def one_line(err: str) -> str:
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def cli(*args: str, stdout=subprocess.PIPE, env: dict[str, str] | None = None) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RADSTREAM_", "TRITON_"))} | (env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "radstream.cli", *args], cwd=REPO, env=environment, stdout=stdout, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_a_bad_worker_count_is_a_usage_error_with_runs_own_usage(studies, tmp_path, capsys, workers):
    with pytest.raises(SystemExit) as stop:
        main(["run", str(studies), "--data-dir", str(tmp_path / "data"), "--workers", workers])
    err = capsys.readouterr().err
    assert stop.value.code == EXIT_USAGE and "usage: radstream run" in err and "argument --workers" in err
    assert not (tmp_path / "data").exists(), "nothing ran"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "X", "--bogus"],
        ["resume", "--bogus"],
        ["query", "--bogus"],
        ["lake", "compact", "--bogus"],
        ["report", "--out", "site", "--bogus"],
        ["trace", "s1", "--bogus"],
        ["export", "--bogus"],
        ["demo", "--bogus"],
    ],
)
def test_an_unknown_flag_shows_the_subcommands_own_usage(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    usage = "usage: radstream " + " ".join(a for a in argv if not a.startswith("-") and a not in ("X", "s1", "site"))
    assert stop.value.code == EXIT_USAGE and usage in err and "unrecognized arguments: --bogus" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["query", "throughput_per_minute"],
        ["resume"],
        ["report", "--out", "site"],
        ["trace", "s1"],
        ["export"],
        ["lake", "check"],
        ["lake", "compact"],
    ],
)
def test_a_data_dir_that_is_not_there_is_an_error_not_an_empty_answer(tmp_path, capsys, argv):
    typo = tmp_path / "radstrem-data"
    code = main([*argv, "--data-dir", str(typo)])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE and "no rows" not in captured.out
    assert f"no data dir {typo}" in one_line(captured.err)
    assert not typo.exists()


def test_a_read_only_data_dir_is_one_line_and_exit_2(studies, tmp_path, capsys, monkeypatch):
    data = tmp_path / "readonly" / "data"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "readonly")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code = main(["run", str(studies), "--data-dir", str(data), "--quiet"])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE and captured.out == ""
    assert "the disk is read-only" in one_line(captured.err) and "EROFS" in captured.err


def test_a_full_disk_at_the_journal_is_one_line_exit_2_and_the_exact_resume(studies, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    real_write = atomicfile.os.write

    def full(fd, data_):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data_)

    monkeypatch.setattr(atomicfile.os, "write", full)
    code = main(["run", str(studies), "--data-dir", str(data), "--quiet", "--json"])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE and captured.out == ""
    line = one_line(captured.err)
    assert "ENOSPC" in line and f"`radstream resume --data-dir {data}`" in line
    assert not list((data / "journal").glob("*.jsonl")), "no half plan left behind"


def test_a_disk_that_fills_by_the_end_still_prints_the_summary(studies, tmp_path, capsys, monkeypatch):
    """The studies finish; closing the runtime (telemetry delivery, the metrics file) meets a full disk: the summary is
    printed all the same, stdout holds exactly one JSON document, and the warnings go to stderr."""
    from shared import metrics, telemetry
    from shared.errors import StorageUnavailable

    def no_space(*args, **kwargs):
        raise StorageUnavailable("local store: ENOSPC (No space left on device) writing the lake")

    def close_fails(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(telemetry, "deliver_buffer", no_space)
    monkeypatch.setattr(metrics.LocalEmfFile, "close", close_fails)
    code = main(["run", str(studies), "--data-dir", str(tmp_path / "data"), "--quiet", "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # exactly one JSON document: nothing else on stdout
    assert code == 0 and summary["totals"]["succeeded"] == 3
    assert "LocalEmfFile not closed cleanly (OSError: ENOSPC)" in captured.err and "Traceback" not in captured.err
    assert any("LocalEmfFile" in w for w in summary["warnings"])


def test_run_json_into_a_closed_pipe_exits_with_the_runs_code_and_one_line(studies, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -1` that has already gone: every write to stdout is EPIPE
    try:
        process = cli("run", str(studies), "--data-dir", str(tmp_path / "data"), "--json", "--quiet", stdout=write_end)
    finally:
        os.close(write_end)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "stdout closed before the summary was printed" in one_line(err)


@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGINT])
def test_the_interrupt_hint_is_the_exact_command_with_its_data_dir(tmp_path, kill):
    studies, data = tmp_path / "studies", tmp_path / "my data"
    write_demo_studies(studies, 30, size=64, invalid=False)
    process = cli("run", str(studies), "--data-dir", str(data), "--quiet", "--workers", "1")
    deadline = time.monotonic() + 60
    while not list((data / "results" / "results").glob("*/result.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(kill)
    out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED and "Traceback" not in err
    assert f"`radstream resume --data-dir '{data}'` finishes them" in out
