"""Prepare stage: pixel handling (bit depth, colour, MONOCHROME1, windowing), letterboxing, tensors in the artifacts bucket."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from synthetic.images import gradient_png, with_sbit
from synthetic.samples import dicom_bytes
from services.prepare.domain import XRV_RANGE, PrepareRequest, prepare_tensors
from shared.letterbox import letterbox
from shared.errors import InvalidImage
from shared.messages import StudyImage
from shared.model_repository import ModelRepository
from shared.pixels import decode_dicom, decode_raster, png_significant_bits


def test_8_and_16_bit_are_scaled_by_their_depth():
    eight = decode_raster(gradient_png(dtype=np.uint8), "s")
    sixteen = decode_raster(gradient_png(dtype=np.uint16), "s")
    assert eight.bit_depth == 8 and sixteen.bit_depth == 16
    assert eight.pixels.dtype == np.float32 and 0.99 < eight.pixels.max() <= 1.0
    np.testing.assert_allclose(eight.pixels, sixteen.pixels, atol=1 / 255)


def test_12_bit_data_in_a_16_bit_png_uses_the_sbit_depth():
    image = (np.linspace(0, 4095, 64 * 64).reshape(64, 64)).astype(np.uint16)
    png = with_sbit(cv2.imencode(".png", image)[1].tobytes(), 12)
    assert png_significant_bits(png) == 12
    decoded = decode_raster(png, "s")
    assert decoded.bit_depth == 12 and decoded.pixels.max() == pytest.approx(1.0)


def test_rgb_becomes_grayscale():
    gray = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (50, 1))
    rgb = cv2.imencode(".png", cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))[1].tobytes()
    np.testing.assert_allclose(
        decode_raster(rgb, "s").pixels, decode_raster(cv2.imencode(".png", gray)[1].tobytes(), "s").pixels, atol=1 / 255
    )


def test_corrupt_image_is_a_clear_error():
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        decode_raster(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "s")


def test_monochrome1_is_inverted_so_bone_is_bright():
    ramp = np.tile(np.linspace(0, 4095, 32), (16, 1))
    mono2 = decode_dicom(dicom_bytes(ramp, "MONOCHROME2"), "s")
    mono1 = decode_dicom(dicom_bytes(ramp, "MONOCHROME1"), "s")
    assert mono1.photometric == "MONOCHROME1" and mono1.bit_depth == 12
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)


def test_dicom_window_is_applied():
    ramp = np.tile(np.linspace(0, 4095, 64), (8, 1))
    windowed = decode_dicom(dicom_bytes(ramp, "MONOCHROME2", window=(2048, 1024)), "s").pixels
    # Outside the window (centre 2048, width 1024) everything saturates: below ~1536 black, above ~2560 white.
    assert windowed[0, 0] == 0.0 and windowed[0, -1] == 1.0
    assert np.sum((windowed[0] > 0) & (windowed[0] < 1)) < 20


def test_letterbox_pads_without_cropping_and_maps_back():
    image = np.ones((100, 200), np.float32)
    square, box = letterbox(image, 50)
    assert square.shape == (50, 50) and box.scale == pytest.approx(0.25)
    assert box.pad_x == 0 and box.pad_y == pytest.approx(12)
    assert square[:12].max() == 0 and square[12:37].min() == 1 and square[37:].max() == 0
    # The original's bottom-right corner lands at the padded tensor's content corner.
    assert (200 * box.scale + box.pad_x, 100 * box.scale + box.pad_y) == pytest.approx((50, 37))


def test_tensors_are_written_per_model_with_their_normalisation(store, config_only_repository):
    png = gradient_png(1024, 768)
    store.put_bytes("images", "incoming/s1/image.png", png)
    request = PrepareRequest(
        study_id="s1", image=StudyImage(bucket="images", key="incoming/s1/image.png", format="png", sha256="0" * 64, size_bytes=len(png))
    )
    out = prepare_tensors(request, store, ModelRepository(config_only_repository), "artifacts")
    assert set(out.tensors) == {"chest_xray_classifier", "anomaly_detector", "report_encoder"}
    assert (out.original.width, out.original.height) == (1024, 768)
    classifier = np.load(io.BytesIO(store.get_bytes("artifacts", out.tensors["chest_xray_classifier"].key)))
    detector = np.load(io.BytesIO(store.get_bytes("artifacts", out.tensors["anomaly_detector"].key)))
    assert classifier.shape == (1, 1, 224, 224) and detector.shape == (1, 1, 256, 256)
    assert classifier.dtype == np.float32
    assert classifier.min() == pytest.approx(-XRV_RANGE) and classifier.max() <= XRV_RANGE
    assert detector.min() == 0.0 and detector.max() <= 1.0
    assert out.bytes_in == len(png) and out.bytes_out > 3 * 196_000


def test_constant_image_is_rejected(store, config_only_repository):
    flat = cv2.imencode(".png", np.full((64, 64), 77, np.uint8))[1].tobytes()
    store.put_bytes("images", "incoming/s2/image.png", flat)
    request = PrepareRequest(
        study_id="s2", image=StudyImage(bucket="images", key="incoming/s2/image.png", format="png", sha256="0" * 64, size_bytes=len(flat))
    )
    with pytest.raises(InvalidImage, match="study s2: image decodes to a constant value"):
        prepare_tensors(request, store, ModelRepository(config_only_repository), "artifacts")


@pytest.mark.parametrize(
    "shape,dtype,level,step",
    [
        ((2000, 1500), np.uint8, 77, 1),
        ((1500, 2600), np.uint16, 3000, 1),
        ((3000, 3000), np.uint8, 0, 1),
        ((3000, 2000), np.uint16, 40000, 1),
    ],
)
def test_flatness_is_judged_as_on_the_full_image(store, config_only_repository, shape, dtype, level, step):
    """Judged on the largest model input first, but the answer is the full image's: flat stays flat, and one pixel
    one level off (the least an image can differ from flat; 1/65535 in a 16-bit one, which a resize averages below
    the threshold) is still not flat, wherever it is."""
    repository = ModelRepository(config_only_repository)
    flat = np.full(shape, level, dtype)
    cases = [(flat, True)]
    for y, x in ((0, 0), (shape[0] - 1, shape[1] - 1), (shape[0] // 2, shape[1] // 3)):
        one_off = flat.copy()
        one_off[y, x] = level + step
        cases.append((one_off, False))
    for i, (image, constant) in enumerate(cases):
        data = cv2.imencode(".png", image)[1].tobytes()
        key = f"incoming/f{i}/image.png"
        store.put_bytes("images", key, data)
        request = PrepareRequest(
            study_id=f"f{i}", image=StudyImage(bucket="images", key=key, format="png", sha256="0" * 64, size_bytes=len(data))
        )
        if constant:
            with pytest.raises(InvalidImage, match="constant value"):
                prepare_tensors(request, store, repository, "artifacts")
        else:
            prepare_tensors(request, store, repository, "artifacts")
