"""Orthanc (Debian's PACS, started here on free loopback ports: radstream/orthanc.py) as the hospital.

- Orthanc pushes a CR to the gateway by C-STORE; the workflow's DeliverResults sends the SR and the overlay back by
  C-STORE and by STOW-RS (its DICOMweb plugin): one study in the PACS holds the CR, the SR and the overlay.
- dcmtk's storescu (the modality) sends a compressed CR to the gateway; the SR and the overlay reach Orthanc and are
  found there by QIDO-RS under the source's StudyInstanceUID; the SR fetched back from Orthanc is read by dsrdump and
  parsed by highdicom to the result's findings and boxes, the overlay shows the boxes where the result puts them.
- Orthanc down: DeliverResults retries, then leaves a dead letter (the study keeps its result); Orthanc back,
  `radstream export --retry` delivers and removes it.
Orthanc or dcmtk that cannot start fails the test (`make orthanc`, `make dcmtk` install them).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from radstream.cli import main
from radstream.orthanc import Orthanc, dicom_json_value, free_port
from radstream.runtime import LocalRuntime
from services.export.overlay import BOX_RGB, box_pixels
from services.gateway.server import Gateway, LocalPipeline
from synthetic.instances import cr_instance, gateway_settings
from synthetic.peers import run, tool
from tests.integration.test_gateway_pipeline import check_sr
from shared.errors import ConfigurationError
from shared.settings import Settings

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def start_orthanc(folder: Path, **kwargs) -> Orthanc:
    try:
        return Orthanc(folder, **kwargs)
    except ConfigurationError as e:  # not installed, or did not start: fail loudly, never skip
        pytest.fail(str(e))


def settings_for(tmp_path: Path, **update) -> Settings:
    return gateway_settings(tmp_path / "data", **update)


def instance_file(pacs: Orthanc, sop_instance_uid: str) -> bytes:
    (found,) = pacs.post("/tools/lookup", sop_instance_uid.encode())
    import urllib.request

    with urllib.request.urlopen(f"{pacs.url}/instances/{found['ID']}/file", timeout=30) as response:
        return response.read()


def qido_series(pacs: Orthanc, study_uid: str) -> dict[str, dict]:
    """QIDO-RS: the study by its StudyInstanceUID, and its series by modality (each with its instances)."""
    studies, series = pacs.qido_study(study_uid)
    assert len(studies) == 1 and dicom_json_value(studies[0], "0020000D") == study_uid, studies
    found = {}
    for item in series:
        series_uid = dicom_json_value(item, "0020000E")
        instances = pacs.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances", accept="application/dicom+json")
        found[dicom_json_value(item, "00080060")] = {
            "uid": series_uid,
            "description": dicom_json_value(item, "0008103E"),
            "instances": [dicom_json_value(i, "00080018") for i in instances],
        }
    return found


def send_with_storescu(gateway: Gateway, path: Path) -> None:
    sent = run([tool("storescu"), "-xt", "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), str(path)])
    assert sent.returncode == 0, sent.stderr


def run_through_gateway(runtime: LocalRuntime, settings: Settings, path: Path):
    """storescu sends one instance to a gateway in front of `runtime`; the outcome of the workflow run it starts."""
    pipeline = LocalPipeline(runtime, workers=1)
    with Gateway(settings, store=runtime.store, on_stored=pipeline) as gateway:
        send_with_storescu(gateway, path)
        (future,) = pipeline.futures.values()
        outcome = future.result(timeout=300)
        pipeline.close()
    return outcome


def test_orthanc_pushes_a_cr_and_gets_the_sr_and_overlay_back_filed_with_its_study(tmp_path):
    data = cr_instance("jpeg-ls-lossless")
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    pacs_dimse, pacs_http = free_port(), free_port()
    settings = settings_for(
        tmp_path, export_dicom_peer=f"ORTHANC@127.0.0.1:{pacs_dimse}", export_stow_url=f"http://127.0.0.1:{pacs_http}/dicom-web/studies"
    )
    with LocalRuntime(settings, workers=1) as runtime:
        pipeline = LocalPipeline(runtime, workers=1)
        with Gateway(settings, store=runtime.store, on_stored=pipeline) as gateway:
            # Orthanc's ports were chosen before the gateway's settings (they name it); the gateway's port is its modality.
            with start_orthanc(
                tmp_path / "orthanc",
                dimse_port=pacs_dimse,
                http_port=pacs_http,
                modalities={"radstream": ("RADSTREAM", "127.0.0.1", gateway.dimse.port)},
            ) as orthanc:
                instance = orthanc.post("/instances", data)
                # The PACS pushes the CR to the gateway (Orthanc's C-STORE SCU).
                pushed = orthanc.post("/modalities/radstream/store", instance["ID"].encode())
                assert pushed.get("FailedInstancesCount", 0) == 0, pushed
                (future,) = pipeline.futures.values()
                outcome = future.result(timeout=300)
                pipeline.close()
                assert outcome.status == "succeeded", outcome.message
                assert outcome.delivery == {"destinations": [f"dimse:{orthanc.peer}", f"stow:{settings.export_stow_url}"]}, outcome.delivery
                # One study in the PACS: the CR, the SR and the overlay (each sent twice, the same SOP instance: stored once).
                (study,) = orthanc.get("/studies")
                assert orthanc.get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
                instances = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances")]
                assert sorted(i["SOPClassUID"] for i in instances) == sorted(
                    [source.SOPClassUID, COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE]
                ), [(i["SOPClassUID"], i["SOPInstanceUID"], i["SeriesInstanceUID"]) for i in instances]
                for sop_class, modality in ((COMPREHENSIVE_3D_SR, "SR"), (SECONDARY_CAPTURE, "OT")):
                    made = next(i for i in instances if i["SOPClassUID"] == sop_class)
                    assert (made["StudyInstanceUID"], made["PatientID"], made["Modality"]) == (
                        source.StudyInstanceUID,
                        source.PatientID,
                        modality,
                    )


def test_storescu_to_gateway_to_workflow_to_orthanc_found_by_qido_rs(tmp_path):
    data = cr_instance("jpeg-ls-lossless", seed=2)  # a phantom the detector boxes twice
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    path = tmp_path / "cr.dcm"
    path.write_bytes(data)
    with start_orthanc(tmp_path / "orthanc") as pacs:
        settings = settings_for(tmp_path, export_dicom_peer=pacs.peer)
        with LocalRuntime(settings, workers=1) as runtime:
            outcome = run_through_gateway(runtime, settings, path)
        assert outcome.status == "succeeded", outcome.message
        assert outcome.delivery == {"destinations": [f"dimse:{pacs.peer}"]}
        results = settings.data_dir / "results" / "results" / outcome.study_id
        result = json.loads((results / "result.json").read_text())
        assert result["detections"], "the phantom gives the detector something to box (else the box checks prove nothing)"

        # QIDO-RS finds the study under the source's StudyInstanceUID, with the SR's and the overlay's series.
        series = qido_series(pacs, source.StudyInstanceUID)
        assert set(series) == {"SR", "OT"}, series
        assert all("not for clinical use" in s["description"] for s in series.values())
        assert series["SR"]["uid"] != series["OT"]["uid"] != source.SeriesInstanceUID

        # The SR as the PACS holds it: dsrdump reads it, highdicom parses it back to the result's findings and boxes.
        (sr_uid,) = series["SR"]["instances"]
        sr_path = tmp_path / "from-orthanc.sr.dcm"
        sr_path.write_bytes(instance_file(pacs, sr_uid))
        check_sr(sr_path, result, source)
        # The overlay as the PACS holds it: the boxes drawn where the result puts them, on the source's pixels.
        (overlay_uid,) = series["OT"]["instances"]
        overlay = pydicom.dcmread(io.BytesIO(instance_file(pacs, overlay_uid)))
        pixels = overlay.pixel_array
        assert pixels.shape == (source.Rows, source.Columns, 3)
        for detection in result["detections"]:
            x0, y0, x1, y1 = box_pixels(detection["box"], source.Rows, source.Columns)
            for row, column in ((y1, x0), (y1, x1), ((y0 + y1) // 2, x0), ((y0 + y1) // 2, x1)):
                assert tuple(pixels[row, column]) == BOX_RGB, (detection, row, column)


def test_orthanc_down_ends_in_a_dead_letter_that_export_retry_delivers(tmp_path, capsys):
    data = cr_instance("jpeg-ls-lossless", seed=4)
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    path = tmp_path / "cr.dcm"
    path.write_bytes(data)
    pacs = start_orthanc(tmp_path / "orthanc")
    pacs.stop()  # the PACS is down (its port closed) while the study runs
    settings = settings_for(tmp_path, export_dicom_peer=pacs.peer)
    sleeps: list[float] = []
    with LocalRuntime(settings, workers=1, sleep=sleeps.append) as runtime:
        retries = runtime.template.definition()["States"]["DeliverResults"]["Retry"][0]["MaxAttempts"]
        outcome = run_through_gateway(runtime, settings, path)
    # The study has its result (and no failure record); the delivery was retried, then dead-lettered.
    assert outcome.status == "succeeded", outcome.message
    assert len(sleeps) == retries, sleeps
    letter = Path(outcome.delivery["dead_letter"])
    assert letter.parent.name == outcome.study_id and letter.parent.parent.name == "export-failed"
    record = json.loads(letter.read_text())
    assert record["error_type"] == "DeliveryUnavailable" and record["destinations"] == [f"dimse:{pacs.peer}"]
    for value in (str(source.PatientName), str(source.PatientID), source.StudyInstanceUID, source.SOPInstanceUID):
        assert value not in letter.read_text(), value
    assert not (settings.data_dir / "results" / "failed").exists()

    # The PACS back (same ports, same storage): the replay delivers, removes the letter, and QIDO-RS finds the study.
    pacs.start()
    try:
        assert main(["export", "--retry", "--data-dir", str(settings.data_dir), "--dicom-peer", pacs.peer]) == 0
        out = capsys.readouterr().out
        assert f"[1/1] {outcome.study_id}: delivered to dimse:{pacs.peer}" in out and "1 delivered, 0 still failing" in out
        assert not letter.exists()
        assert set(qido_series(pacs, source.StudyInstanceUID)) == {"SR", "OT"}
    finally:
        pacs.stop()
    np.testing.assert_equal(len(list((settings.data_dir / "results" / "export-failed").rglob("*.json"))), 0)


def test_demo_pacs_shows_each_study_in_orthanc(tmp_path, capsys):
    """`radstream demo --pacs`: Orthanc and the gateway started, storescu sends, each study's SR and overlay found by QIDO-RS."""
    tool("storescu")
    assert main(["demo", "--pacs", "--count", "2", "--data-dir", str(tmp_path / "data"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count(": succeeded; SR and overlay delivered to dimse:ORTHANC@127.0.0.1:") == 2, out
    assert (
        out.count("/dicom-web/studies?StudyInstanceUID=") == 2
        and out.count("series SR: RadStream") == 2
        and out.count("series OT: RadStream") == 2
    )
    assert "every study's SR and overlay are in Orthanc" in out
    for line in out.splitlines():
        if line.strip().startswith("results:"):
            folder = Path(line.split()[1])
            assert {p.name for p in folder.iterdir()} >= {"result.json", "report.sr.dcm", "report.overlay.dcm", "report.fhir.json"}


def test_demo_pacs_without_orthanc_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "Orthanc" else which(name, *a, **k))
    assert main(["demo", "--pacs", "--count", "1", "--data-dir", str(tmp_path / "data")]) == 2
    assert "`make orthanc` installs it" in capsys.readouterr().err
