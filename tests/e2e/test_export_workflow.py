"""Export never costs a result, through the local pipeline (template.yaml's workflow, the real handlers):

- Observation 1: a real-archive header (CR pixels in a Secondary Capture, PatientOrientation present but empty, no
  pixel spacing, PatientAge `62`, PatientIdentityRemoved YES, no StudyID) gets its result and exports that dciodvfy
  passes; before, ExportResults died in highdicom, the study was reported failed and its result superseded.
- Any export that cannot be built (here: the results store refuses the SR's object, a real EISDIR from the disk, retried
  by the template then caught) leaves result.json where it is, marks exports.json build_failed with the reason,
  dead-letters the build, counts one failed export record and a succeeded study; `radstream export --retry` builds the
  exports again and delivers them.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from fhir.resources.R4B.bundle import Bundle

from radstream.cli import main
from synthetic.phantoms import generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.samples import dicom_bytes, write_dicom_study
from synthetic.peers import Endpoint
from shared.settings import Settings
from tests.e2e.test_local_pipeline import lake_records

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def challenge_study(folder: Path) -> Path:
    """A chest CR as public challenge data sets ship it."""
    picture = generate_phantom(np.random.default_rng(11), size=256).image
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.round(picture * 4095), patient_name="CHALLENGE^PATIENT", modality="CR")))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.PatientOrientation = ""
    ds.PatientAge = "62"
    ds.PatientIdentityRemoved = "YES"
    ds.ConversionType = "WSD"
    assert "ImagerPixelSpacing" not in ds and "PixelSpacing" not in ds and "StudyID" not in ds
    folder.mkdir(parents=True)
    ds.save_as(folder / "study.dcm", enforce_file_format=True)
    return folder


def plain_study(folder: Path) -> Path:
    """A DX study every builder has always handled: what fails below is the store, not the header."""
    return write_dicom_study(folder, generate_phantom(np.random.default_rng(12), size=256).image, patient_name="CHALLENGE^PATIENT")


def dciodvfy_errors(data: bytes, path: Path) -> list[str]:
    assert shutil.which("dciodvfy"), "dciodvfy (Debian's dicom3tools) is needed: `make dcmtk` installs it"
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_a_challenge_dicom_gets_its_result_and_valid_exports(tmp_path, capsys):
    challenge_study(tmp_path / "studies" / "challenge")
    code = main(["run", str(tmp_path / "studies"), "--data-dir", str(tmp_path / "data"), "--json", "--quiet"])
    (study,) = json.loads(capsys.readouterr().out)["studies"]
    assert (study["status"], study["stage"], study["error_type"]) == ("succeeded", None, None), study["message"]
    assert code == 0
    results = tmp_path / "data/results"
    folder = results / "results/challenge"
    assert (folder / "result.json").is_file() and not (results / "failed").exists() and not (results / "superseded").exists()
    for name in ("report.sr.dcm", "report.overlay.dcm"):
        assert dciodvfy_errors((folder / name).read_bytes(), tmp_path / name) == [], name
    Bundle.model_validate(json.loads((folder / "report.fhir.json").read_bytes()))
    status = json.loads((folder / "exports.json").read_text())
    assert status["status"] == "built" and status["execution_id"] == json.loads((folder / "result.json").read_text())["execution_id"]


def test_an_export_that_cannot_be_built_leaves_the_result_and_is_replayed(tmp_path, capsys):
    data = tmp_path / "data"
    folder = plain_study(tmp_path / "studies" / "blocked")
    settings = Settings(data_dir=data)
    sleeps: list[float] = []
    with LocalRuntime(settings, workers=1, sleep=sleeps.append) as runtime:
        first = runtime.run_folder(folder)
        assert first.status == "succeeded", first.message
        result_path = data / "results/results/blocked/result.json"
        earlier = json.loads(result_path.read_text())
        # The disk refuses the SR's object from now on (a directory where the file goes: EISDIR, StorageUnavailable).
        (data / "results/results/blocked/report.sr.dcm").unlink()
        (data / "results/results/blocked/report.sr.dcm").mkdir()
        second = runtime.run_folder(folder)
        retries = runtime.template.definition()["States"]["ExportResults"]["Retry"][0]["MaxAttempts"]
    # The study succeeded: a new result in place, nothing superseded, no failure record.
    assert second.status == "succeeded", second.message
    result = json.loads(result_path.read_text())
    assert result["execution_id"] != earlier["execution_id"]
    assert not (data / "results/superseded").exists() and not (data / "results/failed").exists()
    assert len(sleeps) == retries, "the template retried the storage error, then caught it"
    # Marked: the export status names the reason and the dead letter; the letter holds what rebuilds it, no patient value.
    status = json.loads((data / "results/results/blocked/exports.json").read_text())
    assert status["status"] == "build_failed" and status["error_type"] == "StorageUnavailable" and status["message"]
    assert status["execution_id"] == result["execution_id"]
    (letter_path,) = (data / "results/export-failed/blocked").iterdir()
    assert status["dead_letter"]["key"] == f"export-failed/blocked/{letter_path.name}"
    assert second.delivery["dead_letter"] == str(letter_path)
    letter = json.loads(letter_path.read_text())
    assert letter["kind"] == "build" and letter["stored"]["result"]["key"] == "results/blocked/result.json"
    source = pydicom.dcmread(folder / "study.dcm", stop_before_pixels=True)
    for value in ("CHALLENGE", str(source.PatientID), source.StudyInstanceUID, source.SOPInstanceUID):
        assert value not in letter_path.read_text() and value not in json.dumps(status), value
    # Counted once: this run's export record says failed, its workflow record succeeded; no failed store or study.
    records = [r for r in lake_records(data) if r["execution_id"].endswith(second.execution_name)]
    by_stage = {}
    for record in records:
        by_stage.setdefault(record["stage"], []).append(record)
    assert [(r["status"], r["error_type"]) for r in by_stage["export"]] == [("failed", "StorageUnavailable")]
    assert [r["status"] for r in by_stage["workflow"]] == ["succeeded"]
    assert len({r["event_id"] for r in records}) == len(records)

    # The disk mended: `radstream export` lists it, --retry builds the exports again (no destination: built only)...
    (data / "results/results/blocked/report.sr.dcm").rmdir()
    assert main(["export", "--data-dir", str(data)]) == 0
    listed = capsys.readouterr().out
    assert f"export-failed/blocked/{letter_path.name}: StorageUnavailable: " in listed and "(not built; failed" in listed
    assert main(["export", "--retry", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "blocked: exports built" in out and "1 delivered, 0 still failing" in out
    assert not letter_path.exists()
    sr = pydicom.dcmread(data / "results/results/blocked/report.sr.dcm")
    assert sr.SOPInstanceUID and dciodvfy_errors((data / "results/results/blocked/report.sr.dcm").read_bytes(), tmp_path / "sr.dcm") == []
    assert json.loads((data / "results/results/blocked/exports.json").read_text())["status"] == "built"


def test_a_failed_build_replayed_to_a_destination_is_built_then_delivered(tmp_path, capsys):
    data = tmp_path / "data"
    folder = challenge_study(tmp_path / "studies" / "later")  # the header the builders now take, and a failing store
    blocked = data / "results/results/later/report.overlay.dcm"
    blocked.mkdir(parents=True)
    with LocalRuntime(Settings(data_dir=data), workers=1, sleep=lambda s: None) as runtime:
        outcome = runtime.run_folder(folder)
    assert outcome.status == "succeeded" and (data / "results/results/later/result.json").is_file()
    assert json.loads((data / "results/results/later/exports.json").read_text())["status"] == "build_failed"
    blocked.rmdir()
    endpoint = Endpoint(status=201)
    try:
        assert main(["export", "--retry", "--data-dir", str(data), "--fhir-url", endpoint.url]) == 0
    finally:
        endpoint.close()
    assert "later: exports built and delivered to fhir:" in capsys.readouterr().out
    ((_, body),) = endpoint.received
    assert json.loads(body) == json.loads((data / "results/results/later/report.fhir.json").read_bytes())
    status = json.loads((data / "results/results/later/exports.json").read_text())
    assert status["status"] == "delivered" and status["destinations"] == [f"fhir:{endpoint.url}"]
    assert list((data / "results/export-failed").rglob("*.json")) == []
