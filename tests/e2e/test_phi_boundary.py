"""The PHI boundary (docs/phi.md): a DICOM's patient data stays in the images bucket, and its identifiers
reach exactly three places besides: the identifier block of the study's result, and the two exports
addressed back to the hospital (results/<study_id>/report.sr.dcm, report.overlay.dcm and report.fhir.json)."""

from __future__ import annotations

import gzip
import io
import json
import logging
from pathlib import Path

import numpy as np
import pydicom

from synthetic.phantoms import generate_phantom
from radstream.runtime import LocalRuntime
from synthetic.samples import dicom_bytes
from shared.observability import logger
from shared.settings import Settings

NAME, BIRTH_DATE, ACCESSION = "PHIPATIENT^ALICE", "19580412", "ACC7731942"


def every_file(data_dir: Path) -> dict[Path, bytes]:
    """Every file the run left, gzip members decompressed (the telemetry lake)."""
    files = {}
    for path in data_dir.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            files[path] = gzip.decompress(raw) if path.suffix == ".gz" else raw
    return files


def test_identifiers_reach_the_result_and_nothing_else(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every library's log lines too (highdicom's name the source by its UID)
    pixels = np.round(generate_phantom(np.random.default_rng(5), size=256).image * 4095)
    data = dicom_bytes(pixels, patient_name=NAME, birth_date=BIRTH_DATE, accession_number=ACCESSION)
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    study = tmp_path / "studies" / "phi-study"
    study.mkdir(parents=True)
    (study / "study.dcm").write_bytes(data)
    # The same patient in a study the pipeline refuses: the failure path (record, event, telemetry) must hold too.
    refused = tmp_path / "studies" / "phi-refused"
    refused.mkdir(parents=True)
    (refused / "study.dcm").write_bytes(
        dicom_bytes(pixels, patient_name=NAME, birth_date=BIRTH_DATE, accession_number=ACCESSION, body_part="ABDOMEN")
    )

    data_dir = tmp_path / "data"
    with LocalRuntime(Settings(data_dir=data_dir), workers=1) as runtime:
        outcomes = {o.study_id: o for o in runtime.run_many([study, refused]).outcomes}
    assert outcomes["phi-study"].status == "succeeded", outcomes["phi-study"].message
    assert (outcomes["phi-refused"].status, outcomes["phi-refused"].stage) == ("failed", "validate")

    result_path = data_dir / "results/results/phi-study/result.json"
    result = json.loads(result_path.read_text())
    identifiers = {
        "StudyInstanceUID": header.StudyInstanceUID,
        "SeriesInstanceUID": header.SeriesInstanceUID,
        "SOPInstanceUID": header.SOPInstanceUID,
        "AccessionNumber": ACCESSION,
    }
    assert result["identifiers"] == identifiers
    assert (result["modality"], result["view_position"]) == ("DX", "PA")
    assert 0 < result["end_to_end_ms"] < 60_000

    patient = [NAME.encode(), b"PHIPATIENT", str(header.PatientID).encode(), BIRTH_DATE.encode()]
    keys = [v.encode() for v in identifiers.values()]
    files = every_file(data_dir)
    kinds = {p.relative_to(data_dir).parts[0] for p in files}
    # The tensors (artifacts bucket) stay in memory in the embedded mode (shared/wiring.py): nothing of them on disk.
    assert {"images", "results", "telemetry", "logs", "traces", "events", "journal"} <= kinds and "artifacts" not in kinds, kinds
    # The exports carry the patient and study modules by design: the SR is filed with the study, the FHIR
    # DiagnosticReport is about this Patient, the overlay (Secondary Capture) is an image of the study. Each must hold
    # them (else a PACS or EHR could not file them).
    exports = {data_dir / f"results/results/phi-study/report.{kind}" for kind in ("sr.dcm", "overlay.dcm", "fhir.json")}
    for path in exports:
        assert NAME.split("^")[0].encode() in files[path] and str(header.PatientID).encode() in files[path], path
        assert header.StudyInstanceUID.encode() in files[path], path
    assert not list(data_dir.glob("results/results/phi-refused/report.*")), "a refused study exports nothing"
    logged = "\n".join(logger.registered_formatter.format(r) for r in caplog.records)  # the messages and their fields
    for value in [*(v.decode() for v in patient), *identifiers.values()]:
        assert value not in logged, value
    for path, content in files.items():
        if path.is_relative_to(data_dir / "images/incoming") or path in exports:
            continue  # the inputs, kept as uploaded; the exports, addressed back to the hospital
        for value in patient:
            assert value not in content, (value, path)
        if path == result_path:
            # The identifiers appear once each, in the identifier block and nowhere else in the result.
            outside = json.dumps({k: v for k, v in result.items() if k != "identifiers"}).encode()
            assert not any(value in outside for value in keys)
            continue
        for value in keys:
            assert value not in content, (value, path)
