"""Validate stage: the sidecar against its schema, and the image it names against the sidecar.

Inputs: the sidecar's location (images bucket, incoming/<study_id>/<name>.json).
Outputs: the study id, the image's location, real format, digest and size. Nothing from the
patient block travels on: later stages need none of it.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaError

from shared import priority
from shared.acceptance import HEADER_KEYWORDS, NotAccepted, accept
from shared.contracts import SCHEMA_DIR, ObjectRef
from shared.errors import InvalidImage, InvalidStudy, ObjectNotFound
from shared.imageheader import check_pixel_limit
from shared.imageheader import sniff_format
from shared.messages import INCOMING, ImageFormat, StudyImage, ValidatedStudy, ValidateRequest, study_id_from_key
from shared.settings import DEFAULT_MAX_IMAGE_PIXELS
from shared.sidecar import SidecarUnreadable, parse_sidecar_bytes
from shared.storage import ObjectStore

SIDECAR_SCHEMA = SCHEMA_DIR / "sidecar.v1.schema.json"
MIN_IMAGE_BYTES = 64


@cache
def sidecar_validator() -> Draft202012Validator:
    schema = json.loads(SIDECAR_SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=DATE_TIME)


# jsonschema checks "date-time" only when an optional package is installed, and a pattern alone accepts 2026-02-30 or
# 25:61: the calendar decides here (a month's days, leap years, hours < 24, offsets within a day).
DATE_TIME = FormatChecker(formats=())


@DATE_TIME.checks("date-time", raises=ValueError)
def is_date_time(value: object) -> bool:
    if isinstance(value, str):
        datetime.fromisoformat(value)
    return True


def describe(error: SchemaError) -> str:
    """A schema error in words that name the field, never the value (it could be a patient's name)."""
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    v, expected = error.validator, error.validator_value
    if v == "required":
        missing = [name for name in expected if isinstance(error.instance, dict) and name not in error.instance]
        return f"{where}: missing required field(s) {', '.join(missing)}"
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: field(s) {', '.join(extra)} not allowed (the sidecar carries no names, birth dates, MRNs or addresses)"
    if v == "enum":
        return f"{where}: must be one of {', '.join(map(str, expected))}"
    if v == "const":
        return f"{where}: must be {expected!r}"
    if v == "type":
        return f"{where}: must be of type {expected}"
    if v == "pattern":
        return f"{where}: has characters or a form that is not allowed (pattern {expected})"
    if v == "format":
        return f"{where}: is not a real {expected} (RFC 3339, e.g. 2026-12-07T10:00:00Z)"
    if v in ("minimum", "maximum"):
        return f"{where}: must be {'at least' if v == 'minimum' else 'at most'} {expected}"
    return f"{where}: fails '{v}'"


def parse_sidecar(raw: bytes, study_id: str) -> dict[str, Any]:
    try:
        sidecar = parse_sidecar_bytes(raw)
    except SidecarUnreadable as e:
        raise InvalidStudy(str(e), study_id=study_id) from e
    errors = sorted(sidecar_validator().iter_errors(sidecar), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise InvalidStudy("sidecar breaks schema v1: " + "; ".join(describe(e) for e in errors), study_id=study_id)
    return sidecar


def read_image(store: ObjectStore, bucket: str, key: str, study_id: str, max_image_bytes: int) -> tuple[bytes, ImageFormat, str]:
    """The image's bytes, real format and sha256, after the size checks."""
    name = key.rsplit("/", 1)[-1]
    head = store.head(bucket, key)
    if head is None:
        raise InvalidStudy(f"image {name!r} named by the sidecar is not in incoming/{study_id}/", study_id=study_id)
    if head.size > max_image_bytes:
        raise InvalidImage(f"image {name!r} is {head.size} bytes, over the {max_image_bytes}-byte limit", study_id=study_id)
    if head.size < MIN_IMAGE_BYTES:
        raise InvalidImage(f"image {name!r} is only {head.size} bytes: truncated or empty", study_id=study_id)
    data = store.get_bytes(bucket, key)
    image_format = sniff_format(data[:132])
    if image_format is None:
        raise InvalidImage(f"image {name!r} is not PNG, JPEG or DICOM (by its content; the extension is not trusted)", study_id=study_id)
    return data, image_format, hashlib.sha256(data).hexdigest()


def dicom_metadata(data: bytes, study_id: str) -> dict[str, str]:
    """The few acquisition tags the pipeline needs, after the acceptance rule (shared.acceptance) that the gateway
    applies too. Patient module tags are never read."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=[*HEADER_KEYWORDS, *EQUIPMENT_KEYWORDS, "RequestedProcedurePriority"]
        )
    except (InvalidDicomError, OSError, ValueError) as e:
        raise InvalidImage(f"DICOM header cannot be read ({type(e).__name__})", study_id=study_id) from e
    try:
        accepted = accept(ds)
    except NotAccepted as e:
        raise InvalidStudy(f"not a chest X-ray study ({e.attribute}): {e.reason}", study_id=study_id) from e
    return {
        "modality": accepted.modality,
        "view_position": accepted.view_position,
        "priority": priority.of_order(ds.get("RequestedProcedurePriority")) or "",  # "": the order says nothing
        **equipment(ds),
    }


# The equipment module: which site and scanner made the picture (for per-site metrics and drift; docs/model-lifecycle.md).
EQUIPMENT_KEYWORDS = ["InstitutionName", "Manufacturer", "ManufacturerModelName"]


def equipment(ds: Any) -> dict[str, str]:
    """site: the institution as a pseudonym (`site-` and 10 hex digits of its sha256: the name itself stays in the
    images bucket); scanner: manufacturer and model, a device and no person. Absent tags are left out."""
    out = {}
    institution = str(ds.get("InstitutionName", "") or "").strip()
    if institution:
        out["site"] = "site-" + hashlib.sha256(institution.encode()).hexdigest()[:10]
    scanner = " ".join(str(ds.get(k, "") or "").strip() for k in ("Manufacturer", "ManufacturerModelName")).strip()
    if scanner:
        out["scanner"] = scanner[:64]
    return out


def validate_study(
    request: ValidateRequest, store: ObjectStore, max_image_bytes: int, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> ValidatedStudy:
    """A study arrives as a sidecar (incoming/<id>/<name>.json naming its image) or as one DICOM file (incoming/<id>/<name>.dcm)."""
    key_study_id = study_id_from_key(request.key)
    if key_study_id == request.key or not request.key.endswith((".json", ".dcm")):
        raise InvalidStudy(f"key {request.key!r} is not of the form incoming/<study_id>/<name>.json or .dcm")
    if request.key.endswith(".dcm"):
        data, image_format, digest = read_image(store, request.bucket, request.key, key_study_id, max_image_bytes)
        if image_format != "dicom":
            raise InvalidImage(f"{request.key.rsplit('/', 1)[-1]!r} is named .dcm but is {image_format}", study_id=key_study_id)
        metadata, study_id, image_key, raw_size = dicom_metadata(data, key_study_id), key_study_id, request.key, 0
        # The order's (0040,1003) is the study's priority; an instance without one takes what its sender asked for
        # (the gateway's record of the association's C-STORE Priority), else routine. docs/triage.md.
        level = metadata["priority"] or priority.of_sender(store, request.bucket, request.key) or priority.DEFAULT
    else:
        try:
            raw = store.get_bytes(request.bucket, request.key)
        except ObjectNotFound as e:
            raise InvalidStudy(f"sidecar {request.key} is gone from the images bucket", study_id=key_study_id) from e
        sidecar = parse_sidecar(raw, key_study_id)
        study_id = sidecar["study_id"]
        if study_id != key_study_id:
            raise InvalidStudy(
                f"sidecar says study_id {study_id!r} but it was uploaded under incoming/{key_study_id}/", study_id=key_study_id
            )
        image_key = f"{INCOMING}{study_id}/{sidecar['image']}"
        data, image_format, digest = read_image(store, request.bucket, image_key, study_id, max_image_bytes)
        if sidecar.get("sha256") and sidecar["sha256"] != digest:
            raise InvalidImage(
                f"image {sidecar['image']!r} sha256 {digest[:12]}… does not match the sidecar's {sidecar['sha256'][:12]}…",
                study_id=study_id,
            )
        metadata, raw_size, level = sidecar, len(raw), priority.from_sidecar(sidecar.get("priority"))
    # The size the header declares, held to the limit before any stage decodes a pixel (a PNG of zeros can be 1.6 GB decoded).
    check_pixel_limit(data, image_format, max_image_pixels, study_id)

    return ValidatedStudy(
        study_id=study_id,
        metadata=ObjectRef(bucket=request.bucket, key=request.key),
        image=StudyImage(bucket=request.bucket, key=image_key, format=image_format, sha256=digest, size_bytes=len(data)),
        view_position=metadata["view_position"],
        modality=metadata["modality"],
        priority=level,
        site=metadata.get("site") or metadata.get("source"),
        scanner=metadata.get("scanner"),
        bytes_in=raw_size + len(data),
    )
