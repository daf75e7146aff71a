"""Pixels as a radiologist sees them: every container RadStream reads (PNG, JPEG, DICOM in any transfer syntax
pydicom decodes) decoded to one float32 grayscale picture, 0 = black and 1 = white.

Used by prepare (the models' tensors), export (the overlay drawn on the source) and the console (the study viewer):
one decoder, so the picture the models saw is the picture the overlay and the viewer show. Its libraries are in
shared/requirements-pixels.txt, installed only by the images that decode.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from shared.errors import InvalidImage
from shared.imageheader import PNG_SIGNATURE
from shared.messages import ImageFormat


def sniff_format(head: bytes) -> ImageFormat | None:
    """The real format, by magic bytes: a file's extension proves nothing."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":  # 128-byte preamble, then the DICOM prefix
        return "dicom"
    return None


@dataclass
class Decoded:
    pixels: np.ndarray  # float32, HxW, 0 = black, 1 = white as a radiologist sees it
    bit_depth: int
    photometric: str
    intensity_rule: str = ""


def png_significant_bits(data: bytes) -> int | None:
    """The sBIT chunk, if any: a 16-bit PNG often holds 12-bit detector data."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"sBIT":
            return data[pos + 8]
        if kind == b"IDAT":
            return None
        pos += 12 + length
    return None


def inferred_bits(peak: int) -> int:
    """The smallest depth b in 8..16 whose range holds the brightest value: 10-14-bit detector data in a 16-bit
    container without sBIT still fills its own range, not 1/16 of 65535."""
    return next(b for b in range(8, 17) if peak < 2**b)


def to_gray(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if array.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(array, code)
    return array


def decode_raster(data: bytes, study_id: str) -> Decoded:
    container = "png" if data.startswith(PNG_SIGNATURE) else "jpeg"
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise InvalidImage("image cannot be decoded (corrupt or truncated)", study_id=study_id)
    array = to_gray(array)
    if array.dtype == np.uint8:
        bits, rule = 8, f"{container}8"
    elif array.dtype == np.uint16:
        peak = int(array.max())
        sbit = png_significant_bits(data) if container == "png" else None
        if sbit and 8 <= sbit < 16 and peak >= 2**sbit:
            # The PNG specification's own form: samples scaled up to 16 bits, sBIT recording the original depth.
            bits, rule = 16, f"{container}16-sbit{sbit}-scaled"
        elif sbit and 8 <= sbit <= 16:
            bits, rule = sbit, f"{container}16-sbit-{sbit}bit"
        else:
            bits = inferred_bits(peak)
            rule = f"{container}16-inferred-{bits}bit"
    else:
        raise InvalidImage(f"unsupported pixel type {array.dtype}", study_id=study_id)
    # In place on one float32 array (a multiply and a clip into new arrays cost two more allocations of the picture's
    # size: 6 ms at 3000²); the very same values.
    pixels = array.astype(np.float32)
    pixels *= np.float32(1.0 / (2**bits - 1))
    np.clip(pixels, 0.0, 1.0, out=pixels)
    return Decoded(pixels, bits, "MONOCHROME2", rule)


# Photometric interpretations a CR/DX image may carry, and what pydicom hands back for them:
# grayscale as is; RGB and the YBR family (JPEG Baseline writes YBR_FULL_422, JPEG 2000 YBR_ICT/RCT) as RGB.
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def stored_bits(ds: Any) -> int:
    return int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)


def dicom_output_range(ds: Any) -> tuple[float, float]:
    """The values the stored bits can take, through the modality LUT: what a display maps black..white when
    no VOI says otherwise, and the very range pydicom's windowing writes into (PS3.3 C.11.2.1.2)."""
    bits = stored_bits(ds)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if not ds.get("ModalityLUTSequence") and slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def padding_mask(raw: np.ndarray, ds: Any) -> np.ndarray | None:
    """Pixel Padding Value (and Range Limit): stored values that are not the patient, e.g. outside the collimator."""
    if raw.ndim != 2 or ds.get("PixelPaddingValue") is None:
        return None
    first = int(ds.PixelPaddingValue)
    last = int(ds.PixelPaddingRangeLimit) if ds.get("PixelPaddingRangeLimit") is not None else first
    lo, hi = min(first, last), max(first, last)
    mask = (raw >= lo) & (raw <= hi)
    return mask if mask.any() else None


def apply_voi_table(values: np.ndarray, table: Any) -> tuple[np.ndarray, int]:
    """A VOI LUT Sequence item applied to modality values; returns the output and its depth in bits.

    Done here rather than by pydicom 3.0's apply_voi, which indexes through an array of the table's output
    type, so an 8-bit table of 4096 entries wraps every index above 255. Values below the first mapped one
    take the first entry, above the last the last (PS3.3 C.11.2.1.1). The entries' depth is LUTDescriptor[2],
    raised when the entries exceed it (some writers under-declare).
    """
    entries, first, bits = (int(v) for v in table.LUTDescriptor)
    entries = entries or 2**16
    raw = table.LUTData
    if isinstance(raw, bytes):
        lut = np.frombuffer(raw, np.uint8 if bits <= 8 and len(raw) == entries else np.dtype("<u2"))
    else:
        lut = np.atleast_1d(np.asarray(raw))
    lut = lut[:entries].astype(np.int64)
    index = np.clip(np.rint(np.asarray(values, np.float64)).astype(np.int64) - first, 0, len(lut) - 1)
    peak = int(lut.max())
    if peak >= 2**bits:
        bits = inferred_bits(min(peak, 2**16 - 1))
    return lut[index], bits


RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def codestream_complete(ds: Any) -> bool:
    """JPEG, JPEG-LS and JPEG 2000 codestreams all end with FF D9 (EOI / EOC); fragments are padded to even length."""
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:  # noqa: BLE001 - a damaged encapsulation: let the decoder say what it finds
        return True
    return frame.rstrip(b"\0").endswith(b"\xff\xd9")


def pixel_data_incomplete(ds: Any) -> str | None:
    """Why a data set's Pixel Data cannot hold a whole image for its transfer syntax (at most 64 characters, naming the
    attribute, never a value), or None when it can. Native: Rows x Columns x SamplesPerPixel x BitsAllocated (x
    NumberOfFrames) bits (pydicom's expected length: YBR_FULL_422 carries two samples a pixel), padded to even length; JPEG, JPEG-LS, JPEG 2000: each frame's codestream ends with its
    end-of-image marker (codestream_complete); RLE: the frame decodes to its full length. The gateway asks this before
    it acknowledges an instance, so what it says Success for is what decode_dicom can read."""
    from pydicom.encaps import generate_frames

    if "PixelData" not in ds:
        return "PixelData is missing or cut short"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None or not syntax.is_encapsulated:
        from pydicom.pixels.utils import get_expected_length

        try:
            if "PhotometricInterpretation" in ds:
                expected = get_expected_length(ds, "bytes")  # YBR_FULL_422 holds 2 samples per pixel, not 3
            else:  # decode_dicom reads it as MONOCHROME2
                expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) * frames + 7) // 8
        except (AttributeError, TypeError, ValueError, KeyError):
            return "Rows, Columns or BitsAllocated is missing"
        return "PixelData is shorter than the image attributes need" if len(ds.PixelData) < expected else None
    try:
        found = list(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception:  # noqa: BLE001 - pydicom raises several types for a damaged item structure
        return "PixelData fragments cannot be read"
    if len(found) < frames or not all(found):
        return "PixelData holds fewer frames than NumberOfFrames"
    if syntax == RLE_LOSSLESS:
        try:
            _ = ds.pixel_array  # RLE segments carry no end marker: only decoding tells a cut one
        except Exception:  # noqa: BLE001 - pydicom raises many types for damaged pixel data
            return "PixelData RLE segments are cut short"
        return None
    if not codestream_complete(ds):  # the first frame: decode_dicom reads single-frame images only
        return "PixelData codestream has no end-of-image marker"
    return None


def decode_dicom(data: bytes, study_id: str) -> Decoded:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_windowing

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises many types for damaged files
        raise InvalidImage(f"DICOM file cannot be read ({type(e).__name__})", study_id=study_id) from e
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    syntax_name = f"{syntax.name} ({syntax})" if syntax else "unknown transfer syntax"
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in GRAYSCALE + COLOUR:
        raise InvalidImage(f"DICOM PhotometricInterpretation {photometric} is not supported for CR/DX (grayscale, RGB or YBR)", study_id=study_id)
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InvalidImage(f"DICOM image must be a single frame, found {ds.NumberOfFrames} frames", study_id=study_id)
    if syntax is not None and syntax.is_encapsulated and syntax != RLE_LOSSLESS and not codestream_complete(ds):
        # libjpeg decodes a cut JPEG or JPEG-LS stream without complaint, filling the rest with grey.
        raise InvalidImage(f"DICOM pixel data in {syntax_name} is truncated: its codestream has no end-of-image marker", study_id=study_id)
    try:
        raw = ds.pixel_array  # decompresses with pydicom's pixel backends; YBR comes back as RGB
    except Exception as e:  # pydicom raises many types for bad or unsupported pixel data
        raise InvalidImage(f"DICOM pixel data cannot be read ({type(e).__name__}) in {syntax_name}", study_id=study_id) from e
    if raw.ndim == 3 and raw.shape[2] == 3 and photometric in COLOUR:
        # Luma of the RGB picture (ITU-R BT.601, as for a colour PNG); a grey picture stored as colour keeps its values.
        raw = np.rint(raw.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])).astype(raw.dtype)
    if raw.ndim != 2:
        raise InvalidImage(f"DICOM image must be a single grayscale frame, found shape {list(raw.shape)}", study_id=study_id)

    lo, hi = dicom_output_range(ds)
    bits = stored_bits(ds)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    values = apply_modality_lut(raw, ds) if photometric in GRAYSCALE else raw
    has_lut = bool(ds.get("VOILUTSequence")) and ds.VOILUTSequence[0].get("LUTData") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if photometric in GRAYSCALE and has_lut:
        values, lut_bits = apply_voi_table(values, ds.VOILUTSequence[0])
        lo, hi, rule = 0.0, float(2**lut_bits - 1), "dicom-voi-lut"
    elif photometric in GRAYSCALE and has_window:
        values, rule = apply_windowing(values, ds), "dicom-window"
    else:
        rule = f"dicom-{bits}bit" + ("-signed" if signed else "")
    # MONOCHROME1 (low values white) and Presentation LUT Shape INVERSE both mean: the display inverts.
    # A DX MONOCHROME1 image carries INVERSE as well (PS3.3 C.8.11.6.1.2): one inversion, not two.
    # Measured from the other end of the range, so a MONOCHROME1 file and its MONOCHROME2 twin give identical floats.
    inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    values = np.asarray(values, np.float32)
    offset = (np.float32(hi) - values) if inverse else (values - np.float32(lo))
    pixels = np.clip(offset / np.float32(hi - lo), 0.0, 1.0)
    if inverse:
        rule += "-inverted"
    padding = padding_mask(raw, ds) if photometric in GRAYSCALE else None
    if padding is not None:  # padding is background: black whatever its stored value, and never part of the picture
        pixels[padding] = 0.0
        rule += "-padding"
    return Decoded(pixels.astype(np.float32), bits, photometric, rule)
