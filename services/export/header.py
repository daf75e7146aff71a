"""The header the exports are addressed with: what the source DICOM says of its patient and study, each value valid for its VR.

The SR and the overlay are filed beside the source in the hospital's PACS, so they carry its Patient, General Study
and Patient Study modules (docs/phi.md). A source written by another system may hold values its VR forbids (a
PatientAge of `62`, a date of `2019-03-01`, a 70-character LO) or leave Type 2 attributes out; copied as-is they make
an SR the DICOM validator rejects. So each attribute is copied only if every value is valid for its VR, else left
out, with two normalisations (docs/gateway.md, "What the exports copy"):
- PatientAge: a number with an optional unit (`62`, `62Y`, `7 M`) becomes AS (`062Y`, `007M`); a bare number is years;
- PatientIdentityRemoved YES without a method: DeidentificationMethod (Type 1C) says the source gave none.
Type 2 attributes of those modules that are absent or invalid are written empty (never invented).

Values are read from the raw bytes (pydicom's value conversion would validate them and its warnings quote the value
into logs that must not hold it); error messages and logs name attributes only.
"""

from __future__ import annotations

import re
from typing import Any

# Copied when valid: the Patient, General Study and Patient Study attributes a PACS or EHR files and shows by.
# Sequences and the clinical-trial modules are left out (optional modules; their items' own rules are not checked here).
PATIENT = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
)
STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDescription")
PATIENT_STUDY = ("PatientAge", "PatientSize", "PatientWeight")
# The source image itself, as the SR references it and the overlay describes it.
IMAGE = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Laterality",
    "BodyPartExamined",
    "Rows",
    "Columns",
    "PatientOrientation",
    "ImagerPixelSpacing",
    "PixelSpacing",
    "FrameOfReferenceUID",
)
# General Equipment, for the exports' Contributing Equipment (the source's acquisition device).
EQUIPMENT = ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions", "InstitutionName", "StationName")
TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)
ENUMERATED = {"PatientSex": {"M", "F", "O"}, "PatientIdentityRemoved": {"YES", "NO"}, "Laterality": {"R", "L"}, "PatientOrientation": None}
NO_METHOD = "Source says PatientIdentityRemoved YES; method not given"
_AGE = re.compile(r"^\s*0*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_ORIENTATION = re.compile(r"^(?:[AFHLPR]{1,3})$")
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_SINGLE_VALUED_TEXT = {"LT", "ST", "UT", "UR"}
_PADDED = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}


def _charset_terms(source: Any) -> list[str] | None:
    from pydicom.charset import python_encoding

    element = source.get_item(0x00080005)
    raw = element.value if element is not None else None
    if raw is None:
        return None
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else "\\".join(raw) if isinstance(raw, (list, tuple)) else str(raw)
    terms = [t.strip() for t in text.split("\\")]
    # Only character sets pydicom can write (an unknown term would leave the values unreadable): else the header is ASCII.
    return terms if all(t == "" or t in python_encoding for t in terms) and any(terms) else None


def raw_values(source: Any, keyword: str, encodings: list[str]) -> list[str] | list[float] | list[int] | None:
    """The attribute's values as stored (text split on backslash), None when absent; no pydicom value conversion."""
    from pydicom.charset import decode_bytes
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.multival import MultiValue

    tag = tag_for_keyword(keyword)
    element = source.get_item(tag) if tag is not None else None
    if element is None or element.value is None:
        return None
    vr = dictionary_VR(element.tag)
    value = element.value
    if vr in _TEXT_VRS:
        if isinstance(value, bytes):
            delimiters = {0x5E, 0x3D} if vr == "PN" else set()
            value = (
                decode_bytes(value, encodings, delimiters) if vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC") else value.decode("ascii")
            )
        elif not isinstance(value, str):
            value = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple, MultiValue)) else str(value)
        value = value.rstrip(" \x00") if vr != "UI" else value.rstrip("\x00").strip()
        if vr in _SINGLE_VALUED_TEXT:
            return [value]
        # Padding around each value is not part of it (PS3.5 6.2) for the code-like VRs; names and texts keep theirs.
        return [v.strip(" ") if vr in _PADDED else v for v in value.split("\\")]
    if isinstance(value, bytes):  # US/SS/FD/...: binary numbers, converted without validation
        value = source[tag].value
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _valid(vr: str, values: list[Any]) -> bool:
    from pydicom import config
    from pydicom.valuerep import validate_value

    for value in values:
        try:
            validate_value(vr, value, config.RAISE)
        except (ValueError, TypeError, KeyError):  # the message quotes the value: dropped, never logged
            return False
    return True


def patient_age(values: list[str] | None) -> str | None:
    """AS from what a source wrote: `62` or `62Y` -> `062Y`; `6 m` -> `006M`; anything else None (left out)."""
    if not values or len(values) != 1:
        return None
    match = _AGE.match(values[0])
    return f"{int(match[1]):03d}{(match[2] or 'Y').upper()}" if match else None


def addressed_header(source: Any) -> Any:
    """A new dataset holding the source's patient, study, image-reference and equipment attributes, each valid for its VR."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataset import Dataset

    from pydicom.charset import convert_encodings

    header = Dataset()
    terms = _charset_terms(source)
    encodings = convert_encodings(terms) if terms else ["iso8859"]
    if terms:
        header.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
    for keyword in PATIENT + STUDY + PATIENT_STUDY + IMAGE + EQUIPMENT:
        try:
            values = raw_values(source, keyword, encodings)
        except (UnicodeError, LookupError, ValueError, TypeError):
            continue
        if keyword == "PatientAge":
            age = patient_age(values)  # type: ignore[arg-type]
            if age:
                header.PatientAge = age
            continue
        if values is None or values == [""]:
            continue
        vr = dictionary_VR(_tag(keyword))
        if not terms and vr in _TEXT_VRS and not all(str(v).isascii() for v in values):
            continue  # no character set to write it in
        allowed = ENUMERATED.get(keyword)
        if allowed is not None and not set(map(str, values)) <= allowed:
            continue
        if keyword == "PatientOrientation" and (len(values) != 2 or not all(_ORIENTATION.match(str(v)) for v in values)):
            continue
        if keyword in ("ImagerPixelSpacing", "PixelSpacing") and (len(values) != 2 or not all(_positive(v) for v in values)):
            continue
        if not _valid(vr, values):
            continue
        header[_tag(keyword)] = _element(keyword, vr, values)
    if header.get("PatientIdentityRemoved") == "YES" and "DeidentificationMethod" not in header:
        method = source.get_item(_tag("DeidentificationMethodCodeSequence"))
        # The coded method is a sequence we do not copy: its presence still means the source named a method.
        header.DeidentificationMethod = NO_METHOD if method is None else "Coded in the source (DeidentificationMethodCodeSequence)"
    for keyword in TYPE2:
        if keyword not in header:
            header[_tag(keyword)] = _element(keyword, dictionary_VR(_tag(keyword)), [])
    return header


def _tag(keyword: str) -> int:
    """The tag of a keyword of pydicom's dictionary (this module names only those)."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword")
    return tag


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _element(keyword: str, vr: str, values: list[Any]) -> Any:
    from pydicom.dataelem import DataElement

    value: Any = values[0] if len(values) == 1 else (list(values) if values else "")
    if not values and vr not in _TEXT_VRS:
        value = None
    return DataElement(_tag(keyword), vr, value)


def has_spacing(header: Any) -> bool:
    return "ImagerPixelSpacing" in header or "PixelSpacing" in header
