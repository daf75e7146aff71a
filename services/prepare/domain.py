"""Prepare stage: decode the study's image and write one input tensor per model to the artifacts bucket.

Inputs: the validated image's location and real format.
Outputs: per model, where its tensor is and how the image was letterboxed into it (so boxes can be
mapped back to original pixels). Tensors never travel in the workflow state: Step Functions caps
payloads at 256 KB and a 224x224 float32 tensor alone is 196 KB.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from shared.errors import InvalidImage
from shared.messages import Letterbox, OriginalImage, PreparedTensors, PrepareRequest, TensorRef
from shared.model_repository import ModelRepository, ModelSpec
from shared.storage import ObjectStore

# torchxrayvision's convention: images scaled to [-1024, 1024].
XRV_RANGE = 1024.0





@dataclass
class Decoded:
    pixels: np.ndarray  # float32, HxW, 0 = black, 1 = white as a radiologist sees it
    bit_depth: int
    photometric: str


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


def decode_raster(data: bytes, study_id: str) -> Decoded:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise InvalidImage("image cannot be decoded (corrupt or truncated)", study_id=study_id)
    if array.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if array.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        array = cv2.cvtColor(array, code)
    if array.dtype == np.uint8:
        bits = 8
    elif array.dtype == np.uint16:
        bits = png_significant_bits(data) or 16
    else:
        raise InvalidImage(f"unsupported pixel type {array.dtype}", study_id=study_id)
    return Decoded(array.astype(np.float32) * np.float32(1.0 / (2**bits - 1)), bits, "MONOCHROME2")


def decode_dicom(data: bytes, study_id: str) -> Decoded:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        raw = ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad or unsupported files
        raise InvalidImage(f"DICOM pixel data cannot be read ({type(e).__name__}); compressed transfer syntaxes other than those numpy decodes are not supported", study_id=study_id) from e
    if raw.ndim != 2:
        raise InvalidImage(f"DICOM image must be a single grayscale frame, found shape {list(raw.shape)}", study_id=study_id)
    # Modality LUT (rescale slope/intercept) then VOI LUT (the window the acquisition chose).
    values = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise InvalidImage("image decodes to a constant value: nothing to read", study_id=study_id)
    pixels = (values - lo) / (hi - lo)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white. Invert so that bone is bright.
        pixels = 1.0 - pixels
    return Decoded(pixels, int(ds.get("BitsStored", 16)), photometric)


def letterbox(pixels: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Scale the longer side to `size`, centre, pad with black. Nothing is cropped."""
    h, w = pixels.shape
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.zeros((size, size), np.float32)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, Letterbox(scale=new_w / w, pad_x=pad_x, pad_y=pad_y)


def normalise(square: np.ndarray, normalization: str) -> np.ndarray:
    if normalization == "xrv":
        return (square * 2.0 - 1.0) * XRV_RANGE
    return square


def to_npy(tensor: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, tensor, allow_pickle=False)
    return buffer.getvalue()


def model_tensor(pixels: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, Letterbox]:
    square, box = letterbox(pixels, spec.input_size)
    return normalise(square, spec.normalization)[np.newaxis, np.newaxis].astype(np.float32), box


def prepare_tensors(request: PrepareRequest, store: ObjectStore, repository: ModelRepository, artifacts_bucket: str) -> PreparedTensors:
    study_id = request.study_id
    data = store.get_bytes(request.image.bucket, request.image.key)
    decoded = decode_dicom(data, study_id) if request.image.format == "dicom" else decode_raster(data, study_id)
    pixels = decoded.pixels
    if float(pixels.max() - pixels.min()) < 1e-6:
        raise InvalidImage("image decodes to a constant value: nothing to read", study_id=study_id)
    h, w = pixels.shape
    tensors: dict[str, TensorRef] = {}
    bytes_out = 0
    for spec in repository.models.values():
        tensor, box = model_tensor(pixels, spec)
        stored = store.put_bytes(artifacts_bucket, f"tensors/{study_id}/{spec.name}.npy", to_npy(tensor))
        bytes_out += stored.size
        tensors[spec.name] = TensorRef(
            bucket=artifacts_bucket, key=stored.key, shape=list(tensor.shape), letterbox=box,
            original_width=w, original_height=h,
        )
    return PreparedTensors(
        study_id=study_id, original=OriginalImage(width=w, height=h, bit_depth=decoded.bit_depth, photometric=decoded.photometric),
        tensors=tensors, bytes_in=len(data), bytes_out=bytes_out,
    )
