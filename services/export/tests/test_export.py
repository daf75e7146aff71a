"""Export service: the SR and FHIR bundle say what result.json says, for the source's patient and study; or nothing, with why."""

from __future__ import annotations

import base64
import io
import json
import uuid

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from synthetic.samples import dicom_bytes
from services.export.domain import export_result
from synthetic.states import state, stored_result, with_dicom_upload
from shared.errors import InvalidImage, PermanentError
from shared.messages import ExportRequest
from shared.storage import LocalObjectStore


def dicom_state(store: LocalObjectStore, data: bytes, execution_id: str = "e1") -> dict:
    """state() with `data` as its DICOM upload, and result.json as StoreResults writes it (synthetic.states.stored_result)."""
    s = with_dicom_upload(state(), store, data)
    result = store.put_bytes("results", "results/s1/result.json", json.dumps(stored_result(s, execution_id)).encode())
    s["stored"] = {"study_id": "s1", "result": {"bucket": "results", "key": result.key}, "positive_findings": ["Edema"]}
    return s


def export(s: dict, store: LocalObjectStore, execution_id: str = "e1"):
    return export_result(
        ExportRequest.model_validate({"study": s["study"], "stored": s["stored"], "execution_id": execution_id}), store, "results"
    )


def test_sr_and_fhir_carry_the_result_for_the_sources_patient(tmp_path):
    store = LocalObjectStore(tmp_path)
    data = dicom_bytes(np.zeros((64, 64)), patient_name="EXPORT^PAT", accession_number="ACC-1", birth_date="19700101")
    source = pydicom.dcmread(io.BytesIO(data))
    out = export(dicom_state(store, data), store)
    assert (out.sr.key, out.fhir.key) == ("results/s1/report.sr.dcm", "results/s1/report.fhir.json")
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(store.get_bytes("results", out.sr.key))))
    assert (sr.StudyInstanceUID, str(sr.PatientName), sr.AccessionNumber) == (source.StudyInstanceUID, "EXPORT^PAT", "ACC-1")
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.Modality == "SR"
    assert "99RADSTREAM" in {s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence}
    groups = {g.finding_type.meaning: g for g in sr.content.get_image_measurement_groups()}
    # Findings coded in SNOMED CT, as FHIR codes them; the box's model-specific label keeps its declared private code.
    assert set(groups) == {"Pulmonary edema", "Cardiomegaly"}
    assert (groups["Pulmonary edema"].finding_type.value, groups["Pulmonary edema"].finding_type.scheme_designator) == ("19242006", "SCT")
    assert groups["Pulmonary edema"].get_qualitative_evaluations()[0].value.value == "52101004"  # Present
    assert groups["Cardiomegaly"].get_qualitative_evaluations()[0].value.value == "272519000"  # Absent
    measured = {m.name.value: m.value for m in groups["Pulmonary edema"].get_measurements()}
    assert measured == {"111012": 0.8, "111071": 0.5}  # DCM Certainty of Finding, CAD Operating Point
    (box,) = sr.content.get_planar_roi_measurement_groups()
    np.testing.assert_allclose(box.roi.value, [[10, 20], [30, 20], [30, 40], [10, 40], [10, 20]])
    assert (box.finding_type.value, box.finding_type.scheme_designator) == ("nodule_mass", "99RADSTREAM")
    bundle = json.loads(store.get_bytes("results", out.fhir.key))
    Bundle.model_validate(bundle)
    by_type: dict[str, list] = {}
    for entry in bundle["entry"]:
        assert str(uuid.UUID(entry["fullUrl"].removeprefix("urn:uuid:"))) == entry["fullUrl"][9:] and entry["fullUrl"].startswith(
            "urn:uuid:"
        )
        assert entry["resource"]["meta"]["profile"]
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    urls = {e["fullUrl"] for e in bundle["entry"]}
    (report,) = by_type["DiagnosticReport"]
    assert report["status"] == "preliminary" and len(report["result"]) == 3
    assert {r["reference"] for r in report["result"] + [report["subject"]] + report["imagingStudy"]} <= urls, "every reference resolves"
    # presentedForm carries the SR itself.
    (form,) = report["presentedForm"]
    assert base64.b64decode(form["data"]) == store.get_bytes("results", out.sr.key) and form["contentType"] == "application/dicom"
    edema = next(o for o in by_type["Observation"] if o["code"]["coding"][0]["code"] == "19242006")
    assert edema["component"][0]["code"]["coding"][0] == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "111012",
        "display": "Certainty of Finding",
    }
    assert edema["component"][0]["valueQuantity"]["value"] == 0.8
    (patient,) = by_type["Patient"]
    assert patient["birthDate"] == "1970-01-01" and patient["identifier"][0]["system"]
    (study,) = by_type["ImagingStudy"]
    assert study["identifier"][0] == {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{source.StudyInstanceUID}"}
    # A retried export rewrites the same SR; a re-run (a new execution) makes a new one.
    assert export(dicom_state(store, data), store).sr == out.sr
    again = pydicom.dcmread(io.BytesIO(store.get_bytes("results", out.sr.key)))
    assert again.SOPInstanceUID == sr.SOPInstanceUID
    export(dicom_state(store, data, execution_id="e2"), store, execution_id="e2")
    assert pydicom.dcmread(io.BytesIO(store.get_bytes("results", out.sr.key))).SOPInstanceUID != sr.SOPInstanceUID


def test_a_source_without_its_study_uid_is_not_exported_and_says_why(tmp_path):
    store = LocalObjectStore(tmp_path)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((64, 64)))))
    del ds.StudyInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    out = export(dicom_state(store, buffer.getvalue()), store)
    assert out.sr is None and out.fhir is None and "StudyInstanceUID" in out.skipped
    assert store.list_keys("results", "results/s1/report.") == []  # no SR, overlay or FHIR bundle beside result.json


def test_a_replaced_source_and_a_png_study_are_refused(tmp_path):
    store = LocalObjectStore(tmp_path)
    s = dicom_state(store, dicom_bytes(np.zeros((64, 64))))
    store.put_bytes("images", "incoming/s1/study.dcm", dicom_bytes(np.ones((64, 64))))
    with pytest.raises(InvalidImage, match="changed in the images bucket"):
        export(s, store)
    s["study"]["image"]["format"] = "png"
    with pytest.raises(PermanentError, match="DICOM studies"):
        export(s, store)


def test_overlay_is_a_secondary_capture_of_the_source_with_the_boxes_burned_in(tmp_path):
    import shutil
    import subprocess

    from shared.pixels import decode_dicom

    store = LocalObjectStore(tmp_path)
    gradient = np.tile(np.linspace(500, 3500, 256), (200, 1))  # 200 rows x 256 columns, 12-bit, left dark, right bright
    data = dicom_bytes(gradient, patient_name="OVERLAY^PAT", accession_number="ACC-2")
    source = pydicom.dcmread(io.BytesIO(data))
    out = export(dicom_state(store, data), store)
    assert out.overlay.key == "results/s1/report.overlay.dcm"
    overlay_file = tmp_path / "overlay.dcm"
    overlay_file.write_bytes(store.get_bytes("results", out.overlay.key))
    sc = pydicom.dcmread(overlay_file)
    sr = pydicom.dcmread(io.BytesIO(store.get_bytes("results", out.sr.key)))
    # Filed with the source's patient and study, in a series of its own (neither the source's nor the SR's).
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert (sc.StudyInstanceUID, str(sc.PatientName), sc.PatientID, sc.AccessionNumber) == (
        source.StudyInstanceUID,
        "OVERLAY^PAT",
        source.PatientID,
        "ACC-2",
    )
    assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, sr.SeriesInstanceUID) and sc.SeriesNumber == 9902
    assert "not for clinical use" in sc.SeriesDescription
    # The picture: the source as prepare decodes it, grey (R = G = B), except the box [10, 20, 30, 40] drawn in red on
    # the pixels it covers (columns 10..29, rows 20..39); its label and the draft notice above it, nothing below.
    pixels = sc.pixel_array.astype(int)
    assert pixels.shape == (200, 256, 3)
    expected = np.rint(decode_dicom(data, "s1").pixels * 255).astype(int)
    red = np.array([255, 32, 32])
    for row, column in [(20, 10), (20, 29), (39, 10), (39, 29), (20, 20), (39, 20), (30, 10), (30, 29)]:
        assert (pixels[row, column] == red).all(), (row, column, pixels[row, column])
    inside = pixels[21:39, 11:29]
    assert (inside == expected[21:39, 11:29, None]).all(), "the inside of the box shows the image"
    untouched = pixels[41:, :]
    assert (untouched == expected[41:, :, None]).all(), "below the box the image is unchanged"
    assert (pixels[20:40, 31:] == expected[20:40, 31:, None]).all(), "right of the box the image is unchanged"
    assert not (pixels[:19] == expected[:19, :, None]).all(), "the label and the notice are drawn above the box"
    # Deterministic UIDs, as the SR's: a retried export rewrites the same instance, a re-run makes a new one.
    assert (
        pydicom.dcmread(io.BytesIO(store.get_bytes("results", export(dicom_state(store, data), store).overlay.key))).SOPInstanceUID
        == sc.SOPInstanceUID
    )
    # dcmtk reads it; dicom3tools' IOD checker (Debian's dicom3tools, `make dcmtk`) finds no error in it.
    assert shutil.which("dcmdump") and shutil.which("dciodvfy"), "dcmtk and dicom3tools are needed: `make dcmtk` installs them"
    dump = subprocess.run(["dcmdump", str(overlay_file)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "SecondaryCaptureImageStorage" in dump.stdout and "BurnedInAnnotation" in dump.stdout, dump.stderr
    verify = subprocess.run(["dciodvfy", str(overlay_file)], capture_output=True, text=True, timeout=60)
    report = verify.stdout + verify.stderr
    assert "SCImage" in report and not [line for line in report.splitlines() if line.startswith("Error")], report


def test_quality_flags_travel_with_the_findings_in_the_sr_and_fhir(tmp_path):
    """A result whose input looked wrong says so in what goes back to the hospital, beside findings it never changed."""
    store = LocalObjectStore(tmp_path)
    s = dicom_state(store, dicom_bytes(np.zeros((64, 64))))
    result = json.loads(store.get_bytes("results", "results/s1/result.json"))
    result["input"]["quality_flags"] = ["polarity_suspicious"]
    store.put_bytes("results", "results/s1/result.json", json.dumps(result).encode())
    out = export(s, store)
    bundle = json.loads(store.get_bytes("results", out.fhir.key))
    (report,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert "polarity_suspicious" in report["conclusion"] and "findings unchanged" in report["conclusion"]
    sr = pydicom.dcmread(io.BytesIO(store.get_bytes("results", out.sr.key)))
    texts = [str(element.value) for element in sr.iterall() if element.keyword == "TextValue"]
    assert any("polarity_suspicious" in text for text in texts), texts


def test_a_picture_of_a_few_pixels_still_gets_its_overlay(tmp_path):
    """pydicom's SC_rgb_small_odd (3 x 3 RGB) as a chest SC: CharLS cannot code it, so the overlay goes uncompressed."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    store = LocalObjectStore(tmp_path)
    out = export(dicom_state(store, buffer.getvalue()), store)
    overlay = pydicom.dcmread(io.BytesIO(store.get_bytes("results", out.overlay.key)))
    assert (overlay.Rows, overlay.Columns, overlay.SamplesPerPixel) == (3, 3, 3)
    assert overlay.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
