"""Stat studies first: the issue's observation (400 routine + 3 stat listed last, 1 worker: stat finished 401st-402nd),
reproduced at a size this suite can afford, through `run` and `resume`; and the aging bound of shared/scheduling.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synthetic.phantoms import generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.samples import encode, sidecar, write_dicom_study, write_study
from shared.scheduling import StudyQueue
from shared import priority
from shared.settings import Settings


def write_studies(root: Path, routine: int, stat: int, size: int = 128) -> list[Path]:
    """`routine` routine studies, then `stat` stat ones, in that (sorted) order."""
    rng = np.random.default_rng(3)
    image = generate_phantom(rng, size=size).image
    name, data = encode(image, 0)
    folders = []
    for i in range(routine + stat):
        level = "routine" if i < routine else "stat"
        study_id = f"s{i:04d}-{level}"
        doc = sidecar(study_id, name, rng, data) | {"priority": level}
        folders.append(write_study(root / study_id, doc, name, data))
    return folders


def test_stat_studies_listed_last_run_first_with_one_worker(tmp_path: Path) -> None:
    folders = write_studies(tmp_path / "in", routine=40, stat=3)
    order: list[str] = []
    with LocalRuntime(Settings(data_dir=tmp_path / "data"), workers=1) as runtime:
        report = runtime.run_many(folders, on_done=lambda o: order.append(o.study_id), root=tmp_path / "in")
    assert all(o.status == "succeeded" for o in report.outcomes)
    assert [s for s in order[:3]] == ["s0040-stat", "s0041-stat", "s0042-stat"], order[:5]


def test_resume_runs_stat_uploads_first(tmp_path: Path) -> None:
    folders = write_studies(tmp_path / "in", routine=12, stat=2)
    settings = Settings(data_dir=tmp_path / "data")
    with LocalRuntime(settings, workers=1) as runtime:
        for folder in folders:  # uploaded, never run: what a crash before the first study leaves
            runtime.upload(folder, runtime.study_id(folder))
    order: list[str] = []
    with LocalRuntime(settings, workers=1) as runtime:
        runtime.resume(on_done=lambda o: order.append(o.study_id))
    assert len(order) == 14 and order[:2] == ["s0012-stat", "s0013-stat"], order


def test_dicom_requested_procedure_priority_schedules_and_reaches_the_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    routine = write_studies(tmp_path / "in", routine=3, stat=0)
    dicom = write_dicom_study(tmp_path / "in" / "zz-dicom", generate_phantom(rng, size=128).image, patient_name="")
    import pydicom

    path = next(dicom.glob("*.dcm"))
    ds = pydicom.dcmread(path)
    ds.RequestedProcedurePriority = "HIGH"
    ds.save_as(path)
    assert priority.of_folder(dicom) == "urgent"
    order: list[str] = []
    with LocalRuntime(Settings(data_dir=tmp_path / "data"), workers=1) as runtime:
        runtime.run_many([*routine, dicom], on_done=lambda o: order.append(o.study_id))
    assert order[0] == "zz-dicom"
    result = json.loads((tmp_path / "data" / "results" / "results" / "zz-dicom" / "result.json").read_text())
    assert result["priority"] == "urgent"


def test_priority_mapping_is_one_table() -> None:
    assert [priority.from_dicom(v) for v in ("STAT", "high ", "ROUTINE", "MEDIUM", "LOW", "", None, "bogus")] == [
        "stat",
        "urgent",
        "routine",
        "routine",
        "routine",
        "routine",
        "routine",
        "routine",
    ]
    assert [priority.to_hl7(p) for p in priority.PRIORITIES] == ["S", "A", "R"]
    assert [priority.to_dicom(p) for p in priority.PRIORITIES] == ["STAT", "HIGH", "ROUTINE"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_aging_bounds_how_long_later_stat_studies_overtake_a_routine_one() -> None:
    clock = FakeClock()
    queue: StudyQueue[str] = StudyQueue(clock=clock)
    queue.put("routine-early", "routine")
    clock.now = 1799.0  # a stat study arriving within 30 min goes ahead
    queue.put("stat-within", "stat")
    clock.now = 1801.0  # one arriving later does not: the routine study has waited its bound
    queue.put("stat-after", "stat")
    queue.put("urgent-now", "urgent")
    assert [queue.pop() for _ in range(4)] == ["stat-within", "routine-early", "stat-after", "urgent-now"]
    assert queue.pop() is None


def test_a_stream_of_stat_studies_never_starves_routine_work() -> None:
    """One stat study arriving every second forever: the routine study queued at 0 still runs once 30 min have passed."""
    clock = FakeClock()
    queue: StudyQueue[str] = StudyQueue(clock=clock)
    queue.put("routine", "routine")
    served = []
    for second in range(4000):
        clock.now = float(second)
        queue.put(f"stat-{second}", "stat")
        item = queue.pop()
        served.append(item)
        if item == "routine":
            break
    assert "routine" in served and clock.now <= priority_bound_s()


def priority_bound_s() -> float:
    from shared.scheduling import HEAD_START_S

    return HEAD_START_S["stat"] + 1


def test_the_gateways_queue_runs_stat_instances_first() -> None:
    """Instances handed on while the one worker is busy run stat first, whatever order they were stored in."""
    import threading

    from services.gateway.domain import Received
    from services.gateway.server import LocalPipeline

    started, release, order = threading.Event(), threading.Event(), []

    class Runtime:
        def run_key(self, key: str) -> str:
            order.append(key)
            if key == "first":
                started.set()
                assert release.wait(30)
            return key

    pipeline = LocalPipeline(Runtime(), workers=1)
    try:
        pipeline(Received("s", "first", 1, "", "routine"))
        assert started.wait(30)
        for key, level in (("r1", "routine"), ("r2", "routine"), ("u1", "urgent"), ("s1", "stat")):
            pipeline(Received("s", key, 1, "", level))
        release.set()
    finally:
        pipeline.close()
    assert order == ["first", "s1", "u1", "r1", "r2"]
    assert pipeline.futures["s1"].result(5) == "s1"


def test_the_gateway_reads_an_instances_priority_from_the_order_and_the_association(tmp_path: Path) -> None:
    import io

    import pydicom

    from synthetic.samples import dicom_bytes
    from services.gateway.domain import Receiver
    from shared.storage import LocalObjectStore

    image = (generate_phantom(np.random.default_rng(1), size=128).image * 4095).astype(np.uint16)
    receiver = Receiver(LocalObjectStore(tmp_path), "images", b"k" * 32)

    def instance(order_priority: str | None) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(image)))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        if order_priority:
            ds.RequestedProcedurePriority = order_priority
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    assert receiver.receive(instance("STAT")).priority == "stat"
    assert receiver.receive(instance(None)).priority == "routine"
    assert receiver.receive(instance(None), request_priority=priority.from_dimse(1)).priority == "urgent"  # C-STORE HIGH
    assert receiver.receive(instance("STAT"), request_priority="urgent").priority == "stat"  # the more urgent wins


class _CountingReader:
    """A file that counts the bytes read from it."""

    def __init__(self, f) -> None:
        self.f, self.read_bytes = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.read_bytes += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_the_scheduler_reads_a_dicom_header_up_to_the_priority_tag_never_the_pixels(tmp_path: Path) -> None:
    """Issue 23: the priority is read for every study before `run` starts; a 512² 16-bit DICOM is ~0.5 MB of pixels."""
    import pydicom

    study = write_dicom_study(tmp_path / "in" / "big", generate_phantom(np.random.default_rng(7), size=512).image, patient_name="")
    path = next(study.glob("*.dcm"))
    ds = pydicom.dcmread(path)
    ds.RequestedProcedurePriority = "STAT"
    ds.save_as(path)
    with path.open("rb") as f:
        reader = _CountingReader(f)
        assert priority.of_dicom_file(reader) == "stat"  # type: ignore[arg-type]
    assert reader.read_bytes < 8192, reader.read_bytes
    assert priority.of_folder(study) == "stat"

    settings = Settings(data_dir=tmp_path / "data")
    with LocalRuntime(settings, workers=1) as runtime:
        runtime.upload(study, "big")
        key = next(k for k in runtime.store.list_keys(settings.images_bucket, "incoming/big/") if k.endswith(".dcm"))

        read = runtime.store.get_bytes

        def no_whole_object(bucket: str, key: str) -> bytes:
            if key.endswith(".dcm"):
                raise AssertionError("the whole DICOM object was read to learn its priority")
            return read(bucket, key)  # the gateway's small record of the sender's priority, looked for beside it

        runtime.store.get_bytes = no_whole_object  # type: ignore[method-assign]
        assert runtime.priority_of(f"s3://{settings.images_bucket}/{key}") == "stat"
