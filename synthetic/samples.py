"""Demo studies: synthetic chest-X-ray-like phantoms (labelled as such) with sidecars, and some broken on purpose."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timedelta, UTC
from pathlib import Path

import cv2
import numpy as np

from synthetic.phantoms import generate_phantom, to_uint8, to_uint16

SOURCE = "radstream-demo/synthetic-phantom"


def sidecar(study_id: str, image: str, rng: np.random.Generator, data: bytes | None = None) -> dict:
    acquired = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=int(rng.integers(0, 500_000)))
    doc = {
        "schema_version": "1",
        "study_id": study_id,
        "image": image,
        "modality": str(rng.choice(["CR", "DX"])),
        "body_part": "CHEST",
        "view_position": str(rng.choice(["PA", "AP"])),
        "patient": {
            "pseudo_id": f"anon-{rng.integers(10**6, 10**7)}",
            "age_years": int(rng.integers(18, 95)),
            "sex": str(rng.choice(["F", "M"])),
        },
        "acquired_at": acquired.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "priority": str(rng.choice(["routine", "routine", "urgent"])),
        "source": SOURCE,
    }
    if data is not None:
        doc["sha256"] = hashlib.sha256(data).hexdigest()
    return doc


def make_sidecar(study_id: str = "study-001", image: str = "image.png", data: bytes | None = None, **overrides) -> dict:
    """One valid sidecar with fixed values (the tests' default study); `overrides` replace top-level fields."""
    doc = {
        "schema_version": "1",
        "study_id": study_id,
        "image": image,
        "modality": "DX",
        "body_part": "CHEST",
        "view_position": "PA",
        "patient": {"pseudo_id": "anon-42", "age_years": 61, "sex": "F"},
        "acquired_at": "2026-03-01T10:20:30Z",
        "priority": "routine",
        "source": "unit test",
    }
    if data is not None:
        doc["sha256"] = hashlib.sha256(data).hexdigest()
    doc.update(overrides)
    return doc


def encode(image: np.ndarray, variant: int) -> tuple[str, bytes]:
    """Rotate through the formats a study may arrive in: 8-bit PNG, 16-bit PNG, JPEG, RGB PNG."""
    if variant == 0:
        return "image.png", cv2.imencode(".png", to_uint8(image))[1].tobytes()
    if variant == 1:
        return "image.png", cv2.imencode(".png", to_uint16(image))[1].tobytes()
    if variant == 2:
        return "image.jpg", cv2.imencode(".jpg", to_uint8(image), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    return "image.png", cv2.imencode(".png", cv2.cvtColor(to_uint8(image), cv2.COLOR_GRAY2BGR))[1].tobytes()


def dicom_bytes(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    *,
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    patient_name: str = "",
    body_part: str = "CHEST",
    modality: str = "DX",
    accession_number: str = "",
    birth_date: str = "",
) -> bytes:
    """A Digital X-Ray DICOM file, uncompressed. `patient_name` (with a patient ID), `birth_date` and `accession_number`
    let tests prove where the header's PHI and identifiers go (docs/phi.md)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("study.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = patient_name, "MRN-" + "8" * 8 if patient_name else ""
    ds.PatientBirthDate, ds.AccessionNumber = birth_date, accession_number
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, body_part, "PA"
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, bits_stored, bits_stored - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom_study(folder: Path, image: np.ndarray, patient_name: str) -> Path:
    """A 12-bit MONOCHROME1 study (low values white, as many CR readers store it) with a name in its header."""
    stored = np.round((1.0 - image) * 4095)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.dcm").write_bytes(dicom_bytes(stored, "MONOCHROME1", patient_name=patient_name))
    return folder


def write_study(folder: Path, doc: dict, image_name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / image_name).write_bytes(data)
    (folder / "study.json").write_text(json.dumps(doc, indent=2) + "\n")
    return folder


def write_demo_studies(
    out: Path, count: int = 12, *, size: int = 1024, seed: int = 7, invalid: bool = True, prefix: str = "demo"
) -> list[Path]:
    """`count` valid studies <prefix>-001..., plus (with `invalid`) four that must fail, each for a reason a person can read."""
    rng = np.random.default_rng(seed)
    folders = []
    for i in range(count):
        phantom = generate_phantom(rng, size=size)
        name, data = encode(phantom.image, i % 4)
        study_id = f"{prefix}-{i + 1:03d}"
        folders.append(write_study(out / study_id, sidecar(study_id, name, rng, data), name, data))
    if count:
        # A DICOM study carries its own metadata, and a patient's name in its header that must go no further.
        folders.append(write_dicom_study(out / f"{prefix}-dicom", generate_phantom(rng, size=size).image, patient_name="DOE^JOHN"))
    if invalid:
        good = generate_phantom(rng, size=size)
        _, png = encode(good.image, 0)
        # A sidecar that carries a patient's name: refused, and the name never reaches any output.
        doc = sidecar("bad-phi", "image.png", rng) | {"patient_name": "DOE^JANE"}
        folders.append(write_study(out / "bad-phi", doc, "image.png", png))
        # A text file wearing a .png name.
        folders.append(write_study(out / "bad-format", sidecar("bad-format", "image.png", rng), "image.png", b"not an image at all\n" * 8))
        # An image that decodes to one flat value.
        flat = cv2.imencode(".png", np.full((512, 512), 128, np.uint8))[1].tobytes()
        folders.append(write_study(out / "bad-constant", sidecar("bad-constant", "image.png", rng, flat), "image.png", flat))
        # A digest that does not match the image.
        doc = sidecar("bad-digest", "image.png", rng) | {"sha256": "0" * 64}
        folders.append(write_study(out / "bad-digest", doc, "image.png", png))
    return folders
