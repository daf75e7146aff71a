"""Validate stage: the sidecar schema, the image cross-checks, and errors that name field and study but no PHI."""

from __future__ import annotations

import re

import json

import pytest

from synthetic.images import gradient_png, jpeg_claiming, one_bit_png
from synthetic.samples import make_sidecar
from services.validate.domain import ValidateRequest, validate_study
from shared.imageheader import sniff_format
from shared.errors import InvalidImage, InvalidStudy


def validate(store, key: str, max_bytes: int = 10_000_000):
    return validate_study(ValidateRequest(bucket="images", key=key, execution_id="exec-1"), store, max_bytes)


def test_valid_study_reports_digest_format_and_no_patient_block(store, upload):
    image = gradient_png()
    key = upload(make_sidecar(data=image), image)
    out = validate(store, key)
    assert out.study_id == "study-001"
    assert out.image.format == "png" and out.image.size_bytes == len(image)
    assert out.image.key == "incoming/study-001/image.png"
    dumped = out.model_dump_json()
    assert "anon-42" not in dumped and "patient" not in dumped


def test_sidecar_with_a_name_is_refused_without_echoing_it(store, upload):
    image = gradient_png()
    key = upload(make_sidecar(patient_name="DOE^JANE", patient={"pseudo_id": "x1", "age_years": 50, "sex": "F", "mrn": "12345678"}), image)
    with pytest.raises(InvalidStudy) as err:
        validate(store, key)
    message = str(err.value)
    assert "patient_name" in message and "patient: field(s) mrn not allowed" in message
    assert "DOE^JANE" not in message and "12345678" not in message
    assert message.startswith("study study-001:")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"modality": "CT"}, "modality: must be one of CR, DX"),
        ({"view_position": "XX"}, "view_position: must be one of"),
        ({"patient": {"pseudo_id": "a", "age_years": 200, "sex": "F"}}, "patient.age_years: must be at most 130"),
        ({"acquired_at": "yesterday"}, "acquired_at: has characters or a form"),
        ({"schema_version": "2"}, "schema_version: must be '1'"),
    ],
)
def test_each_schema_error_names_its_field(store, upload, override, expected):
    image = gradient_png()
    with pytest.raises(InvalidStudy, match=expected):
        validate(store, upload(make_sidecar(**override), image))


@pytest.mark.parametrize(
    "when",
    ["2026-13-45T25:61:61Z", "2026-02-30T10:00:00Z", "2026-04-31T00:00:00+01:00", "2026-01-01T24:00:00Z", "2026-01-01T10:00:00+25:00"],
)
def test_acquired_at_must_be_a_real_date_time(store, upload, when):
    with pytest.raises(InvalidStudy, match="acquired_at: is not a real date-time") as err:
        validate(store, upload(make_sidecar(acquired_at=when), gradient_png()))
    assert when not in str(err.value), "the message names the field, never its value"


@pytest.mark.parametrize("when", ["2024-02-29T23:59:59Z", "2026-12-07T10:00:00.123456+05:30", "2026-01-01T00:00:00-00:00"])
def test_a_real_acquired_at_is_accepted(store, upload, when):
    assert validate(store, upload(make_sidecar(acquired_at=when), gradient_png())).study_id == "study-001"


def test_missing_fields_are_listed(store, upload):
    doc = make_sidecar()
    del doc["modality"], doc["acquired_at"]
    with pytest.raises(InvalidStudy, match="missing required field\\(s\\) modality, acquired_at"):
        validate(store, upload(doc, gradient_png()))


def test_broken_json_says_where(store, upload):
    with pytest.raises(InvalidStudy, match="not valid JSON at line 1, column"):
        validate(store, upload(b'{"study_id": ', gradient_png()))


def test_study_id_must_match_the_upload_prefix(store, upload):
    with pytest.raises(InvalidStudy, match="sidecar says study_id 'other' but it was uploaded under incoming/study-001/"):
        validate(store, upload(make_sidecar(study_id="other"), gradient_png()))


def test_missing_image(store, upload):
    with pytest.raises(InvalidStudy, match="image 'image.png' named by the sidecar is not in incoming/study-001/"):
        validate(store, upload(make_sidecar(), None))


def test_format_is_judged_by_content_not_extension(store, upload):
    with pytest.raises(InvalidImage, match="not PNG, JPEG or DICOM"):
        validate(store, upload(make_sidecar(), b"GIF89a" + b"\0" * 200))


def test_digest_mismatch(store, upload):
    with pytest.raises(InvalidImage, match="sha256 .* does not match"):
        validate(store, upload(make_sidecar(sha256="0" * 64), gradient_png()))


def test_size_limits(store, upload):
    image = gradient_png()
    key = upload(make_sidecar(), image)
    with pytest.raises(InvalidImage, match="over the 100-byte limit"):
        validate(store, key, max_bytes=100)
    with pytest.raises(InvalidImage, match="truncated or empty"):
        validate(store, upload(make_sidecar(), b"\x89PNG\r\n\x1a\n"))


def test_sniff_format():
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"\0" * 128 + b"DICM") == "dicom"
    assert sniff_format(b"%PDF-1.4") is None


def test_handler_returns_a_telemetry_record(store, upload):
    from services.validate import handler
    from shared.settings import Settings
    from shared.wiring import StoreDependencies

    image = gradient_png()
    key = upload(make_sidecar(data=image), image)
    deps = StoreDependencies(Settings(data_dir=store.root), store)
    out = handler.lambda_handler.invoke({"bucket": "images", "key": key, "execution_id": "exec-9"}, None, deps)
    json.dumps(out)  # a Lambda response must serialise
    record = out["telemetry"]
    assert record["stage"] == "validate" and record["status"] == "succeeded" and record["execution_id"] == "exec-9"
    assert record["bytes_in"] == len(image) + len(json.dumps(make_sidecar(data=image)))


def dicom_study(store, **kwargs) -> str:
    import numpy as np

    from synthetic.samples import dicom_bytes

    pixels = np.tile(np.linspace(0, 4000, 64), (64, 1))
    return store.put_bytes("images", "incoming/dcm-1/study.dcm", dicom_bytes(pixels, "MONOCHROME1", patient_name="DOE^JOHN", **kwargs)).key


def test_a_dicom_file_carries_its_own_metadata_and_its_patient_stays_behind(store):
    out = validate(store, dicom_study(store))
    assert (out.study_id, out.image.format, out.modality, out.view_position) == ("dcm-1", "dicom", "DX", "PA")
    assert out.image.key == "incoming/dcm-1/study.dcm"
    assert "DOE" not in out.model_dump_json() and "MRN" not in out.model_dump_json()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"modality": "CT"},
            "not a chest X-ray study (Modality): Modality must be DX for Digital X-Ray Image Storage - For Presentation, found CT",
        ),
        (
            {"body_part": "KNEE"},
            "not a chest X-ray study (BodyPartExamined): BodyPartExamined (or AnatomicRegionSequence) does not say CHEST",
        ),
    ],
)
def test_dicom_acquisition_tags_are_checked(store, kwargs, expected):
    with pytest.raises(InvalidStudy, match=re.escape(expected)):
        validate(store, dicom_study(store, **kwargs))


def test_a_png_named_dcm_is_refused(store):
    key = store.put_bytes("images", "incoming/x/study.dcm", gradient_png()).key
    with pytest.raises(InvalidImage, match="named .dcm but is png"):
        validate(store, key)


@pytest.mark.parametrize("name, size", [("png", 40000), ("jpeg", 60000)])
def test_decompression_bombs_are_refused_by_their_header(store, upload, name, size):
    """Small on disk, huge once decoded: the header's size is held to MAX_IMAGE_PIXELS before anything decodes."""
    image = one_bit_png(size, size) if name == "png" else jpeg_claiming(size, size)
    assert len(image) < 1_000_000
    key = upload(make_sidecar(image=f"image.{name}"), image, image_name=f"image.{name}")
    with pytest.raises(
        InvalidImage,
        match=rf"study study-001: image is {size} x {size} pixels x 1 channel\(s\) = {size * size:,} samples by its {name.upper()} header, over the 100,000,000-sample limit \(MAX_IMAGE_PIXELS\)",
    ):
        validate(store, key)


def test_the_pixel_limit_is_a_setting(store, upload):
    from services.validate import handler
    from shared.settings import Settings
    from shared.wiring import StoreDependencies

    image = gradient_png(300, 200)
    key = upload(make_sidecar(data=image), image)
    deps = StoreDependencies(Settings.from_env({"MAX_IMAGE_PIXELS": "59999", "RADSTREAM_DATA_DIR": str(store.root)}), store)
    with pytest.raises(
        InvalidImage, match="300 x 200 pixels x 1 channel\\(s\\) = 60,000 samples by its PNG header, over the 59,999-sample limit"
    ):
        handler.run({"bucket": "images", "key": key}, deps)
    deps = StoreDependencies(Settings.from_env({"MAX_IMAGE_PIXELS": "60000", "RADSTREAM_DATA_DIR": str(store.root)}), store)
    assert handler.run({"bucket": "images", "key": key}, deps).study_id == "study-001"


def test_a_dicom_bomb_is_refused_by_rows_and_columns(store):
    from synthetic.transfer_syntaxes import dataset_bytes, dicom_dataset

    data = dataset_bytes(dicom_dataset(__import__("numpy").zeros((16, 16)), Rows=30000, Columns=30000))
    key = store.put_bytes("images", "incoming/dcm-big/study.dcm", data).key
    with pytest.raises(
        InvalidImage, match="study dcm-big: image is 30000 x 30000 pixels x 1 channel\\(s\\) = 900,000,000 samples by its DICOM header"
    ):
        validate(store, key)
