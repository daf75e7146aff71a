"""Pixels as a radiologist sees them: every container RadStream reads (PNG, JPEG, DICOM in any transfer syntax
pydicom decodes) decoded to one float32 grayscale picture, 0 = black and 1 = white.

Used by prepare (the models' tensors), export (the overlay drawn on the source) and the console (the study viewer):
one decoder, so the picture the models saw is the picture the overlay and the viewer show. Its libraries are in
shared/requirements-pixels.txt, installed only by the images that decode.
"""

from __future__ import annotations

import io
import struct
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from shared.errors import InvalidImage
from shared.imageheader import PNG_SIGNATURE


@dataclass
class Decoded:
    pixels: np.ndarray  # float32, HxW, 0 = black, 1 = white as a radiologist sees it
    bit_depth: int
    photometric: str
    intensity_rule: str = ""
    # The picture's 0.5th, 5th, 95th and 99.5th percentiles on the black..white range its container declares
    # (bit depth, sBIT, modality LUT, VOI): how the exposure sat on the detector, which the window below hides.
    declared_levels: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


# The intensity rule (docs/models.md "Intensity"): without a declared VOI, black and white are the 0.5th and 99.5th
# percentiles of the stored values (padding excluded), so the same stored values give the same picture whatever
# depth a container declares or fails to declare. Percentiles are taken on a fixed grid of about 2^16 samples
# (every k-th row and column): the same stored values give the same grid at any size. The first and last of these
# levels are the window; all four, on the declared range, are what the exposure flags read (services/prepare/quality.py).
LEVEL_PERCENTILES = (0.5, 5.0, 95.0, 99.5)
WINDOW_SAMPLES = 1 << 16


def window_sample(values: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    step = max(1, int((values.shape[0] * values.shape[1] / WINDOW_SAMPLES) ** 0.5))
    sample = values[::step, ::step]
    if exclude is not None:
        sample = sample[~exclude[::step, ::step]]
    return np.asarray(sample).ravel()


def percentile_levels(values: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """LEVEL_PERCENTILES of the values (float64, numpy's linear interpolation); the window's bounds are the first and
    last. Integer samples are counted (bincount and a cumulative sum: a tenth of the time of a partition)."""
    sample = window_sample(values, exclude)
    if sample.size == 0:
        return np.zeros(len(LEVEL_PERCENTILES))
    if sample.dtype.kind in "biu":
        low = int(sample.min())
        if int(sample.max()) - low < 1 << 17:
            counts = np.cumsum(np.bincount((sample.astype(np.int64) - low) if low else sample))
            rank = (sample.size - 1) * np.asarray(LEVEL_PERCENTILES) / 100.0
            below, frac = np.floor(rank), rank - np.floor(rank)
            # the k-th smallest value is the first whose cumulative count exceeds k
            at = np.searchsorted(counts, below, side="right").astype(np.float64)
            nxt = np.searchsorted(counts, np.minimum(below + 1, sample.size - 1), side="right").astype(np.float64)
            return low + at + frac * (nxt - at)
    return np.percentile(sample.astype(np.float64), LEVEL_PERCENTILES)


def window_bounds(levels: np.ndarray, values: np.ndarray, exclude: np.ndarray | None = None) -> tuple[float, float]:
    low, high = float(levels[0]), float(levels[-1])
    if high <= low:  # more than 99% of one value: the picture is what differs from it, min..max
        sample = window_sample(values, exclude)
        low, high = (float(sample.min()), float(sample.max())) if sample.size else (0.0, 1.0)
        if high <= low:  # the sampling grid missed what differs (a small structure on a flat field): every value
            kept = values if exclude is None else values[~exclude]
            low, high = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 1.0)
    return low, high


def to_unit(values: np.ndarray, low: float, high: float, wide: bool = False) -> np.ndarray:
    """(values - low) / (high - low), clipped to [0, 1], as float32 (a new array). Computed in float32 for samples of up
    to 16 bits (float32 holds them exactly: one array, in place), in float64 for `wide` ones (32-bit, double float):
    a float32 round trip of 0xFFFFFFFF is 2^32, which turned white into black."""
    span = high - low if high > low else 1.0
    work = values.astype(np.float64 if wide else np.float32)  # int32 holding 16-bit values is exact in float32 too
    np.subtract(work, work.dtype.type(low), out=work)
    np.multiply(work, work.dtype.type(1.0 / span), out=work)
    np.clip(work, 0.0, 1.0, out=work)
    return work if work.dtype == np.float32 else work.astype(np.float32)


def percentile_window(values: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """The rule applied to values that are already display-oriented (high = white): the training script uses it too."""
    levels = percentile_levels(values, exclude)
    wide = values.dtype.itemsize > 4 or (values.dtype.kind in "iu" and values.dtype.itemsize > 2)
    return to_unit(values, *window_bounds(levels, values, exclude), wide)


def declared(levels: np.ndarray, low: float, high: float) -> tuple[float, float, float, float]:
    span = high - low if high > low else 1.0
    return tuple(float(np.clip((v - low) / span, 0.0, 1.0)) for v in levels)  # type: ignore[return-value]


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
    """The smallest depth b in 8..16 whose range holds the brightest value: the declared range of a 16-bit PNG without
    sBIT (10-14-bit detector data often comes so), on which its exposure is read; the window does not use it."""
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
            bits, rule = sbit, f"{container}16-sbit{sbit}"
        else:
            # No declared depth: the window needs none; the exposure levels are read on the smallest depth
            # that holds the data (10-14-bit exports often carry no sBIT).
            bits, rule = inferred_bits(peak), f"{container}16"
    else:
        raise InvalidImage(f"unsupported pixel type {array.dtype}", study_id=study_id)
    levels = percentile_levels(array)
    pixels = to_unit(array, *window_bounds(levels, array))  # uint8/uint16: float32 is exact
    return Decoded(pixels, bits, "MONOCHROME2", rule + "-percentile", declared(levels, 0.0, float(2**bits - 1)))


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


# Bytes an encoder may leave after the end-of-image marker: padding to an even length (00, or FF as some encoders
# write it: FF D9 FF), or a few bytes of slack. FF D9 occurs nowhere else near a codestream's end: JPEG and JPEG-LS
# stuff every FF in entropy-coded data (FF 00, FF 0x..7F) and JPEG 2000 forbids FF 90 and above in packet data.
TRAILING_AFTER_EOI = 16


def codestream_complete(ds: Any) -> bool:
    """JPEG, JPEG-LS and JPEG 2000 codestreams all end with FF D9 (EOI / EOC), followed at most by a little padding;
    the frame's fragments are joined first, so padding in the last fragment of several is judged the same way."""
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:
        return True
    return b"\xff\xd9" in frame.rstrip(b"\x00\xff")[-(2 + TRAILING_AFTER_EOI) :]


def pixel_data_incomplete(ds: Any) -> str | None:
    """Why a data set's Pixel Data cannot hold a whole image for its transfer syntax (at most 64 characters, naming the
    attribute, never a value), or None when it can. Native: Rows x Columns x SamplesPerPixel x BitsAllocated (x
    NumberOfFrames) bits (pydicom's expected length: YBR_FULL_422 carries two samples a pixel), padded to even length; JPEG, JPEG-LS, JPEG 2000: each frame's codestream ends with its
    end-of-image marker (codestream_complete); RLE: the frame decodes to its full length. The gateway asks this before
    it acknowledges an instance, so what it says Success for is what decode_dicom can read."""
    from pydicom.encaps import generate_frames

    use_pixel_plugins()  # the RLE check decodes with the plugins decode_dicom uses

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
                expected = (
                    int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) * frames + 7
                ) // 8
        except (AttributeError, TypeError, ValueError, KeyError):
            return "Rows, Columns or BitsAllocated is missing"
        return "PixelData is shorter than the image attributes need" if len(ds.PixelData) < expected else None
    try:
        found = list(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception:
        return "PixelData fragments cannot be read"
    if len(found) < frames or not all(found):
        return "PixelData holds fewer frames than NumberOfFrames"
    if syntax == RLE_LOSSLESS:
        try:
            _ = ds.pixel_array  # RLE segments carry no end marker: only decoding tells a cut one
        except Exception:
            return "PixelData RLE segments are cut short"
        return None
    if not codestream_complete(ds):  # the first frame: decode_dicom reads single-frame images only
        return "PixelData codestream has no end-of-image marker"
    return None


JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"


_PLUGINS_SET = threading.Lock()
_plugins_set = False


def use_pixel_plugins() -> None:
    """python-gdcm is installed for gdcm_jpeg_extended alone; pydicom would also pick it up as a pixel plugin for every
    compressed syntax, where it turns a damaged JPEG 2000 stream into pixels instead of an error. Done once, under a lock
    (pydicom's remove_plugin is not thread-safe), on the first DICOM decode: the training environment imports this
    module without pydicom."""
    global _plugins_set
    with _PLUGINS_SET:
        if _plugins_set:
            return
        _remove_gdcm_plugin()
        _plugins_set = True


def _remove_gdcm_plugin() -> None:
    import pydicom.uid
    from pydicom.pixels import get_decoder

    for syntax in pydicom.uid.AllTransferSyntaxes:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            continue
        if "gdcm" in decoder.available_plugins:
            decoder.remove_plugin("gdcm")


def gdcm_jpeg_extended(data: bytes, ds: Any) -> np.ndarray | None:
    """A grayscale 12-bit JPEG Extended frame through GDCM's IJG codec, or None when GDCM cannot read it either.

    libjpeg (pylibjpeg, pydicom's only 12-bit JPEG backend) refuses what dcmtk's and GDCM's encoders and older
    modalities write for 12-bit sequential JPEG ("scan start must be zero and scan stop must be 63"); GDCM, the DICOM
    toolkits' own codec, reads them. pydicom keeps GDCM out of 12-bit JPEG Extended, so it is asked directly."""
    import os
    import tempfile

    import gdcm

    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    gdcm.Trace.WarningOff()
    gdcm.Trace.ErrorOff()  # GDCM tries each JPEG precision in turn and reports every miss on stderr
    handle, path = tempfile.mkstemp(suffix=".dcm")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(path)
        if not reader.Read():
            return None
        image = reader.GetImage()
        buffer = image.GetBuffer()
    finally:
        os.unlink(path)
    raw = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else bytes(buffer)
    dtype = np.dtype(("<i" if int(ds.get("PixelRepresentation", 0)) == 1 else "<u") + ("2" if int(ds.BitsAllocated) > 8 else "1"))
    rows, columns = int(ds.Rows), int(ds.Columns)
    if len(raw) != rows * columns * dtype.itemsize:
        return None
    return np.frombuffer(raw, dtype).reshape(rows, columns).copy()


def _varies(values: np.ndarray, exclude: np.ndarray | None) -> bool:
    kept = np.asarray(values) if exclude is None else np.asarray(values)[~exclude]
    return bool(kept.size) and float(kept.max()) > float(kept.min())


def decode_dicom(data: bytes, study_id: str) -> Decoded:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_windowing

    use_pixel_plugins()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises many types for damaged files
        raise InvalidImage(f"DICOM file cannot be read ({type(e).__name__})", study_id=study_id) from e
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    syntax_name = f"{syntax.name} ({syntax})" if syntax else "unknown transfer syntax"
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in GRAYSCALE + COLOUR:
        raise InvalidImage(
            f"DICOM PhotometricInterpretation {photometric} is not supported for CR/DX (grayscale, RGB or YBR)", study_id=study_id
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InvalidImage(f"DICOM image must be a single frame, found {ds.NumberOfFrames} frames", study_id=study_id)
    if syntax is not None and syntax.is_encapsulated and syntax != RLE_LOSSLESS and not codestream_complete(ds):
        # libjpeg decodes a cut JPEG or JPEG-LS stream without complaint, filling the rest with grey.
        raise InvalidImage(f"DICOM pixel data in {syntax_name} is truncated: its codestream has no end-of-image marker", study_id=study_id)
    try:
        raw = ds.pixel_array  # decompresses with pydicom's pixel backends; YBR comes back as RGB
    except Exception as e:  # pydicom raises many types for bad or unsupported pixel data
        fallback = gdcm_jpeg_extended(data, ds) if syntax == JPEG_EXTENDED_12BIT else None
        if fallback is None:
            raise InvalidImage(f"DICOM pixel data cannot be read ({type(e).__name__}) in {syntax_name}", study_id=study_id) from e
        raw = fallback
    if raw.ndim == 3 and raw.shape[2] == 3 and photometric in COLOUR:
        # Luma of the RGB picture (ITU-R BT.601, as for a colour PNG); a grey picture stored as colour keeps its values.
        # float64 beyond 16 bits: float32 holds integers only up to 2^24.
        exact32 = raw.dtype.kind in "biu" and raw.dtype.itemsize <= 2
        luma = raw.astype(np.float32 if exact32 else np.float64) @ np.array([0.299, 0.587, 0.114], np.float32 if exact32 else np.float64)
        raw = np.rint(luma).astype(raw.dtype) if raw.dtype.kind in "biu" else luma
    if raw.ndim != 2:
        raise InvalidImage(f"DICOM image must be a single grayscale frame, found shape {list(raw.shape)}", study_id=study_id)

    floating = raw.dtype.kind == "f"  # Float / Double Float Pixel Data: no stored depth, the values are the data
    if floating:
        raw = np.nan_to_num(raw, nan=float(np.nanmin(raw)) if np.isfinite(raw).any() else 0.0)
    bits = stored_bits(ds)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    values = apply_modality_lut(raw, ds) if photometric in GRAYSCALE and not floating else raw
    padding = padding_mask(raw, ds) if photometric in GRAYSCALE and not floating else None
    lo, hi = dicom_output_range(ds) if not floating else (float(raw.min()), float(raw.max()))
    has_lut = bool(ds.get("VOILUTSequence")) and ds.VOILUTSequence[0].get("LUTData") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    voi = photometric in GRAYSCALE and not floating and (has_lut or has_window)
    if voi and has_lut:
        values, lut_bits = apply_voi_table(values, ds.VOILUTSequence[0])
        lo, hi, rule = 0.0, float(2**lut_bits - 1), "dicom-voi-lut"
    elif voi:
        values, rule = apply_windowing(values, ds), "dicom-window"
    percentile_rule = ("dicom-float" if floating else f"dicom-{bits}bit" + ("-signed" if signed else "")) + "-percentile"
    if voi and not _varies(values, padding):
        # The declared VOI leaves nothing to read (every pixel below or above the window: a window meant for another
        # picture, or copied from a template): the stored values are the picture, under the percentile rule.
        values, voi = (apply_modality_lut(raw, ds) if not floating else raw), False
        lo, hi = dicom_output_range(ds) if not floating else (float(raw.min()), float(raw.max()))
        rule = percentile_rule + "-voi-saturated"
    elif not voi:
        rule = percentile_rule
    # MONOCHROME1 (low values white) and Presentation LUT Shape INVERSE both mean: the display inverts.
    # A DX MONOCHROME1 image carries INVERSE as well (PS3.3 C.8.11.6.1.2): one inversion, not two.
    # Turned around within the declared range before anything is measured, so a MONOCHROME1 file and its MONOCHROME2
    # twin hold the very same values from here on and give identical floats.
    inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    wide = int(ds.get("BitsAllocated", 16) or 16) > 16
    values = np.asarray(values)
    if inverse:
        if values.dtype.kind in "iu" and float(lo + hi).is_integer():  # integers stay integers: the twin's very values
            values = np.subtract(np.int64(lo + hi), values, dtype=np.int64 if wide else np.int32)
        else:
            turned = values.astype(np.float64 if wide else np.float32)
            values = np.subtract(turned.dtype.type(lo + hi), turned, out=turned)
        rule += "-inverted"
    levels = percentile_levels(values, padding)
    # A declared VOI (window or table) is the modality's statement of what to show and wins; else the percentile window.
    pixels = to_unit(values, lo, hi, wide) if voi else to_unit(values, *window_bounds(levels, values, padding), wide)
    if padding is not None:  # padding is background: black whatever its stored value, and never part of the picture
        pixels[padding] = 0.0
        rule += "-padding"
    return Decoded(pixels, bits if not floating else int(ds.get("BitsAllocated", 32)), photometric, rule, declared(levels, lo, hi))
