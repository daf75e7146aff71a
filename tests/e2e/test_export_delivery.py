"""DeliverResults in the workflow: the exports go to the configured destinations; a delivery that keeps failing is
retried by the template's rule, then ends in a dead letter (no patient value) while the study keeps its result;
`radstream export --retry` replays it and removes it once delivered.

The destination here is a FHIR endpoint on a loopback HTTP server whose answer the test chooses (the DICOM
destinations are tested against Orthanc in tests/integration/test_gateway_orthanc.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radstream.cli import main
from synthetic.phantoms import generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.samples import write_dicom_study
from services.export.deliver import dead_letters
from synthetic.peers import Endpoint
from shared.settings import Settings

NAME = "DELIVER^PATIENT"


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.close()


def dicom_folder(tmp_path: Path) -> Path:
    return write_dicom_study(
        tmp_path / "studies" / "deliver-study", generate_phantom(np.random.default_rng(5), size=256).image, patient_name=NAME
    )


def test_the_workflow_delivers_the_fhir_bundle(tmp_path, endpoint):
    settings = Settings(data_dir=tmp_path / "data", export_fhir_url=endpoint.url)
    with LocalRuntime(settings, workers=1) as runtime:
        outcome = runtime.run_folder(dicom_folder(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    assert outcome.delivery == {"destinations": [f"fhir:{endpoint.url}"]}
    ((content_type, body),) = endpoint.received
    bundle = json.loads(body)
    assert content_type == "application/fhir+json" and bundle["resourceType"] == "Bundle"
    assert bundle == json.loads((settings.data_dir / "results/results/deliver-study/report.fhir.json").read_bytes())


def test_no_destination_sends_nothing(tmp_path):
    with LocalRuntime(Settings(data_dir=tmp_path / "data"), workers=1) as runtime:
        outcome = runtime.run_folder(dicom_folder(tmp_path))
    assert outcome.status == "succeeded" and "no destination configured" in outcome.delivery["skipped"]


def test_a_delivery_that_keeps_failing_is_retried_then_dead_lettered_and_replayed(tmp_path, endpoint, capsys):
    endpoint.status = 503
    settings = Settings(data_dir=tmp_path / "data", export_fhir_url=endpoint.url)
    sleeps: list[float] = []
    with LocalRuntime(settings, workers=1, sleep=sleeps.append) as runtime:
        outcome = runtime.run_folder(dicom_folder(tmp_path))
        retry_rule = runtime.template.definition()["States"]["DeliverResults"]["Retry"][0]
    # The study succeeded: it has its result and no failure record; the delivery has a dead letter.
    assert outcome.status == "succeeded", outcome.message
    results = settings.data_dir / "results"
    assert (results / "results/deliver-study/result.json").is_file() and not (results / "failed").exists()
    # The template's rule retried it: every attempt reached the endpoint, each wait within the rule's cap.
    assert retry_rule["ErrorEquals"] == ["DeliveryUnavailable"]
    assert len(endpoint.received) == 1 + retry_rule["MaxAttempts"]
    assert len(sleeps) == retry_rule["MaxAttempts"] and max(sleeps) <= retry_rule["MaxDelaySeconds"]
    (letter_path,) = (results / "export-failed/deliver-study").iterdir()
    assert outcome.delivery["dead_letter"] == str(letter_path)
    letter = json.loads(letter_path.read_text())
    assert letter["error_type"] == "DeliveryUnavailable" and "answered 503" in letter["message"]
    assert letter["destinations"] == [f"fhir:{endpoint.url}"]
    assert letter["exported"]["overlay"]["key"] == "results/deliver-study/report.overlay.dcm"
    # No patient value, no DICOM UID in the dead letter.
    import pydicom

    source = pydicom.dcmread(dicom_folder(tmp_path) / "study.dcm", stop_before_pixels=True)
    for value in ("DELIVER", str(source.PatientID), source.StudyInstanceUID, source.SOPInstanceUID):
        assert value not in letter_path.read_text(), value

    # The endpoint still failing: the replay says so, keeps the letter, exits nonzero.
    argv = ["export", "--retry", "--data-dir", str(settings.data_dir), "--fhir-url", endpoint.url]
    assert main(argv) == 1
    assert "still failing: DeliveryUnavailable" in capsys.readouterr().out and letter_path.is_file()
    # Listed without --retry.
    assert main(["export", "--data-dir", str(settings.data_dir)]) == 0
    assert "1 dead letter(s)" in capsys.readouterr().out
    # The endpoint back: delivered, the letter removed, exit 0.
    endpoint.status = 201
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/1] deliver-study: delivered to fhir:" in out and "1 delivered, 0 still failing" in out
    assert not letter_path.exists() and json.loads(endpoint.received[-1][1])["resourceType"] == "Bundle"
    from shared.storage import LocalObjectStore

    assert dead_letters(LocalObjectStore(settings.data_dir), "results") == []
    assert main(argv) == 0 and "replayed 0 dead letter(s)" in capsys.readouterr().out
