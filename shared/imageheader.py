"""An image's size as its header declares it, read before any pixel is decoded.

A 40000 x 40000 PNG of zeros is a few hundred kilobytes on disk and 1.6 GB once decoded; a JPEG can
claim any size in its SOF segment. The byte limit (MAX_IMAGE_BYTES) cannot see either, so the stages
read width, height, channels (and frames, for DICOM) from the header and hold the product to
MAX_IMAGE_PIXELS before anything allocates the pixels.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import InvalidImage

if TYPE_CHECKING:  # the training environment imports shared.pixels (and so this module) and has no pydantic
    from shared.messages import ImageFormat

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel (palette: 1 index)
# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic), not DHT/JPG/DAC.
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: no length field


def sniff_format(head: bytes) -> ImageFormat | None:
    """The real format, by magic bytes: a file's extension proves nothing."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":  # 128-byte preamble, then the DICOM prefix
        return "dicom"
    return None


@dataclass(frozen=True)
class ImageGeometry:
    width: int
    height: int
    channels: int
    frames: int = 1

    @property
    def samples(self) -> int:
        return self.width * self.height * self.channels * self.frames

    def describe(self) -> str:
        frames = f" x {self.frames} frames" if self.frames != 1 else ""
        return f"{self.width} x {self.height} pixels x {self.channels} channel(s){frames} = {self.samples:,} samples"


def png_geometry(data: bytes) -> ImageGeometry | None:
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, _depth, colour = struct.unpack(">IIBB", data[16:26])
    return ImageGeometry(width, height, PNG_CHANNELS.get(colour, 4))


def jpeg_geometry(data: bytes) -> ImageGeometry | None:
    """Walk the marker segments up to the first SOF; None when there is none before the data ends."""
    pos = 2 if data.startswith(b"\xff\xd8") else None
    while pos is not None and pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or entropy-coded data before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in JPEG_SOF:
            if pos + 10 > len(data):
                return None
            height, width, components = struct.unpack(">HHB", data[pos + 5 : pos + 10])
            return ImageGeometry(width, height, components)
        pos += 2 + length
    return None


def dicom_geometry(data: bytes) -> ImageGeometry | None:
    import pydicom

    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=["Rows", "Columns", "SamplesPerPixel", "NumberOfFrames"]
        )
        rows, columns = int(ds.Rows), int(ds.Columns)
        return ImageGeometry(columns, rows, int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("NumberOfFrames", 1) or 1))
    except Exception:
        return None


def image_geometry(data: bytes, image_format: str) -> ImageGeometry | None:
    """What the header declares, or None when it cannot be read (the decoder then says why)."""
    read = {"png": png_geometry, "jpeg": jpeg_geometry, "dicom": dicom_geometry}[image_format]
    return read(data)


def check_pixel_limit(data: bytes, image_format: str, max_image_pixels: int, study_id: str | None) -> ImageGeometry:
    """Refuse, before decoding, an image whose header declares more samples than the limit, or no size at all."""
    geometry = image_geometry(data, image_format)
    if geometry is None:
        raise InvalidImage(
            f"image cannot be decoded: its {image_format.upper()} header declares no size (corrupt or truncated)", study_id=study_id
        )
    if geometry.width == 0 or geometry.height == 0:
        raise InvalidImage(
            f"{image_format.upper()} header declares an empty image ({geometry.width} x {geometry.height})", study_id=study_id
        )
    if geometry.samples > max_image_pixels:
        raise InvalidImage(
            f"image is {geometry.describe()} by its {image_format.upper()} header, over the {max_image_pixels:,}-sample limit "
            "(MAX_IMAGE_PIXELS); it was not decoded",
            study_id=study_id,
        )
    return geometry
