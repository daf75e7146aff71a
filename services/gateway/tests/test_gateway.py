"""The gateway against real peers: dcmtk's echoscu/storescu as the modality, an HTTP client for STOW-RS, and the
local pipeline behind it; the SR read back by highdicom and by dcmtk's dsrdump. A peer that cannot run fails."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import shutil
import subprocess
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from synthetic.phantoms import generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.transfer_syntaxes import SYNTAXES, dicom_dataset, encode, stored_values
from services.export import codes
from services.gateway.domain import Receiver, Refused, study_id_for
from shared.acceptance import CR_IMAGE_STORAGE
from services.gateway.server import Gateway, LocalPipeline
from shared.settings import Settings
from shared.storage import LocalObjectStore

KEY = "test-pseudonym-key-0123456789abcdef"
NAME, PATIENT_ID = "GATEWAY^TESTPATIENT", "MRN-GW-4711"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} (Debian package dcmtk) is not installed: `make dcmtk` installs it"
    return path


def cr_instance(
    syntax: str = "jpeg-ls-lossless", body_part: str = "CHEST", study_uid: str | None = None, seed: int = 3, size: int = 320
) -> bytes:
    image = generate_phantom(np.random.default_rng(seed), size=size).image
    chosen = SYNTAXES[syntax]
    ds = dicom_dataset(
        stored_values(image, chosen.bits),
        bits_stored=chosen.bits,
        SOPClassUID=CR_IMAGE_STORAGE,
        Modality="CR",
        BodyPartExamined=body_part,
        StudyInstanceUID=study_uid or generate_uid(),
        SeriesInstanceUID=generate_uid(),
        PatientName=NAME,
        PatientID=PATIENT_ID,
        PatientBirthDate="19600101",
        PatientSex="F",
        AccessionNumber="ACC-GW-1",
        StudyDate="20260101",
        StudyTime="101010",
        ReferringPhysicianName="",
        StudyID="1",
        SeriesNumber=1,
        InstanceNumber=1,
    )
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    return encode(ds, chosen)


def check_sr(path: Path, result: dict, source: pydicom.Dataset) -> None:
    """The SR holds result.json's findings and boxes for the source's patient and study; highdicom and dcmtk's dsrdump read it."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    assert (sr.StudyInstanceUID, sr.PatientID, str(sr.PatientName)) == (source.StudyInstanceUID, PATIENT_ID, NAME)
    assert sr.AccessionNumber == "ACC-GW-1"
    groups = sr.content.get_image_measurement_groups()
    findings = {}
    for group in groups:
        measured = {m.name.value: m.value for m in group.get_measurements()}
        (evaluation,) = group.get_qualitative_evaluations()
        findings[group.finding_type.meaning] = (
            round(measured[codes.CERTAINTY.value], 6),
            round(measured[codes.OPERATING_POINT.value], 6),
            evaluation.value.meaning,
        )
        algorithm = [i.TextValue for i in group[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111001"]  # Algorithm Name
        assert algorithm and algorithm[0].startswith("chest_xray_classifier") and "not for clinical use" in algorithm[0]
    # Coded from the export's one code table (SNOMED CT where the label has a code), as the FHIR bundle codes them.
    assert findings == {
        codes.finding(f["label"]).meaning: (
            round(f["probability"], 6),
            round(f["threshold"], 6),
            (codes.PRESENT if f["positive"] else codes.ABSENT).meaning,
        )
        for f in result["findings"]
    }
    regions = sr.content.get_planar_roi_measurement_groups()
    assert len(regions) == len(result["detections"])
    for group, detection in zip(regions, result["detections"]):
        region = group.roi
        assert region.value_type == hd.sr.ValueTypeValues.SCOORD
        x0, y0, x1, y1 = detection["box"]
        np.testing.assert_allclose(region.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], atol=1e-3)
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert group.finding_type.meaning == codes.finding(detection["label"]).meaning

    # dcmtk reads it too: the document, the template, the report text, the "not for clinical use" label.
    dump = run([tool("dsrdump"), str(path)])
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and "not for clinical use" in dump.stdout
    assert "SCOORD" in dump.stdout or not result["detections"]


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        gateway_dimse_port=0,
        gateway_http_port=0,
        gateway_pseudonym_key=KEY,
        gateway_dimse_timeout_s=20,
        gateway_acse_timeout_s=20,
        gateway_network_timeout_s=30,
    )


def test_echo_and_compressed_cr_store_run_the_pipeline_and_export_an_sr(settings, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    data = cr_instance()
    source = pydicom.dcmread(io.BytesIO(data))
    assert source.file_meta.TransferSyntaxUID == SYNTAXES["jpeg-ls-lossless"].uid
    path = tmp_path / "cr.dcm"
    path.write_bytes(data)
    with LocalRuntime(settings, workers=1) as runtime:
        pipeline = LocalPipeline(runtime, workers=1)
        with Gateway(settings, store=runtime.store, on_stored=pipeline) as gateway:
            port = str(gateway.dimse.port)
            echo = run([tool("echoscu"), "-aet", "MODALITY", "-aec", gateway.ae_title, "127.0.0.1", port])
            assert echo.returncode == 0, echo.stderr
            store = run([tool("storescu"), "-xt", "-aet", "MODALITY", "-aec", gateway.ae_title, "127.0.0.1", port, str(path)])
            assert store.returncode == 0, store.stderr
        ((key, future),) = pipeline.futures.items()
        outcome = future.result(timeout=300)
        pipeline.close()

    # The stored object: the bytes as sent (still JPEG-LS), under the keyed pseudonym, never the UIDs.
    study_id, instance = study_id_for(KEY.encode(), source.StudyInstanceUID, source.SOPInstanceUID)
    assert study_id.split(".")[0] == hmac.new(KEY.encode(), source.StudyInstanceUID.encode(), hashlib.sha256).hexdigest()[:20]
    assert key == f"incoming/{study_id}/{instance}.dcm"
    assert source.StudyInstanceUID not in key and source.SOPInstanceUID not in key
    stored = (settings.data_dir / "images" / key).read_bytes()
    assert pydicom.dcmread(io.BytesIO(stored)).file_meta.TransferSyntaxUID == SYNTAXES["jpeg-ls-lossless"].uid
    assert pydicom.dcmread(io.BytesIO(stored)).PixelData == source.PixelData

    # The workflow's result, then the SR holding the same findings and boxes, filed with the source's study.
    assert outcome.status == "succeeded", outcome.message
    results = settings.data_dir / "results" / "results" / study_id
    result = json.loads((results / "result.json").read_text())
    check_sr(results / "report.sr.dcm", result, source)

    # FHIR: a DiagnosticReport with one Observation per finding and per box, for this patient and study.
    fhir = json.loads((results / "report.fhir.json").read_text())
    kinds = [e["resource"]["resourceType"] for e in fhir["entry"]]
    assert kinds.count("DiagnosticReport") == 1 and kinds.count("Observation") == len(result["findings"]) + len(result["detections"])
    (patient,) = [e["resource"] for e in fhir["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patient["identifier"][0]["value"] == PATIENT_ID

    # No log line (ours, pynetdicom's, the stages') carries a UID or a patient value, at any level.
    assert "instance stored study_id=" + study_id in caplog.text
    for value in (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, NAME, PATIENT_ID):
        assert value not in caplog.text, value
    # The patient module is nowhere else but the input, the SR, the overlay and the FHIR bundle.
    for file in settings.data_dir.rglob("*"):
        if file.is_file() and file.name not in ("report.sr.dcm", "report.overlay.dcm", "report.fhir.json") and "incoming" not in file.parts:
            assert NAME.encode() not in file.read_bytes() and PATIENT_ID.encode() not in file.read_bytes(), file


def test_non_chest_and_unsupported_sop_classes_are_refused_with_dimse_statuses(settings, tmp_path):
    abdomen = tmp_path / "abdomen.dcm"
    abdomen.write_bytes(cr_instance("explicit-le", body_part="ABDOMEN"))
    ct = dicom_dataset(
        stored_values(generate_phantom(np.random.default_rng(1), size=64).image, 12),
        SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        Modality="CT",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
    )
    ct.file_meta.MediaStorageSOPClassUID = ct.SOPClassUID
    ct_path = tmp_path / "ct.dcm"
    ct.save_as(ct_path, enforce_file_format=True)
    with Gateway(settings) as gateway:
        port = str(gateway.dimse.port)
        refused = run([tool("storescu"), "-v", "-aec", gateway.ae_title, "127.0.0.1", port, str(abdomen)])
        assert refused.returncode != 0
        assert "store response (error: cannotunderstand)" in (refused.stdout + refused.stderr).lower(), refused.stderr  # 0xC000
        unsupported = run([tool("storescu"), "-v", "-aec", gateway.ae_title, "127.0.0.1", port, str(ct_path)])
        assert unsupported.returncode != 0
        assert (
            "no presentation context" in (unsupported.stdout + unsupported.stderr).lower()
            or "no acceptable presentation" in (unsupported.stdout + unsupported.stderr).lower()
        ), unsupported.stderr
    assert not list(settings.data_dir.rglob("*.dcm"))  # nothing refused was stored


def test_calling_ae_titles_outside_the_allowed_list_are_rejected(settings):
    allowed = settings.model_copy(update={"gateway_allowed_calling_aes": "CR_ROOM_1, DX_ROOM_2"})
    with Gateway(allowed) as gateway:
        port = str(gateway.dimse.port)
        assert run([tool("echoscu"), "-aet", "DX_ROOM_2", "-aec", gateway.ae_title, "127.0.0.1", port]).returncode == 0
        rejected = run([tool("echoscu"), "-aet", "INTRUDER", "-aec", gateway.ae_title, "127.0.0.1", port])
        assert rejected.returncode != 0 and "reject" in (rejected.stdout + rejected.stderr).lower(), rejected.stderr


def test_the_association_limit_holds(settings):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    limited = settings.model_copy(update={"gateway_max_associations": 1})
    with Gateway(limited) as gateway:
        scu = AE(ae_title="HOLDER")
        scu.add_requested_context(Verification)
        held = scu.associate("127.0.0.1", gateway.dimse.port, ae_title=gateway.ae_title)
        assert held.is_established
        try:
            second = run([tool("echoscu"), "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port)])
            assert second.returncode != 0 and "reject" in (second.stdout + second.stderr).lower(), second.stderr
        finally:
            held.release()
        assert run([tool("echoscu"), "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port)]).returncode == 0


def test_stow_rs_stores_parts_and_answers_per_ps3_18(settings):
    chest, abdomen = cr_instance("explicit-le"), cr_instance("explicit-le", body_part="ABDOMEN")
    boundary = "radstream-boundary-7d1"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in (chest, abdomen))
    body += f"--{boundary}--\r\n".encode()
    with Gateway(settings) as gateway:
        request = urllib.request.Request(
            gateway.stow.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            code, answer = response.status, json.loads(response.read())
        wrong = urllib.request.Request(gateway.stow.url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(wrong, timeout=30)
        assert e.value.code == 415
    small = settings.model_copy(update={"max_image_bytes": 1024})  # each instance is held to the pipeline's limit
    with Gateway(small) as gateway:
        request = urllib.request.Request(
            gateway.stow.url,
            data=body,
            method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=30)
        assert e.value.code == 409
        assert [item["00081197"]["Value"] for item in json.loads(e.value.read())["00081198"]["Value"]] == [[0xC000], [0xC000]]
    assert code == 202  # one stored, one refused
    source = pydicom.dcmread(io.BytesIO(chest))
    assert answer["00081199"]["Value"][0]["00081155"]["Value"] == [source.SOPInstanceUID]
    assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    study_id, instance = study_id_for(KEY.encode(), source.StudyInstanceUID, source.SOPInstanceUID)
    assert (settings.data_dir / "images" / "incoming" / study_id / f"{instance}.dcm").read_bytes() == chest


def test_success_only_after_the_store_returned(tmp_path):
    class FullDisk(LocalObjectStore):
        def put_bytes(self, *args, **kwargs):
            from shared.errors import StorageUnavailable

            raise StorageUnavailable("local store: ENOSPC")

    receiver = Receiver(FullDisk(tmp_path), "images", KEY.encode())
    with pytest.raises(Refused) as e:
        receiver.receive(cr_instance("explicit-le"))
    assert e.value.status == 0xA700
    stored = Receiver(LocalObjectStore(tmp_path), "images", KEY.encode()).receive(cr_instance("explicit-le"))
    assert (tmp_path / "images" / stored.key).is_file()


def test_no_success_when_the_acknowledgement_cannot_be_journalled(tmp_path):
    """The local gateway journals each instance before Success (radstream gateway's on_stored); a full disk there is
    out of resources, not a Success the restarted gateway would never finish. Another handing-on error stays Success."""
    import errno

    def journal_on_a_full_disk(received):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(Refused) as e:
        Receiver(LocalObjectStore(tmp_path), "images", KEY.encode(), on_stored=journal_on_a_full_disk).receive(cr_instance("explicit-le"))
    assert e.value.status == 0xA700

    def pipeline_bug(received):
        raise RuntimeError("the pipeline's own bug")

    stored = Receiver(LocalObjectStore(tmp_path / "other"), "images", KEY.encode(), on_stored=pipeline_bug).receive(
        cr_instance("explicit-le")
    )
    assert (tmp_path / "other" / "images" / stored.key).is_file()


def test_instances_of_one_study_share_the_pseudonym_prefix_and_differ_per_instance():
    study = generate_uid()
    a, _ = study_id_for(KEY.encode(), study, generate_uid())
    b, _ = study_id_for(KEY.encode(), study, generate_uid())
    other, _ = study_id_for(b"another-key-0123456789", study, generate_uid())
    assert a.split(".")[0] == b.split(".")[0] != other.split(".")[0] and a != b


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_radstream_gateway_command_prints_its_addresses_and_runs_what_it_receives(tmp_path, stop):
    """`radstream gateway` as a user starts it: a process on free ports; storescu sends; the study's line says it succeeded.
    Ctrl-C or SIGTERM (a supervisor's stop) ends it cleanly, exit code 0."""
    import os
    import re
    import signal
    import sys
    import time

    path = tmp_path / "cr.dcm"
    path.write_bytes(cr_instance())
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "radstream.cli", "gateway", "--data-dir", str(tmp_path / "data"), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[3],
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120

        def read_until(pattern: str) -> re.Match:
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line:
                    pytest.fail(f"radstream gateway exited ({process.poll()}): {''.join(lines)}")
                lines.append(line)
                match = re.search(pattern, line)
                if match:
                    return match
            pytest.fail(f"radstream gateway printed no {pattern!r} within 120 s: {''.join(lines)}")

        ae = read_until(r"^AE title: (\S+)").group(1)
        port = read_until(r"^DIMSE: +127\.0\.0\.1 port (\d+)").group(1)
        stow = read_until(r"^STOW-RS: +(http://127\.0\.0\.1:\d+/studies)").group(1)
        sent = run([tool("storescu"), "-xt", "-aec", ae, "127.0.0.1", port, str(path)])
        assert sent.returncode == 0, sent.stderr
        study = read_until(r"^study (\S+): (\w+)")
        assert study.group(2) == "succeeded", "".join(lines)
        assert (tmp_path / "data" / "results" / "results" / study.group(1) / "report.sr.dcm").is_file()
        assert stow.endswith("/studies") and ae == "RADSTREAM"
        assert (tmp_path / "data" / "gateway" / "pseudonym.key").stat().st_mode & 0o077 == 0, "the key is the owner's only"
    finally:
        process.send_signal(getattr(signal, stop))
        try:
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_gateway_settings_come_from_the_environment_and_are_checked():
    from shared.errors import ConfigurationError

    settings = Settings.from_env(
        {
            "GATEWAY_DIMSE_PORT": "104",
            "GATEWAY_ALLOWED_CALLING_AES": "CR_ROOM_1, DX_ROOM_2,",
            "GATEWAY_MAX_PDU": "0",
            "GATEWAY_PSEUDONYM_KEY": KEY,
            "EXPORT_DICOM_PEER": "PACS@10.0.0.5:104",
        }
    )
    assert (settings.gateway_dimse_port, settings.gateway_allowed_ae_list, settings.gateway_max_pdu) == (104, ["CR_ROOM_1", "DX_ROOM_2"], 0)
    assert settings.export_dicom_peer == "PACS@10.0.0.5:104"
    assert KEY not in repr(settings), "the HMAC key is a secret"
    for variable, value in (("GATEWAY_AE_TITLE", "A" * 17), ("GATEWAY_DIMSE_PORT", "70000"), ("GATEWAY_PSEUDONYM_KEY", "short")):
        with pytest.raises(ConfigurationError, match=variable):
            Settings.from_env({variable: value})
    with pytest.raises(ConfigurationError, match="GATEWAY_PSEUDONYM_KEY must be set"):
        Gateway(Settings(gateway_dimse_port=0, gateway_http_port=0))
    with pytest.raises(ConfigurationError, match="AE_TITLE@host:port"):
        from services.export.deliver import DicomPeer

        DicomPeer.parse("PACS:104")
