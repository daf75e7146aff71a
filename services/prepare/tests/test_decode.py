"""Decoding: every CR/DX transfer syntax, YBR, padding, INVERSE, signed pixels, 16-bit PNG depth, size limits before pixels."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from synthetic.images import jpeg_claiming, one_bit_png, with_sbit
from synthetic.phantoms import generate_phantom, to_uint8
from synthetic.transfer_syntaxes import SYNTAXES, dataset_bytes, dcmtk, dicom_dataset, dicom_in_syntax, stored_values
from services.prepare.domain import PrepareRequest, prepare_tensors
from shared.pixels import decode_dicom, decode_raster, percentile_window
from shared.errors import InvalidImage
from shared.imageheader import check_pixel_limit, image_geometry
from shared.messages import StudyImage
from shared.model_repository import ModelRepository


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return generate_phantom(np.random.default_rng(11), size=128).image


# The largest per-pixel error each lossy syntax may leave (of 1.0); lossless ones give back the 12-bit values.
# The percentile window stretches a codec's error by 4095 / (p99.5 - p0.5): about 1.2 on this phantom.
LOSSY_MAX_ERROR = {"jpeg-baseline": 0.05, "jpeg-extended": 0.005, "jpeg-ls-near-lossless": 1.25 * 2.5 / 4095, "jpeg2000": 0.15}


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_every_transfer_syntax_decodes_to_the_picture(picture, syntax, photometric):
    import pydicom

    data = dicom_in_syntax(picture, syntax, photometric)
    assert str(pydicom.dcmread(__import__("io").BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID) == SYNTAXES[syntax].uid
    decoded = decode_dicom(data, "s")
    expected = percentile_window(stored_values(picture, SYNTAXES[syntax].bits).astype(np.uint16))  # the intensity rule
    error = np.abs(decoded.pixels - expected)
    assert error.max() <= LOSSY_MAX_ERROR.get(syntax, 1e-6), (syntax, float(error.max()))
    assert error.mean() < 0.02
    assert decoded.photometric == photometric
    assert decoded.intensity_rule == f"dicom-{SYNTAXES[syntax].bits}bit-percentile" + ("-inverted" if photometric == "MONOCHROME1" else "")


def test_monochrome1_and_2_twins_are_identical(picture):
    for syntax in ("explicit-le", "jpeg-lossless-sv1", "jpeg2000-lossless"):
        mono1 = decode_dicom(dicom_in_syntax(picture, syntax, "MONOCHROME1"), "s").pixels
        mono2 = decode_dicom(dicom_in_syntax(picture, syntax, "MONOCHROME2"), "s").pixels
        np.testing.assert_array_equal(mono1, mono2)


def grey_as_rgb(picture: np.ndarray) -> np.ndarray:
    return np.repeat(to_uint8(picture)[..., None], 3, axis=2)


def test_ybr_full_is_read_as_its_grey_picture(picture):
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(grey_as_rgb(picture), "RGB", "YBR_FULL")
    decoded = decode_dicom(dataset_bytes(dicom_dataset(ybr, "YBR_FULL", bits_stored=8)), "s")
    assert decoded.photometric == "YBR_FULL" and decoded.intensity_rule == "dicom-8bit-percentile"
    np.testing.assert_allclose(decoded.pixels, percentile_window(to_uint8(picture)), atol=2.5 / 255)


def test_ybr_full_422_from_jpeg_baseline_is_read_as_its_grey_picture(picture):
    import io

    import pydicom

    data = dcmtk("dcmcjpeg", ("+eb", "+q", "95"), dataset_bytes(dicom_dataset(grey_as_rgb(picture), "RGB", bits_stored=8)))
    assert pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).PhotometricInterpretation == "YBR_FULL_422"
    decoded = decode_dicom(data, "s")
    assert decoded.pixels.shape == picture.shape
    assert np.abs(decoded.pixels - percentile_window(to_uint8(picture))).max() < LOSSY_MAX_ERROR["jpeg-baseline"]


def test_padding_is_black_and_does_not_move_the_intensity_range(picture):
    dim = picture * 0.8 + 0.1  # the patient spans 10%..90% of the detector's range
    values = stored_values(dim, 12)
    white_border, black_border = values.copy(), values.copy()
    white_border[:, :20], black_border[:, :20] = 4095, 0  # a collimator border, declared as padding
    with_padding = decode_dicom(dataset_bytes(dicom_dataset(white_border, PixelPaddingValue=4095)), "s")
    assert with_padding.intensity_rule == "dicom-12bit-percentile-padding"
    assert with_padding.pixels[:, :20].max() == 0.0
    # The window is the patient's alone: whatever value the padding holds, the rest of the picture is the same,
    # and it is the picture of the unpadded pixels by themselves.
    other = decode_dicom(dataset_bytes(dicom_dataset(black_border, PixelPaddingValue=0)), "s")
    np.testing.assert_array_equal(with_padding.pixels, other.pixels)
    np.testing.assert_array_equal(with_padding.pixels[:, 20:], percentile_window(values[:, 20:].astype(np.uint16)))
    # A range of padding values (Pixel Padding Range Limit), in MONOCHROME1: black too.
    mono1 = stored_values(dim, 12, "MONOCHROME1")
    mono1[:10] = 0
    mono1[10:20] = 3
    decoded = decode_dicom(dataset_bytes(dicom_dataset(mono1, "MONOCHROME1", PixelPaddingValue=0, PixelPaddingRangeLimit=3)), "s")
    assert decoded.pixels[:20].max() == 0.0
    np.testing.assert_allclose(decoded.pixels[20:], percentile_window(values[20:].astype(np.uint16)), atol=1e-6)


def test_presentation_lut_shape_inverse_acts_like_monochrome1(picture):
    values = stored_values(picture, 12, "MONOCHROME1")  # low values white
    mono1 = decode_dicom(dataset_bytes(dicom_dataset(values, "MONOCHROME1")), "s")
    inverse = decode_dicom(dataset_bytes(dicom_dataset(values, "MONOCHROME2", PresentationLUTShape="INVERSE")), "s")
    # DX writes INVERSE beside MONOCHROME1 (PS3.3 C.8.11.6.1.2): the same one inversion, not two.
    both = decode_dicom(dataset_bytes(dicom_dataset(values, "MONOCHROME1", PresentationLUTShape="INVERSE")), "s")
    identity = decode_dicom(dataset_bytes(dicom_dataset(values, "MONOCHROME2", PresentationLUTShape="IDENTITY")), "s")
    np.testing.assert_array_equal(inverse.pixels, mono1.pixels)
    np.testing.assert_array_equal(both.pixels, mono1.pixels)
    np.testing.assert_allclose(identity.pixels, 1.0 - mono1.pixels, atol=1e-5)
    assert inverse.intensity_rule == "dicom-12bit-percentile-inverted"


@pytest.mark.parametrize("syntax", ["explicit-le", "implicit-le", "rle", "jpeg2000-lossless"])
def test_signed_pixels_read_like_unsigned_ones(picture, syntax):
    from synthetic.transfer_syntaxes import encode

    unsigned = decode_dicom(dicom_in_syntax(picture, "explicit-le"), "s")
    values = stored_values(picture, 12, signed=True)
    assert values.min() < 0
    signed = decode_dicom(encode(dicom_dataset(values, signed=True), SYNTAXES[syntax]), "s")
    assert signed.intensity_rule == "dicom-12bit-signed-percentile"
    np.testing.assert_allclose(signed.pixels, unsigned.pixels, atol=1e-6)
    # Padding in signed storage: -2048 is the most negative 12-bit value.
    values[:5] = -2048
    padded = decode_dicom(encode(dicom_dataset(values, signed=True, PixelPaddingValue=-2048), SYNTAXES[syntax]), "s")
    assert padded.pixels[:5].max() == 0.0 and padded.intensity_rule == "dicom-12bit-signed-percentile-padding"


def test_window_still_decides_the_range_after_compression(picture):
    data = dicom_in_syntax(picture, "jpeg-ls-lossless", WindowCenter=2048, WindowWidth=1024)
    decoded = decode_dicom(data, "s")
    assert decoded.intensity_rule == "dicom-window"
    assert decoded.pixels[picture < 0.3].max() == 0.0 and decoded.pixels[picture > 0.7].min() == 1.0


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_16_bit_png_with_or_without_sbit_is_the_8_bit_png_picture(picture, bits):
    eight = decode_raster(cv2.imencode(".png", to_uint8(picture))[1].tobytes(), "s")
    values = stored_values(picture, bits).astype(np.uint16)
    png = cv2.imencode(".png", values)[1].tobytes()
    decoded = decode_raster(png, "s")
    assert decoded.intensity_rule == "png16-percentile" and decoded.bit_depth == bits
    np.testing.assert_allclose(decoded.pixels, eight.pixels, atol=2 / 255)
    with_bits = decode_raster(with_sbit(png, bits), "s")
    assert with_bits.intensity_rule == f"png16-sbit{bits}-percentile"
    np.testing.assert_array_equal(with_bits.pixels, decoded.pixels)


def test_16_bit_png_scaled_as_the_png_spec_says_is_the_same_picture(picture):
    """sBIT 12 with samples scaled up to 16 bits (the specification's form), not 12-bit values in 16-bit slots."""
    twelve = stored_values(picture, 12)
    values = (twelve * 65535 // 4095).astype(np.uint16)
    decoded = decode_raster(with_sbit(cv2.imencode(".png", values)[1].tobytes(), 12), "s")
    assert decoded.intensity_rule == "png16-sbit12-scaled-percentile"
    np.testing.assert_allclose(decoded.pixels, percentile_window(twelve.astype(np.uint16)), atol=1 / 4095)


def test_8_bit_and_jpeg_rules_are_named(picture):
    assert decode_raster(cv2.imencode(".png", to_uint8(picture))[1].tobytes(), "s").intensity_rule == "png8-percentile"
    assert decode_raster(cv2.imencode(".jpg", to_uint8(picture))[1].tobytes(), "s").intensity_rule == "jpeg8-percentile"


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    return one_bit_png(40000, 40000)


def test_bombs_declare_their_size_in_the_header(png_bomb):
    assert len(png_bomb) < 1_000_000, "small on disk"
    assert image_geometry(png_bomb, "png").samples == 40000 * 40000
    assert (image_geometry(jpeg_claiming(60000, 60000), "jpeg").width, image_geometry(jpeg_claiming(60000, 60000), "jpeg").height) == (
        60000,
        60000,
    )
    geometry = image_geometry(dicom_in_syntax(np.zeros((32, 48)), "jpeg-ls-lossless"), "dicom")
    assert (geometry.width, geometry.height, geometry.channels, geometry.frames) == (48, 32, 1, 1)


@pytest.mark.parametrize("name, fmt, size", [("png", "png", 40000), ("jpeg", "jpeg", 60000)])
def test_bombs_are_refused_before_decoding_naming_size_and_limit(store, config_only_repository, png_bomb, name, fmt, size):
    data = png_bomb if name == "png" else jpeg_claiming(size, size)
    store.put_bytes("images", f"incoming/bomb/image.{name}", data)
    request = PrepareRequest(
        study_id="bomb",
        image=StudyImage(bucket="images", key=f"incoming/bomb/image.{name}", format=fmt, sha256="0" * 64, size_bytes=len(data)),
    )
    with pytest.raises(
        InvalidImage,
        match=rf"study bomb: image is {size} x {size} pixels x 1 channel\(s\) = {size * size:,} samples by its {fmt.upper()} header, over the 100,000,000-sample limit \(MAX_IMAGE_PIXELS\)",
    ):
        prepare_tensors(request, store, ModelRepository(config_only_repository), "artifacts")


def test_the_limit_counts_channels_and_frames():
    rgb = cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))[1].tobytes()
    assert check_pixel_limit(rgb, "png", 30_000, "s").samples == 30_000
    with pytest.raises(InvalidImage, match="100 x 100 pixels x 3 channel"):
        check_pixel_limit(rgb, "png", 29_999, "s")
    with pytest.raises(InvalidImage, match="x 4 frames"):
        check_pixel_limit(dataset_bytes(dicom_dataset(np.zeros((16, 16)), NumberOfFrames=4)), "dicom", 1000, "s")


@pytest.mark.parametrize("syntax", ["jpeg-baseline", "jpeg-lossless-sv1", "jpeg-ls-lossless", "jpeg2000-lossless"])
def test_truncated_compressed_pixel_data_is_refused_naming_the_transfer_syntax(picture, syntax):
    """libjpeg would decode a cut JPEG / JPEG-LS stream into a half-grey picture without a word."""
    import io

    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(io.BytesIO(dicom_in_syntax(picture, syntax)))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    name = pydicom.uid.UID(SYNTAXES[syntax].uid).name
    with pytest.raises(InvalidImage, match=rf"study s: DICOM pixel data in {re.escape(name)} \({SYNTAXES[syntax].uid}\) is truncated"):
        decode_dicom(buffer.getvalue(), "s")


def test_undecodable_pixel_data_names_the_transfer_syntax(picture):
    import io

    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(dicom_in_syntax(picture, "jpeg2000-lossless")))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200) + b"\xff\xd9"])  # a J2K start, then nothing valid
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(
        InvalidImage, match=r"study s: DICOM pixel data cannot be read \(\w+\) in JPEG 2000 Image Compression \(Lossless Only\)"
    ):
        decode_dicom(buffer.getvalue(), "s")


def test_a_voi_lut_table_maps_through_its_output_range(picture):
    from pydicom.dataset import Dataset

    values = stored_values(picture, 12)
    table = Dataset()
    table.add_new("LUTDescriptor", "US", [4096, 0, 8])  # 4096 entries from stored value 0, 8-bit output
    gamma = np.rint(255 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)
    table.add_new("LUTData", "US", gamma.tolist())
    decoded = decode_dicom(dataset_bytes(dicom_dataset(values, VOILUTSequence=[table], WindowCenter=100, WindowWidth=10)), "s")
    assert decoded.intensity_rule == "dicom-voi-lut", "the table is preferred over a window"
    np.testing.assert_allclose(decoded.pixels, gamma[values] / 255.0, atol=1e-6)
