"""The one acceptance rule (shared.acceptance) that validate and the gateway both apply."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from shared.acceptance import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, SECONDARY_CAPTURE, NotAccepted, accept

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def header(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in {"SOPClassUID": CR_IMAGE_STORAGE, "Modality": "CR", "BodyPartExamined": "CHEST", **attributes}.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def region(scheme: str, code: str) -> list[Dataset]:
    item = Dataset()
    item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = scheme, code, "Chest"
    return [item]


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"SOPClassUID": DX_FOR_PRESENTATION, "Modality": "DX", "ViewPosition": "AP"},
        # Challenge data sets wrap CR pixels in Secondary Capture: a study, the SC's Modality says what it is.
        {"SOPClassUID": SECONDARY_CAPTURE, "Modality": "CR"},
        {"BodyPartExamined": "chest"},
        {"BodyPartExamined": None, "AnatomicRegionSequence": region("SCT", "51185008")},
        {"BodyPartExamined": "", "AnatomicRegionSequence": region("SRT", "T-D3000")},
    ],
)
def test_chest_radiographs_are_studies(attributes):
    accepted = accept(header(**attributes))
    assert accepted.modality in ("CR", "DX")


@pytest.mark.parametrize(
    ("attributes", "attribute", "by"),
    [
        ({"SOPClassUID": CT_IMAGE_STORAGE, "Modality": "CT"}, "SOPClassUID", "sop_class"),
        ({"SOPClassUID": None}, "SOPClassUID", "content"),
        ({"SOPClassUID": SECONDARY_CAPTURE, "Modality": "OT"}, "Modality", "content"),
        ({"Modality": "DX"}, "Modality", "content"),  # CR Image Storage says CR
        ({"BodyPartExamined": "KNEE"}, "BodyPartExamined", "content"),
        ({"BodyPartExamined": None}, "BodyPartExamined", "content"),
        ({"BodyPartExamined": None, "AnatomicRegionSequence": region("SCT", "72696002")}, "BodyPartExamined", "content"),  # knee
    ],
)
def test_refusals_name_the_attribute_that_decided(attributes, attribute, by):
    with pytest.raises(NotAccepted) as refused:
        accept(header(**attributes))
    assert (refused.value.attribute, refused.value.by) == (attribute, by)


def test_the_announced_sop_class_must_be_the_data_sets():
    with pytest.raises(NotAccepted) as refused:
        accept(header(), DX_FOR_PRESENTATION)
    assert refused.value.attribute == "SOPClassUID"


def test_an_unusual_view_position_is_unknown_not_a_refusal():
    assert accept(header(ViewPosition="RLD")).view_position == "UNKNOWN"
    assert accept(header(ViewPosition="pa")).view_position == "PA"
