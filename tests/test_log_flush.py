"""The runtime's log file is written once per study, not once per line: every line of a study is in the file when it ends."""

from __future__ import annotations

import json

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
