"""What the soak (benchmarks/soak.py) found, each as the smallest failing case: nothing lost, duplicated or misattributed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from radstream.runtime import LocalRuntime
from synthetic.samples import encode, sidecar, write_demo_studies, write_study
from synthetic.phantoms import generate_phantom
from shared.errors import StorageUnavailable
from shared.settings import Settings


def test_every_log_line_names_its_study_and_an_execution_of_it(tmp_path):
    """The store stage's input carries the study inside `study`, not at the top: its lines named no study."""
    folders = write_demo_studies(tmp_path / "studies", 1, size=256)
    with LocalRuntime(Settings(data_dir=tmp_path / "data")) as runtime:
        runtime.run_many(folders)
    lines = [json.loads(text) for text in (tmp_path / "data" / "logs" / "radstream.log").read_text().splitlines()]
    assert {line.get("stage") for line in lines} >= {"validate", "prepare", "inference", "store", "telemetry"}
    for line in lines:
        study_id, execution = line.get("study_id"), str(line.get("execution_id"))
        assert study_id and re.fullmatch(re.escape(study_id) + r"-[0-9a-f]{8}", execution.rsplit(":", 1)[-1]), line


def test_an_upload_cut_short_is_completed_by_the_next_run_not_refused(tmp_path):
    """A crash (or a full disk) between the image's PUT and the sidecar's left the image alone under the id;
    the next run of the same folder called that another input (StudyConflict, permanent): a valid study lost."""
    folder = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)[0]
    with LocalRuntime(Settings(data_dir=tmp_path / "data")) as runtime:
        image = next(p for p in folder.iterdir() if p.suffix != ".json")
        runtime.store.put_bytes("images", f"incoming/demo-001/{image.name}", image.read_bytes())
        outcome = runtime.run_folder(folder)
    assert (outcome.status, outcome.error_type) == ("succeeded", None)


def test_an_upload_cut_short_still_refuses_another_image(tmp_path):
    folder = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)[0]
    with LocalRuntime(Settings(data_dir=tmp_path / "data")) as runtime:
        image = next(p for p in folder.iterdir() if p.suffix != ".json")
        runtime.store.put_bytes("images", f"incoming/demo-001/{image.name}", b"another image")
        outcome = runtime.run_folder(folder)
    assert (outcome.status, outcome.error_type) == ("failed", "StudyConflict")


class FlakyReads:
    """Wraps a store: reads of keys containing `fragment` fail as a throttled S3 does, `times` times."""

    def __init__(self, store, fragment: str, times: int = 1) -> None:
        self.store, self.fragment, self.times = store, fragment, times

    def get_bytes(self, bucket: str, key: str) -> bytes:
        if self.fragment in key and self.times > 0:
            self.times -= 1
            raise StorageUnavailable(f"s3://{bucket}/{key}: SlowDown (transient)")
        return self.store.get_bytes(bucket, key)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def test_resume_is_not_stopped_by_one_unreadable_failure_record(tmp_path):
    """`pending()` read each failure record to tell transient from permanent; one throttled read ended the whole resume."""
    folders = write_demo_studies(tmp_path / "studies", 1, size=256)
    with LocalRuntime(Settings(data_dir=tmp_path / "data")) as runtime:
        runtime.run_many(folders)
        runtime.store = FlakyReads(runtime.store, "failed/bad-digest/")
        pending = runtime.pending()
    assert "incoming/bad-digest/study.json" in pending, "a record it cannot read now is run again (idempotent), not a crash"


def duplicate_of(tmp_path: Path, study_id: str) -> Path:
    import numpy as np

    rng = np.random.default_rng(99)
    name, data = encode(generate_phantom(rng, size=256).image, 0)
    return write_study(tmp_path / "duplicates" / study_id, sidecar(study_id, name, rng, data), name, data)


def test_a_refused_duplicate_is_finished_business_for_resume(tmp_path):
    """The refusal of a second input under a finished study's id is permanent: resume must not run it again and again."""
    folder = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)[0]
    with LocalRuntime(Settings(data_dir=tmp_path / "data")) as runtime:
        assert runtime.run_many([folder]).outcomes[0].status == "succeeded"
        (refused,) = runtime.run_many([duplicate_of(tmp_path, "demo-001")]).outcomes
        assert refused.error_type == "StudyConflict"
        assert runtime.resume().outcomes == []


def test_an_outage_outside_the_workflow_never_leaves_a_failure_record_beside_a_result(tmp_path):
    """A throttled read while checking a duplicate wrote a StorageUnavailable record beside the study's result, and the
    later (permanent) refusal of that duplicate never removed it: one study, a result and a failure record."""
    folder = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)[0]
    result = tmp_path / "data" / "results" / "results" / "demo-001" / "result.json"
    with LocalRuntime(Settings(data_dir=tmp_path / "data")) as runtime:
        runtime.run_many([folder])
        before = result.read_bytes()
        store, runtime.store = runtime.store, FlakyReads(runtime.store, "incoming/demo-001/")
        (outage,) = runtime.run_many([duplicate_of(tmp_path, "demo-001")]).outcomes
        runtime.store = store
        assert (outage.error_type, outage.output) == ("StorageUnavailable", None), "not recorded: resume runs it again"
        (refused,) = runtime.resume().outcomes
    assert refused.error_type == "StudyConflict"
    assert result.read_bytes() == before
    assert not (tmp_path / "data" / "results" / "failed" / "demo-001").exists()


@pytest.mark.parametrize("fragment", ["results/demo-001/result.json"])
def test_a_result_that_cannot_be_read_back_is_not_a_failure(tmp_path, fragment):
    """Reading the outcome back hit a throttle: the study had its result, and got a failure record beside it."""
    folder = write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False)[0]
    with LocalRuntime(Settings(data_dir=tmp_path / "data")) as runtime:
        runtime.store = FlakyReads(runtime.store, fragment)
        (outcome,) = runtime.run_many([folder]).outcomes
        runtime.store = runtime.store.store
        assert outcome.output is None, "not recorded: resume runs it again"
        assert not (tmp_path / "data" / "results" / "failed" / "demo-001").exists()
        (again,) = runtime.resume().outcomes
    assert again.status == "succeeded"


def test_listing_by_prefix_walks_only_that_prefix(tmp_path, monkeypatch):
    """Each upload lists incoming/<id>/; the local store walked the whole bucket to answer, so a batch of N cost N²
    (the 10,000-study soak slowed from 320 to 140 studies/min as the bucket filled)."""
    from shared.storage import LocalObjectStore

    store = LocalObjectStore(tmp_path)
    for key in ("incoming/a-1/x.png", "incoming/a-1/s.json", "incoming/a-10/s.json", "incoming/b/s.json", "top.txt"):
        store.put_bytes("images", key, b"1")
    import os

    walked: list[Path] = []
    walk = os.walk
    monkeypatch.setattr("shared.storage.os.walk", lambda top, *a, **k: walked.append(Path(top)) or walk(top, *a, **k))
    assert store.list_keys("images", "incoming/a-1/") == ["incoming/a-1/s.json", "incoming/a-1/x.png"]
    assert walked == [tmp_path / "images" / "incoming" / "a-1"]
    # The same answers as S3's prefix listing for partial, empty, missing and odd prefixes.
    assert store.list_keys("images", "incoming/a-1") == ["incoming/a-1/s.json", "incoming/a-1/x.png", "incoming/a-10/s.json"]
    assert store.list_keys("images", "") == sorted(
        ["incoming/a-1/x.png", "incoming/a-1/s.json", "incoming/a-10/s.json", "incoming/b/s.json", "top.txt"]
    )
    assert store.list_keys("images", "incoming/zzz/") == [] and store.list_keys("nobucket", "incoming/") == []
    assert store.list_keys("images", "../images/incoming/") == []


KILLED_WRITER = """
import os, sys, time
from pathlib import Path
os.replace = lambda *a: (print("written", flush=True), time.sleep(600))  # killed between the write and the rename
from shared.storage import LocalObjectStore
LocalObjectStore(Path(sys.argv[1])).put_bytes("results", "results/demo-001/result.json", b"{}" * 1000)
"""


def test_a_write_killed_before_its_rename_leaves_nothing_beside_the_result_and_the_next_run_sweeps_it(tmp_path):
    """The short soak in CI found `.tmp-x6ki60di` beside demo-001's result.json after a SIGKILL: the temp file of a
    killed write sat in the result's folder for good (listings hid it; the folder and every reader of it did not)."""
    import os
    import signal
    import subprocess
    import sys

    data = tmp_path / "data"
    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(data)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert writer.stdout.readline().strip() == "written"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    leftovers = [p for p in data.rglob("*") if p.is_file()]
    assert leftovers and all(p.parent == data / ".staging" for p in leftovers), leftovers
    assert not (data / "results" / "results" / "demo-001").exists() or not any((data / "results" / "results" / "demo-001").iterdir())

    # A live writer's temp file (this process's, or another runtime's on the same data dir) is never swept.
    from shared.atomicfile import sweep_staging

    live = data / ".staging" / f"{os.getpid()}-inflight"
    live.write_bytes(b"x")
    with LocalRuntime(Settings(data_dir=data)):
        pass
    assert [p.name for p in (data / ".staging").iterdir()] == [live.name]
    assert sweep_staging(data / ".staging") == 0
