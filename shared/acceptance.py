"""Which DICOM objects are chest X-ray studies: the one acceptance rule of `radstream run`, validate and the gateway.

A study is a projection radiograph of the chest:
- its SOP class is CR Image Storage, DX Image Storage (for presentation or for processing), or Secondary Capture
  Image Storage (archives and challenge data sets often wrap CR/DX pixels in SC);
- its Modality is CR or DX (for CR and DX SOP classes, the one the class implies: PS3.3 A.2, A.26);
- its body part says chest: BodyPartExamined CHEST (PS3.16 CID 4031's defined term, any case), or, where that is
  absent or empty, an Anatomic Region Sequence coded as the chest or the thorax.
A refusal names the attribute that decided (never its value: it may be anything the sender wrote) and says whether
the SOP class or the content decided, so the gateway can answer with the status a sender expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ACCEPTED_SOP_CLASSES = {
    CR_IMAGE_STORAGE: "Computed Radiography Image Storage",
    DX_FOR_PRESENTATION: "Digital X-Ray Image Storage - For Presentation",
    DX_FOR_PROCESSING: "Digital X-Ray Image Storage - For Processing",
    SECONDARY_CAPTURE: "Secondary Capture Image Storage",
}
MODALITIES = ("CR", "DX")
MODALITY_OF = {CR_IMAGE_STORAGE: {"CR"}, DX_FOR_PRESENTATION: {"DX"}, DX_FOR_PROCESSING: {"DX"}, SECONDARY_CAPTURE: set(MODALITIES)}
VIEW_POSITIONS = ("PA", "AP", "LATERAL", "LL", "RL")
# Anatomic Region Sequence codes that say chest: SNOMED CT Chest / Thoracic structure, and their SRT forms.
CHEST_REGION_CODES = {("SCT", "43799004"), ("SCT", "51185008"), ("SRT", "T-D3000"), ("SNM3", "T-D3000")}
# What the header reader needs for the rule (pydicom's specific_tags): nothing of the patient module.
HEADER_KEYWORDS = ["SOPClassUID", "Modality", "BodyPartExamined", "AnatomicRegionSequence", "ViewPosition"]


@dataclass(frozen=True)
class Accepted:
    sop_class: str
    modality: str
    view_position: str  # one of VIEW_POSITIONS, or UNKNOWN


class NotAccepted(Exception):
    """Not a chest X-ray study. `attribute` decided; `by` is "sop_class" (the class is not one we process) or
    "content" (the class is, this object's attributes are not)."""

    def __init__(self, attribute: str, reason: str, by: Literal["sop_class", "content"]) -> None:
        super().__init__(reason)
        self.attribute, self.reason, self.by = attribute, reason, by


def text(ds: Any, keyword: str) -> str:
    """An attribute's text as stored (no value conversion, whose warnings would quote the value into logs)."""
    from pydicom.datadict import tag_for_keyword

    element = ds.get_item(tag_for_keyword(keyword))
    if element is None or element.value is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("iso8859-1").strip(" \x00")
    return str(value).strip(" \x00")


def sop_class_of(ds: Any) -> str:
    found = text(ds, "SOPClassUID")
    if not found and getattr(ds, "file_meta", None) is not None:
        found = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip(" \x00")
    return found


def _says_chest(ds: Any) -> bool:
    body_part = text(ds, "BodyPartExamined")
    if body_part:
        return body_part.upper() == "CHEST"
    for item in ds.get("AnatomicRegionSequence", None) or []:
        if (str(item.get("CodingSchemeDesignator", "")).upper(), str(item.get("CodeValue", ""))) in CHEST_REGION_CODES:
            return True
    return False


def accept(ds: Any, announced_sop_class: str | None = None) -> Accepted:
    """The rule above on a header (pixels need not be read); Accepted, or NotAccepted naming the attribute.

    `announced_sop_class`: the SOP class a DIMSE request announced, which must be the data set's."""
    sop_class = sop_class_of(ds) or (announced_sop_class or "")
    if not sop_class:
        raise NotAccepted("SOPClassUID", "SOPClassUID is missing: the object's SOP class cannot be told", "content")
    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise NotAccepted("SOPClassUID", "SOPClassUID is not CR, DX or Secondary Capture image storage", "sop_class")
    if announced_sop_class is not None and announced_sop_class != sop_class:
        raise NotAccepted("SOPClassUID", "SOPClassUID differs from the request's Affected SOP Class", "content")
    modality = text(ds, "Modality").upper()
    if modality not in MODALITY_OF[sop_class]:
        allowed = " or ".join(sorted(MODALITY_OF[sop_class]))
        raise NotAccepted(
            "Modality",
            f"Modality must be {allowed} for {ACCEPTED_SOP_CLASSES[sop_class]}, "
            f"found {modality if modality.isalnum() and len(modality) <= 16 else 'none'}",
            "content",
        )
    if not _says_chest(ds):
        raise NotAccepted(
            "BodyPartExamined",
            "BodyPartExamined (or AnatomicRegionSequence) does not say CHEST: only chest radiographs are processed",
            "content",
        )
    view = text(ds, "ViewPosition").upper()
    return Accepted(sop_class=sop_class, modality=modality, view_position=view if view in VIEW_POSITIONS else "UNKNOWN")
