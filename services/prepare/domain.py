"""Prepare stage: decode the study's image and write one input tensor per model to the artifacts bucket.

Inputs: the validated image's location and real format.
Outputs: per model, where its tensor is and how the image was letterboxed into it (so boxes can be
mapped back to original pixels). Tensors never travel in the workflow state: Step Functions caps
payloads at 256 KB and a 224x224 float32 tensor alone is 196 KB.
"""

from __future__ import annotations


import cv2
import numpy as np

from services.prepare.quality import quality_flags
from shared.contracts import QualityFlag
from shared.errors import InvalidImage
from shared.imageheader import check_pixel_limit
from shared.letterbox import fitted, letterbox
from shared.messages import Letterbox, OriginalImage, PreparedTensors, PrepareRequest, TensorRef
from shared.model_repository import ModelRepository, ModelSpec
from shared.npy import to_npy
from shared.pixels import decode_dicom, decode_raster
from shared.settings import DEFAULT_MAX_IMAGE_PIXELS
from shared.storage import ObjectStore

# torchxrayvision's convention: images scaled to [-1024, 1024].
XRV_RANGE = 1024.0


def normalise(square: np.ndarray, normalization: str) -> np.ndarray:
    if normalization == "xrv":
        return (square * 2.0 - 1.0) * XRV_RANGE
    return square


def model_tensor(
    pixels: np.ndarray, spec: ModelSpec, squares: dict[int, tuple[np.ndarray, Letterbox]] | None = None
) -> tuple[np.ndarray, Letterbox]:
    """The model's input tensor. `squares` holds the letterboxes already made for this image, by size: models
    of one input size share one resize (the same pixels whatever the normalisation that follows)."""
    if squares is None:
        squares = {}
    if spec.input_size not in squares:
        squares[spec.input_size] = letterbox(pixels, spec.input_size)
    square, box = squares[spec.input_size]
    return normalise(square, spec.normalization)[np.newaxis, np.newaxis].astype(np.float32), box


def is_constant(pixels: np.ndarray, repository: ModelRepository, squares: dict[int, tuple[np.ndarray, Letterbox]]) -> bool:
    """Does the image hold one flat value (max - min under 1e-6)? Judged first on the largest model input (made here,
    kept in `squares` for the tensors): a resize takes convex combinations of the pixels, so its spread is never
    more than the image's, and a spread well over the threshold there (1e-5) settles it without a pass over the
    whole picture (2.8 ms at 3000²). Anything closer to flat is judged on the full image, exactly as before."""
    h, w = pixels.shape
    size = max((spec.input_size for spec in repository.models.values()), default=0)
    if size and max(h, w) > size:
        if size not in squares:
            squares[size] = letterbox(pixels, size)
        new_w, new_h, pad_x, pad_y = fitted(h, w, size)
        low, high, _, _ = cv2.minMaxLoc(squares[size][0][pad_y : pad_y + new_h, pad_x : pad_x + new_w])
        if float(np.float32(high) - np.float32(low)) >= 1e-5:
            return False
    low, high, _, _ = cv2.minMaxLoc(pixels)  # one pass (numpy's min and max are two)
    return float(np.float32(high) - np.float32(low)) < 1e-6


def picture_flags(
    pixels: np.ndarray, levels: tuple[float, float, float, float], squares: dict[int, tuple[np.ndarray, Letterbox]]
) -> list[QualityFlag]:
    """The quality flags, read from the largest letterbox already made (the picture without its black bars), so they
    cost a 64² resize of a model input rather than a pass over the full picture (0.10 ms instead of 0.67 at 1024²)."""
    h, w = pixels.shape
    if not squares:
        return quality_flags(pixels, levels)
    size = max(squares)
    new_w, new_h, pad_x, pad_y = fitted(h, w, size)
    return quality_flags(squares[size][0][pad_y : pad_y + new_h, pad_x : pad_x + new_w], levels)


def exposure(squares: dict[int, tuple[np.ndarray, Letterbox]], h: int, w: int) -> float:
    """Mean intensity (0 black .. 1 white, after the intensity rule) of the picture inside the largest letterbox made:
    an input statistic watched for drift (docs/model-lifecycle.md), from pixels already resized, so next to free."""
    size = max(squares)
    new_w, new_h, pad_x, pad_y = fitted(h, w, size)
    return round(float(cv2.mean(squares[size][0][pad_y : pad_y + new_h, pad_x : pad_x + new_w])[0]), 4)


def prepare_tensors(
    request: PrepareRequest,
    store: ObjectStore,
    repository: ModelRepository,
    artifacts_bucket: str,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> PreparedTensors:
    study_id = request.study_id
    data = store.get_bytes(request.image.bucket, request.image.key)
    check_pixel_limit(data, request.image.format, max_image_pixels, study_id)  # before a single pixel is allocated
    decoded = decode_dicom(data, study_id) if request.image.format == "dicom" else decode_raster(data, study_id)
    pixels = decoded.pixels
    h, w = pixels.shape
    squares: dict[int, tuple[np.ndarray, Letterbox]] = {}
    if is_constant(pixels, repository, squares):
        raise InvalidImage("image decodes to a constant value: nothing to read", study_id=study_id)
    tensors: dict[str, TensorRef] = {}
    bytes_out = 0
    # One object per distinct (input size, normalisation): models that take the same input share it.
    written: dict[tuple[int, str], tuple[str, list[int], Letterbox]] = {}
    # Live models, then the shadow candidates that run on this study (docs/model-lifecycle.md), each under its tensor key.
    shadows = repository.shadows_for(study_id)
    for spec in [*repository.models.values(), *shadows]:
        shared_input = (spec.input_size, spec.normalization)
        if shared_input not in written:
            tensor, box = model_tensor(pixels, spec, squares)
            stored = store.put_bytes(artifacts_bucket, f"tensors/{study_id}/{spec.tensor_key}.npy", to_npy(tensor))
            bytes_out += stored.size
            written[shared_input] = (stored.key, list(tensor.shape), box)
        key, shape, box = written[shared_input]
        tensors[spec.tensor_key] = TensorRef(
            bucket=artifacts_bucket,
            key=key,
            shape=shape,
            letterbox=box,
            original_width=w,
            original_height=h,
        )
    return PreparedTensors(
        study_id=study_id,
        original=OriginalImage(
            width=w,
            height=h,
            bit_depth=decoded.bit_depth,
            photometric=decoded.photometric,
            intensity_rule=decoded.intensity_rule,
            quality_flags=picture_flags(pixels, decoded.declared_levels, squares),
            exposure=exposure(squares, h, w),
        ),
        tensors=tensors,
        shadow_candidates=len(shadows),
        bytes_in=len(data),
        bytes_out=bytes_out,
    )
