"""Quality flags (issue 20, observation 6): a picture that looks wrong says so, and the findings stay as computed.

Positive and negative cases are built from the synthetic phantoms: upright chests in every container (no flag), a
MONOCHROME1 header over MONOCHROME2 pixels (polarity), limb-like, uniform-gradient and noise pictures (not a chest),
and chests stored dark, washed out or flat on their declared range (exposure).
"""

from __future__ import annotations

from typing import get_args

import cv2
import numpy as np
import pytest

from synthetic.phantoms import generate_limb, generate_phantom, to_uint8
from synthetic.transfer_syntaxes import dataset_bytes, dicom_dataset, dicom_in_syntax, stored_values
from services.prepare.domain import prepare_tensors
from services.prepare.quality import quality_flags
from shared.contracts import QUALITY_FLAGS, QualityFlag
from shared.messages import PrepareRequest, StudyImage
from shared.model_repository import ModelRepository
from shared.pixels import decode_dicom, decode_raster
from shared.settings import DEFAULT_MODEL_REPOSITORY

SIZE = 384


def flags_of(data: bytes, fmt: str) -> list[str]:
    decoded = decode_dicom(data, "s") if fmt == "dicom" else decode_raster(data, "s")
    return quality_flags(decoded.pixels, decoded.declared_levels)


def chest(seed: int) -> np.ndarray:
    return generate_phantom(np.random.default_rng(seed), size=SIZE).image


def test_every_flag_is_named_once_with_its_meaning():
    assert set(QUALITY_FLAGS) == set(get_args(QualityFlag))
    assert all(QUALITY_FLAGS.values())


@pytest.mark.parametrize("seed", range(12))
def test_an_upright_chest_raises_no_flag_in_any_container(seed):
    picture = chest(seed)
    assert flags_of(cv2.imencode(".png", to_uint8(picture))[1].tobytes(), "png") == []
    assert flags_of(cv2.imencode(".png", stored_values(picture, 12).astype(np.uint16))[1].tobytes(), "png") == []
    assert flags_of(dicom_in_syntax(picture, "explicit-le", "MONOCHROME1"), "dicom") == []
    assert flags_of(dicom_in_syntax(picture, "jpeg-baseline"), "dicom") == []


@pytest.mark.parametrize("seed", range(6))
def test_a_monochrome1_header_over_monochrome2_pixels_is_polarity_suspicious(seed):
    """The header says low values are white, the pixels were written the other way: read as a negative."""
    values = stored_values(chest(seed), 12)  # MONOCHROME2 values: bone high
    flags = flags_of(dataset_bytes(dicom_dataset(values, "MONOCHROME1")), "dicom")
    assert "polarity_suspicious" in flags and "not_chest_like" not in flags
    # ... as is an inverted picture in a container with no photometric interpretation at all.
    assert "polarity_suspicious" in flags_of(cv2.imencode(".png", to_uint8(1.0 - chest(seed)))[1].tobytes(), "png")


def non_chests() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    ramp = np.tile(np.linspace(0, 1, SIZE, dtype=np.float32), (SIZE, 1))
    out = {f"limb {i}": generate_limb(rng, SIZE) for i in range(8)}
    out |= {"horizontal ramp": ramp, "vertical ramp": ramp.T.copy(), "diagonal ramp": (ramp + ramp.T) / 2}
    out |= {f"noise {i}": rng.random((SIZE, SIZE)).astype(np.float32) for i in range(3)}
    out["blurred noise"] = cv2.GaussianBlur(rng.random((SIZE, SIZE)).astype(np.float32), (0, 0), 12)
    return out


@pytest.mark.parametrize("name", list(non_chests()))
def test_a_picture_that_is_not_a_chest_is_flagged(name):
    picture = non_chests()[name]
    flags = flags_of(dataset_bytes(dicom_dataset(stored_values(picture, 12))), "dicom")
    assert "not_chest_like" in flags, (name, flags)
    assert "polarity_suspicious" not in flags


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "case, transform, expected",
    [
        ("dark, burned out", lambda p: 0.30 * p, {"overexposed"}),
        ("grey, washed out", lambda p: 0.55 + 0.45 * p, {"underexposed"}),
        ("flat", lambda p: 0.45 + 0.12 * p, {"low_contrast", "underexposed"}),
    ],
)
def test_exposure_is_read_on_the_declared_range(seed, case, transform, expected):
    picture = chest(seed)
    for bits_stored in (12, 16):
        data = dataset_bytes(dicom_dataset(stored_values(transform(picture), bits_stored), bits_stored=bits_stored))
        flags = flags_of(data, "dicom")
        assert set(flags) - {"not_chest_like", "polarity_suspicious"} == expected, (case, bits_stored, flags)
    # The chest itself is still recognised: the window (the models' picture) is the same as the well-exposed one's.
    assert "not_chest_like" not in flags and "polarity_suspicious" not in flags


def test_prepare_carries_the_flags_and_the_tensors_do_not_depend_on_them(store):
    repository = ModelRepository(DEFAULT_MODEL_REPOSITORY)
    picture = chest(3)
    good = dataset_bytes(dicom_dataset(stored_values(picture, 12)))
    wrong = dataset_bytes(dicom_dataset(4095 - stored_values(picture, 12), "MONOCHROME1"))  # the same picture, declared the other way
    prepared = {}
    for name, data in (("good", good), ("wrong", wrong)):
        store.put_bytes("images", f"incoming/{name}/study.dcm", data)
        request = PrepareRequest(
            study_id=name,
            image=StudyImage(bucket="images", key=f"incoming/{name}/study.dcm", format="dicom", sha256="0" * 64, size_bytes=len(data)),
        )
        prepared[name] = prepare_tensors(request, store, repository, "artifacts")
    assert prepared["good"].original.quality_flags == []
    assert prepared["wrong"].original.quality_flags == []  # MONOCHROME1 correctly declared: the same upright picture
    inverted = dataset_bytes(dicom_dataset(stored_values(picture, 12), "MONOCHROME1"))
    store.put_bytes("images", "incoming/inv/study.dcm", inverted)
    request = PrepareRequest(
        study_id="inv",
        image=StudyImage(bucket="images", key="incoming/inv/study.dcm", format="dicom", sha256="0" * 64, size_bytes=len(inverted)),
    )
    assert prepare_tensors(request, store, repository, "artifacts").original.quality_flags == ["polarity_suspicious"]
