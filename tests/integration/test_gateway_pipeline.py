"""The gateway in front of the local pipeline: what a modality sends runs through the workflow and comes back as an
SR, an overlay and a FHIR bundle; `radstream gateway` as a user starts it. Real peers (dcmtk's echoscu, storescu,
dsrdump); a peer that cannot run fails."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from radstream.runtime import LocalRuntime
from services.export import codes
from services.gateway.domain import study_id_for
from services.gateway.server import Gateway, LocalPipeline
from shared.observability import logger
from shared.settings import Settings
from synthetic.instances import KEY, NAME, PATIENT_ID, cr_instance, gateway_settings
from synthetic.peers import run, tool
from synthetic.transfer_syntaxes import SYNTAXES

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "data")


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

    # No log line (ours, pynetdicom's, the stages'), message or field, carries a UID or a patient value, at any level.
    lines = [json.loads(logger.registered_formatter.format(r)) for r in caplog.records]
    assert any(line["message"] == "instance stored" and line.get("study_id") == study_id for line in lines)
    text = "\n".join(map(json.dumps, lines))
    for value in (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, NAME, PATIENT_ID):
        assert value not in text, value
    # The patient module is nowhere else but the input, the SR, the overlay and the FHIR bundle.
    for file in settings.data_dir.rglob("*"):
        if file.is_file() and file.name not in ("report.sr.dcm", "report.overlay.dcm", "report.fhir.json") and "incoming" not in file.parts:
            assert NAME.encode() not in file.read_bytes() and PATIENT_ID.encode() not in file.read_bytes(), file


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
        cwd=ROOT,
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


def test_the_gateway_command_prints_each_log_line_once(tmp_path):
    """`radstream gateway`, as a user starts it: one C-ECHO and one rejected association make one line each, not two."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out, err = open(tmp_path / "out", "w+"), open(tmp_path / "err", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "radstream.cli", "gateway", "--data-dir", str(tmp_path / "data"), "--workers", "1"],
        stdout=out,
        stderr=err,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not re.search(r"DIMSE: +127\.0\.0\.1 port (\d+)", (tmp_path / "out").read_text()):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "out").read_text() + (tmp_path / "err").read_text()
            time.sleep(0.1)
        port = re.search(r"DIMSE: +127\.0\.0\.1 port (\d+)", (tmp_path / "out").read_text()).group(1)
        assert run([tool("echoscu"), "-aet", "ONCE", "-aec", "RADSTREAM", "127.0.0.1", port]).returncode == 0
        rejected = run([tool("echoscu"), "-aet", "ONCE", "-aec", "WRONGAE", "127.0.0.1", port])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
    text = (tmp_path / "out").read_text() + (tmp_path / "err").read_text()
    assert len([line for line in text.splitlines() if "C-ECHO" in line and "ONCE" in line]) == 1, text
    assert rejected.returncode != 0
    assert text.count("association rejected") == 1, text


def test_the_senders_priority_reaches_the_result_when_the_order_gives_none(settings):
    """pynetdicom as the modality: C-STORE with Priority HIGH. An instance without Requested Procedure Priority
    (0040,1003) takes its sender's (urgent) into the workflow and its result; one whose order says ROUTINE keeps the
    order's; a MEDIUM association is routine and leaves no record beside the instance."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    from radstream.local_aws import s3_event
    from shared import priority

    sent = {}
    for name, order, dimse in (("no-order-high", None, 1), ("routine-order-high", "ROUTINE", 1), ("no-order-medium", None, 0)):
        ds = pydicom.dcmread(io.BytesIO(cr_instance("explicit-le", seed=len(sent) + 5, size=256)))
        if order:
            ds.RequestedProcedurePriority = order
        sent[name] = (ds, dimse)
    with LocalRuntime(settings, workers=1) as runtime:
        # The template's rule starts no workflow for the record: only for the instance beside it.
        assert runtime.route(s3_event(settings.images_bucket, priority.sender_key("incoming/s/i.dcm"), 20)) == []
        assert runtime.route(s3_event(settings.images_bucket, "incoming/s/i.dcm", 20))
        pipeline = LocalPipeline(runtime, workers=1)
        with Gateway(settings, store=runtime.store, on_stored=pipeline) as gateway:
            scu = AE(ae_title="MODALITY")
            scu.add_requested_context(ComputedRadiographyImageStorage, SYNTAXES["explicit-le"].uid)
            assoc = scu.associate("127.0.0.1", gateway.dimse.port, ae_title=gateway.ae_title)
            assert assoc.is_established, "the gateway did not accept the association"
            try:
                for ds, dimse in sent.values():
                    status = assoc.send_c_store(ds, priority=dimse)
                    assert status and status.Status == 0x0000, status
            finally:
                assoc.release()
        outcomes = {key: future.result(timeout=300) for key, future in pipeline.futures.items()}
        pipeline.close()
    expected = {"no-order-high": "urgent", "routine-order-high": "routine", "no-order-medium": "routine"}
    for name, (ds, _) in sent.items():
        study_id, instance = study_id_for(KEY.encode(), ds.StudyInstanceUID, ds.SOPInstanceUID)
        key = f"incoming/{study_id}/{instance}.dcm"
        assert outcomes[key].status == "succeeded", outcomes[key].message
        result = json.loads((settings.data_dir / "results" / "results" / study_id / "result.json").read_text())
        assert result["priority"] == expected[name], name
        recorded = settings.data_dir / "images" / priority.sender_key(key)
        assert recorded.is_file() == (name != "no-order-medium"), name  # a routine association records nothing
