"""Decoding, by class of input (issue 20): codestreams that real encoders end with padding after EOI, every sample depth
pydicom reads (1, 8, 12, 16, 32 bits, signed and unsigned, grayscale and RGB, float pixel data), and truncation.

The compressed files come from real encoders (dcmtk's dcmcjpeg and dcmcjpls, GDCM's gdcmconv); the padding is appended
to the last fragment with pydicom's encapsulation helpers, as the encoders seen in the wild write it.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from synthetic.phantoms import generate_phantom, to_uint8
from synthetic.transfer_syntaxes import dataset_bytes, dcmtk, dicom_dataset, stored_values
from shared.errors import InvalidImage
from shared.pixels import decode_dicom, decode_raster


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return generate_phantom(np.random.default_rng(20), size=96).image


def gdcmconv(options: tuple[str, ...], data: bytes) -> bytes:
    tool = shutil.which("gdcmconv")
    assert tool, "gdcmconv (Debian package libgdcm-tools) is not installed; `make dcmtk` installs it"
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        source.write_bytes(data)
        run = subprocess.run([tool, *options, str(source), str(target)], capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        return target.read_bytes()


# (name, encoder, transfer syntax UID it writes): JPEG 2000, JPEG Lossless, JPEG Extended (12-bit), JPEG-LS.
ENCODERS = {
    "jpeg2000-gdcm": (lambda data: gdcmconv(("--j2k",), data), "1.2.840.10008.1.2.4.90"),
    "jpeg-lossless-gdcm": (lambda data: gdcmconv(("--jpeg", "--lossless"), data), "1.2.840.10008.1.2.4.70"),
    "jpeg-lossless-dcmtk": (lambda data: dcmtk("dcmcjpeg", ("+el",), data), "1.2.840.10008.1.2.4.57"),
    "jpeg-extended-dcmtk": (lambda data: dcmtk("dcmcjpeg", ("+ee", "+sr"), data), "1.2.840.10008.1.2.4.51"),
    "jpeg-ls-dcmtk": (lambda data: dcmtk("dcmcjpls", ("+el",), data), "1.2.840.10008.1.2.4.80"),
}
# What encoders write after EOI to reach an even length, or as slack: one 0xFF (FF D9 FF ...), zeros, a few bytes.
PADDINGS = {"ff": b"\xff", "ff-ff": b"\xff\xff", "zero": b"\x00", "ff-zero": b"\xff\x00", "few": b"\xff\x00\xff\x00\x00\x00"}


def encoded(picture: np.ndarray, encoder: str, photometric: str = "MONOCHROME2") -> bytes:
    import pydicom

    source = dataset_bytes(dicom_dataset(stored_values(picture, 12, photometric), photometric, bits_stored=12))
    encode, uid = ENCODERS[encoder]
    data = encode(source)
    assert str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID) == uid
    return data


def with_last_fragment(data: bytes, change) -> bytes:
    """The file with its last pixel-data fragment replaced by change(fragment), re-encapsulated (fragments stay even)."""
    import pydicom
    from pydicom.encaps import generate_fragments

    ds = pydicom.dcmread(io.BytesIO(data))
    fragments = list(generate_fragments(ds.PixelData))[1:]  # the first item is the Basic Offset Table
    last = fragments[-1]
    if last.endswith(b"\xd9\x00"):  # the encoder's own even-length padding: ours goes right after EOI instead
        last = last[:-1]
    last = change(last)
    fragments[-1] = last + b"\x00" * (len(last) % 2)
    ds.PixelData = encapsulate_fragments(fragments)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def encapsulate_fragments(fragments: list[bytes]) -> bytes:
    """One frame made of several fragments, with an empty Basic Offset Table (PS3.5 A.4)."""
    from pydicom.encaps import itemize_fragment

    return itemize_fragment(b"") + b"".join(itemize_fragment(f) for f in fragments) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@pytest.mark.parametrize("padding", list(PADDINGS))
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_padding_after_the_end_of_image_marker_is_not_truncation(picture, encoder, padding):
    clean = encoded(picture, encoder)
    padded = with_last_fragment(clean, lambda fragment: fragment + PADDINGS[padding])
    reference = decode_dicom(clean, "s")
    decoded = decode_dicom(padded, "s")
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)


def test_a_monochrome1_cr_padded_after_eoi_decodes_like_its_monochrome2_twin(picture):
    padded = with_last_fragment(encoded(picture, "jpeg2000-gdcm", "MONOCHROME1"), lambda fragment: fragment + b"\xff")
    mono2 = decode_dicom(encoded(picture, "jpeg2000-gdcm"), "s")
    np.testing.assert_array_equal(decode_dicom(padded, "s").pixels, mono2.pixels)


def test_padding_in_a_frame_split_over_fragments(picture):
    def split(fragment: bytes) -> bytes:
        return fragment + b"\xff"

    clean = encoded(picture, "jpeg-ls-dcmtk")
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(io.BytesIO(clean))
    frame = split(next(generate_frames(ds.PixelData, number_of_frames=1)))
    frame += b"\x00" * (len(frame) % 2)
    cut = (len(frame) // 3) & ~1
    ds.PixelData = encapsulate_fragments([frame[:cut], frame[cut:]])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    np.testing.assert_array_equal(decode_dicom(buffer.getvalue(), "s").pixels, decode_dicom(clean, "s").pixels)


@pytest.mark.parametrize("padding", ["", "ff", "ff-zero", "few"])
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_a_really_truncated_codestream_is_still_refused_by_name(picture, encoder, padding):
    cut = with_last_fragment(encoded(picture, encoder), lambda fragment: fragment[: len(fragment) // 2] + PADDINGS.get(padding, b""))
    with pytest.raises(InvalidImage, match=r"study s: DICOM pixel data in .+ is truncated: its codestream has no end-of-image marker"):
        decode_dicom(cut, "s")


# -- every sample depth --------------------------------------------------------------------------------------------


def reference(picture: np.ndarray) -> np.ndarray:
    """The same picture as an 8-bit PNG, the container every depth is held to."""
    return decode_raster(cv2.imencode(".png", to_uint8(picture))[1].tobytes(), "s").pixels


def depth_dataset(picture: np.ndarray, bits: int, *, signed: bool = False, rgb: bool = False, photometric: str = "MONOCHROME2"):
    """A dataset of `bits` stored in BitsAllocated 1, 8, 16 or 32, written by pydicom's own pixel-data rules."""
    peak = 2**bits - 1  # in int64: stored_values' int32 cannot hold 32-bit samples
    values = np.rint(np.clip(picture, 0.0, 1.0).astype(np.float64) * peak).astype(np.int64)
    if photometric == "MONOCHROME1":
        values = peak - values
    if signed:
        values -= 2 ** (bits - 1)
    allocated = 1 if bits == 1 else 8 if bits <= 8 else 16 if bits <= 16 else 32
    ds = dicom_dataset(np.zeros(picture.shape, np.uint8), photometric if not rgb else "RGB", bits_stored=8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits, bits - 1, int(signed)
    if rgb:
        values = np.repeat(values[..., None], 3, axis=2)
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    if allocated == 1:
        from pydicom.pixels import pack_bits

        ds.PixelData = pack_bits(values.astype(np.uint8))
    else:
        dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}").newbyteorder("<")
        ds.PixelData = values.astype(dtype).tobytes()
    return ds


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("bits", [8, 12, 16, 32])
def test_every_sample_depth_gives_the_picture_without_wrapping(picture, bits, signed, rgb):
    decoded = decode_dicom(dataset_bytes(depth_dataset(picture, bits, signed=signed, rgb=rgb)), "s")
    assert np.abs(decoded.pixels - reference(picture)).max() <= 2.5 / 255, (bits, signed, rgb)


def test_white_stays_white_in_32_bit_rgb():
    """0xFFFFFFFF through a float32 round trip is 2^32, which wraps to 0 in uint32: white turned black."""
    picture = np.zeros((64, 64), np.float32)
    picture[16:48, 16:48] = 1.0
    picture[24:40, 24:40] = 0.5
    decoded = decode_dicom(dataset_bytes(depth_dataset(picture, 32, rgb=True)), "s")
    assert decoded.pixels[16:24, 16:48].min() == 1.0 and decoded.pixels[:16].max() == 0.0
    assert abs(float(decoded.pixels[32, 32]) - 0.5) < 1e-3


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_one_bit_pixels(photometric):
    picture = np.zeros((64, 64), np.float32)
    picture[10:50, 20:44] = 1.0
    decoded = decode_dicom(dataset_bytes(depth_dataset(picture, 1, photometric=photometric)), "s")
    np.testing.assert_array_equal(decoded.pixels, picture)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_pixel_data(picture, dtype):
    """Float Pixel Data / Double Float Pixel Data: pydicom returns floats, read by their own values."""
    ds = dicom_dataset(np.zeros(picture.shape, np.uint8), bits_stored=8)
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept
    ds.BitsAllocated = 32 if dtype == "float32" else 64
    values = picture.astype(dtype) * 3000.0 - 1000.0  # e.g. a physical quantity, not detector counts
    if dtype == "float32":
        ds.FloatPixelData = values.tobytes()
    else:
        ds.DoubleFloatPixelData = values.tobytes()
    decoded = decode_dicom(dataset_bytes(ds), "s")
    assert np.abs(decoded.pixels - reference(picture)).max() <= 2.5 / 255
