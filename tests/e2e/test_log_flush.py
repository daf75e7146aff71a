"""The runtime's log file is written once per study, not once per line: every line of a study is in the file when it ends."""

from __future__ import annotations

import json
import re

from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from shared.settings import Settings


def test_a_studys_lines_are_in_the_file_when_it_ends_with_the_runtime_still_open(tmp_path):
    folders = write_demo_studies(tmp_path / "studies", 2, size=128, invalid=False)
    data = tmp_path / "data"
    with LocalRuntime(Settings(data_dir=data), workers=1) as runtime:
        for folder in folders[:2]:
            outcome = runtime.run_folder(folder)
            lines = [json.loads(line) for line in (data / "logs" / "radstream.log").read_text().splitlines()]
            stages = {
                line["stage"] for line in lines if line.get("study_id") == outcome.study_id and line.get("message") == "stage succeeded"
            }
            assert stages >= {"validate", "prepare", "inference", "store", "telemetry"}, stages
        # A study refused before its workflow (an unexpected error) is flushed too.
        outcome = runtime.refused("x", "refused-1", "runtime", KeyError("boom"))
        assert "refused-1" in (data / "logs" / "radstream.log").read_text()
        assert outcome.status == "failed"


def test_the_local_stage_line_is_the_line_powertools_writes():
    """The per-stage success line skips Powertools' formatter locally (issue 23): same keys, same values, only the caller's
    line number in `location` and the timestamp's millisecond may differ."""
    import io

    from shared.observability import _local_line, logger, logs_to

    keys = {"stage": "validate", "execution_id": "arn:aws:states:local:0:execution:sm:s1-0a1b2c3d", "study_id": "s1", "request_id": None}
    stream = io.StringIO()
    with logs_to(stream):
        logger.thread_safe_append_keys(**keys)
        try:
            logger.info("stage succeeded", duration_ms=1.25, bytes_out=42)
            assert _local_line("INFO", "stage succeeded", {**keys, "duration_ms": 1.25, "bytes_out": 42})
        finally:
            logger.thread_safe_clear_keys()
    theirs, ours = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(ours) == list(theirs), (ours, theirs)
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}[+-]\d{4}")
    assert stamp.fullmatch(ours.pop("timestamp")) and stamp.fullmatch(theirs.pop("timestamp"))
    assert ours.pop("location") == "_invoke" and re.fullmatch(r"\w+:\d+", theirs.pop("location"))
    assert ours == theirs
    assert not _local_line("INFO", "stage succeeded", keys)  # no local stream (Lambda): the caller logs through Powertools
