"""Exports from every valid header: a matrix of CR, DX (for presentation and for processing) and Secondary Capture sources
with optional, empty, malformed and retired attributes; each SR and overlay passes dicom3tools' dciodvfy with 0 errors
(a real subprocess: missing dciodvfy fails the test), and each FHIR bundle validates.

The header forms are those real archives hold: challenge data sets that wrap CR pixels in Secondary Capture with
PatientOrientation present but empty and no pixel spacing, PatientAge written as a bare number, de-identified files
that say PatientIdentityRemoved YES without a method, Type 2 attributes left out, MONOCHROME1 and signed pixels."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from synthetic.samples import dicom_bytes
from services.export.tests.test_export import dicom_state, export
from shared.storage import LocalObjectStore

CR, DX, DX_PROCESSING, SC = (
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7",
)


def sop_class(uid: str, modality: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid
        ds.Modality = modality
        if uid == DX_PROCESSING:
            ds.PresentationIntentType = "FOR PROCESSING"

    return change


def challenge(ds: pydicom.Dataset) -> None:
    """Observation 1's files: CR pixels in a Secondary Capture, PatientOrientation present but empty, no spacing."""
    sop_class(SC, "CR")(ds)
    ds.PatientOrientation = ""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        if keyword in ds:
            delattr(ds, keyword)


def setting(**values: object) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return change


def removing(*keywords: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)

    return change


def raw(keyword_tag: int, vr: str, value: bytes) -> Callable[[pydicom.Dataset], None]:
    """An attribute written as raw bytes, whatever its VR allows (as a foreign writer does)."""

    def change(ds: pydicom.Dataset) -> None:
        from pydicom.dataelem import RawDataElement

        ds[keyword_tag] = RawDataElement(pydicom.tag.Tag(keyword_tag), vr, len(value), value, 0, False, True)  # type: ignore[assignment]

    return change


def monochrome1(ds: pydicom.Dataset) -> None:
    ds.PhotometricInterpretation = "MONOCHROME1"


def signed(ds: pydicom.Dataset) -> None:
    pixels = ds.pixel_array.astype(np.int32) - 2048
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.RescaleIntercept = 2048


HEADERS: dict[str, list[Callable[[pydicom.Dataset], None]]] = {
    "dx-presentation": [setting(ImagerPixelSpacing=[0.143, 0.143], PatientOrientation=["A", "F"])],
    "dx-processing": [sop_class(DX_PROCESSING, "DX"), setting(ImagerPixelSpacing=[0.1, 0.1])],
    "cr": [sop_class(CR, "CR"), setting(PatientOrientation=["P", "F"], PixelSpacing=[0.2, 0.2])],
    "sc-challenge": [challenge, setting(PatientAge="62", PatientIdentityRemoved="YES"), removing("StudyID")],
    "sc-dx-no-orientation": [sop_class(SC, "DX"), removing("PatientOrientation", "ImagerPixelSpacing", "PixelSpacing")],
    "orientation-absent": [removing("PatientOrientation")],
    "orientation-compound": [setting(PatientOrientation=["A", "FR"])],
    "orientation-one-value": [raw(0x00200020, "CS", b"L ")],
    "orientation-invalid": [raw(0x00200020, "CS", b"left\\foot ")],
    "orientation-padded": [raw(0x00200020, "CS", b" A\\F ")],
    "spacing-zero": [raw(0x00181164, "DS", b"0\\0 ")],
    "spacing-one-value": [raw(0x00181164, "DS", b"0.2 ")],
    "age-bare-number": [raw(0x00101010, "AS", b"62")],
    "age-with-space": [raw(0x00101010, "AS", b"7 M ")],
    "age-garbage": [raw(0x00101010, "AS", b"old ")],
    "age-valid": [setting(PatientAge="045Y")],
    "identity-removed-no-method": [setting(PatientIdentityRemoved="YES")],
    "identity-removed-with-method": [setting(PatientIdentityRemoved="YES", DeidentificationMethod="Basic profile")],
    "no-type2-identifiers": [
        removing(
            "StudyID",
            "AccessionNumber",
            "ReferringPhysicianName",
            "StudyDate",
            "StudyTime",
            "PatientBirthDate",
            "PatientSex",
            "PatientName",
            "PatientID",
        )
    ],
    "dates-malformed": [raw(0x00100030, "DA", b"1970-01-01"), raw(0x00080020, "DA", b"2019/03/01"), raw(0x00080030, "TM", b"25:99:00")],
    "sex-word": [raw(0x00100040, "CS", b"male")],
    "id-too-long": [raw(0x00100020, "LO", b"X" * 70), raw(0x00080050, "SH", b"A" * 20)],
    "name-latin1-with-charset": [setting(SpecificCharacterSet="ISO_IR 100", PatientName="M\u00fcller^J\u00fcrgen")],
    "name-latin1-without-charset": [raw(0x00100010, "PN", "M\u00fcller^Ana".encode("latin-1"))],
    "charset-unknown": [raw(0x00080005, "CS", b"ISO_IR 999"), setting(PatientName="PLAIN^NAME")],
    "laterality-invalid": [raw(0x00200060, "CS", b"left")],
    "retired-attributes": [setting(OtherPatientIDs="OLD-1"), raw(0x00080040, "US", b"\x00\x00")],  # (0008,0040) Data Set Type, retired
    "monochrome1": [monochrome1, setting(PatientOrientation=["A", "F"])],
    "signed-pixels": [signed],
    "odd-size": [],
}


def source(changes: list[Callable[[pydicom.Dataset], None]], columns: int = 96) -> bytes:
    rows = 80 if columns == 96 else columns
    picture = np.round(np.tile(np.linspace(200, 3800, columns), (rows, 1)))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(picture, patient_name="MATRIX^PATIENT", accession_number="ACC-9", birth_date="19620301")))
    ds.StudyID, ds.ReferringPhysicianName, ds.StudyDate, ds.StudyTime, ds.PatientSex = "S1", "REF^DOC", "20260301", "101500", "F"
    for change in changes:
        change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dciodvfy(path: Path) -> tuple[list[str], list[str], str]:
    assert shutil.which("dciodvfy"), "dciodvfy (Debian's dicom3tools) is needed: `make dcmtk` installs it"
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    report = run.stdout + run.stderr
    lines = report.splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")], report


@pytest.mark.parametrize("name", list(HEADERS))
def test_every_valid_header_gives_an_sr_and_overlay_without_iod_errors(name, tmp_path):
    store = LocalObjectStore(tmp_path / "data")
    data = source(HEADERS[name], columns=97 if name == "odd-size" else 96)
    out = export(dicom_state(store, data), store)
    counts = {}
    for kind, ref, iod in (("sr", out.sr, "Comprehensive3DSR"), ("overlay", out.overlay, "SCImage")):
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(store.get_bytes("results", ref.key))
        errors, warnings, report = dciodvfy(path)
        assert iod in report, report
        assert errors == [], f"{name} {kind}:\n{report}"
        counts[kind] = len(warnings)
    bundle = json.loads(store.get_bytes("results", out.fhir.key))
    Bundle.model_validate(bundle)
    print(f"{name}: dciodvfy 0 errors; warnings sr={counts['sr']} overlay={counts['overlay']}")


def test_copied_values_are_valid_for_their_vr_or_left_out(tmp_path):
    """PatientAge normalised to AS, a de-identified source's method stated, malformed values left out, Type 2 kept empty."""
    store = LocalObjectStore(tmp_path / "data")
    data = source(
        [
            challenge,
            raw(0x00101010, "AS", b"62"),
            setting(PatientIdentityRemoved="YES"),
            removing("StudyID"),
            raw(0x00100030, "DA", b"1962-03-01"),
            raw(0x00100040, "CS", b"female"),
        ]
    )
    out = export(dicom_state(store, data), store)
    for ref in (out.sr, out.overlay):
        ds = pydicom.dcmread(io.BytesIO(store.get_bytes("results", ref.key)))
        assert ds.PatientAge == "062Y"
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert "StudyID" in ds and ds.StudyID == ""
        assert ds.PatientBirthDate == "" and ds.PatientSex == ""
        assert str(ds.PatientName) == "MATRIX^PATIENT" and ds.AccessionNumber == "ACC-9"
    bundle = json.loads(store.get_bytes("results", out.fhir.key))
    (patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert "birthDate" not in patient and "gender" not in patient
