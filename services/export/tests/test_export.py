"""Export service: the SR and FHIR bundle say what result.json says, for the source's patient and study; or nothing, with why."""
from __future__ import annotations

import hashlib
import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from radstream.samples import dicom_bytes
from services.export.domain import export_result
from services.store.domain import store_result
from services.store.tests.test_store import state, store_event
from shared.errors import InvalidImage, PermanentError
from shared.messages import ExportRequest, StoreRequest
from shared.storage import LocalObjectStore


def dicom_state(store: LocalObjectStore, data: bytes, execution_id: str = "e1") -> dict:
    s = state()
    store.put_bytes("images", "incoming/s1/study.dcm", data)
    s["study"]["image"] |= {"key": "incoming/s1/study.dcm", "format": "dicom", "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    event = store_event(s) | {"execution_id": execution_id}
    s["stored"] = store_result(StoreRequest.model_validate(event), event, store, "results").model_dump(mode="json")
    return s


def export(s: dict, store: LocalObjectStore, execution_id: str = "e1"):
    return export_result(ExportRequest.model_validate({"study": s["study"], "stored": s["stored"], "execution_id": execution_id}), store, "results")


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
    assert set(groups) == {"Edema", "Cardiomegaly"}
    assert groups["Edema"].get_qualitative_evaluations()[0].value.meaning == "Present"
    assert groups["Cardiomegaly"].get_qualitative_evaluations()[0].value.meaning == "Absent"
    (box,) = sr.content.get_planar_roi_measurement_groups()
    np.testing.assert_allclose(box.roi.value, [[10, 20], [30, 20], [30, 40], [10, 40], [10, 20]])
    bundle = json.loads(store.get_bytes("results", out.fhir.key))
    Bundle.model_validate(bundle)
    resources = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    assert resources["report"]["status"] == "preliminary" and len(resources["report"]["result"]) == 3
    assert resources["finding-1"]["component"][0]["valueQuantity"]["value"] == 0.8
    assert resources["finding-1"]["code"]["coding"][0]["code"] == "19242006"  # Edema: SNOMED pulmonary edema
    assert resources["patient"]["birthDate"] == "1970-01-01"
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
    assert store.list_keys("results", "results/s1/report.") == ["results/s1/report.txt"]


def test_a_replaced_source_and_a_png_study_are_refused(tmp_path):
    store = LocalObjectStore(tmp_path)
    s = dicom_state(store, dicom_bytes(np.zeros((64, 64))))
    store.put_bytes("images", "incoming/s1/study.dcm", dicom_bytes(np.ones((64, 64))))
    with pytest.raises(InvalidImage, match="changed in the images bucket"):
        export(s, store)
    s["study"]["image"]["format"] = "png"
    with pytest.raises(PermanentError, match="DICOM studies"):
        export(s, store)
