"""Container invariance: one picture, every container it may arrive in, the same findings.

One phantom is written as 8-bit PNG, 16-bit PNG holding 10-, 12-, 14- and 16-bit data with and
without sBIT, JPEG q95, and DICOM MONOCHROME1 and MONOCHROME2 in every transfer syntax a CR/DX
archive uses. Each goes through the prepare stage and the three reference models in-process (ONNX
Runtime over the model repository), and the classifier's probabilities are compared with the 8-bit
PNG's: within 0.02 for every lossless container, 0.05 for the lossy ones. `pytest -s` prints the table.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from synthetic.images import with_sbit
from synthetic.phantoms import generate_phantom, to_uint8
from synthetic.transfer_syntaxes import SYNTAXES, dataset_bytes, dicom_dataset, dicom_in_syntax, stored_values
from services.prepare.domain import PrepareRequest, prepare_tensors
from services.triton.domain import Inference, InferenceRequest
from services.triton.onnx_backend import OnnxRuntimeBackend
from shared.messages import StudyImage
from shared.model_repository import ModelRepository
from shared.npy import from_npy
from shared.settings import DEFAULT_MODEL_REPOSITORY
from shared.storage import LocalObjectStore

LOSSLESS_TOLERANCE = 0.02
LOSSY_TOLERANCE = 0.05
SIZE = 512


def containers(picture: np.ndarray) -> list[tuple[str, str, bytes, bool]]:
    """(name, format, bytes, lossy) for each way the picture can arrive."""
    out = [("png 8-bit", "png", cv2.imencode(".png", to_uint8(picture))[1].tobytes(), False)]
    for bits in (10, 12, 14, 16):
        png = cv2.imencode(".png", stored_values(picture, bits).astype(np.uint16))[1].tobytes()
        out.append((f"png 16-bit, {bits}-bit data, no sBIT", "png", png, False))
        out.append((f"png 16-bit, {bits}-bit data, sBIT {bits}", "png", with_sbit(png, bits), False))
    out.append(("jpeg q95", "jpeg", cv2.imencode(".jpg", to_uint8(picture), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), True))
    for name, syntax in SYNTAXES.items():
        for photometric in ("MONOCHROME2", "MONOCHROME1"):
            out.append((f"dicom {name} {photometric}", "dicom", dicom_in_syntax(picture, name, photometric), syntax.lossy))
    return out


def wide_dicom(picture: np.ndarray, rgb: bool = False, signed: bool = False) -> bytes:
    """The picture in 32-bit samples (BitsAllocated = BitsStored = 32), grey or RGB, unsigned or signed."""
    values = np.rint(np.clip(picture, 0, 1).astype(np.float64) * (2**32 - 1)).astype(np.int64) - (2**31 if signed else 0)
    ds = dicom_dataset(np.zeros(picture.shape, np.uint8), "RGB" if rgb else "MONOCHROME2", bits_stored=8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, int(signed)
    if rgb:
        values = np.repeat(values[..., None], 3, axis=2)
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = values.astype("<i4" if signed else "<u4").tobytes()
    return dataset_bytes(ds)


def run_study(store, repository, inference, study_id: str, fmt: str, data: bytes) -> dict:
    """One container through prepare and the three models: its intensity rule, tensors, probabilities, boxes, impression."""
    key = f"incoming/{study_id}/image.{fmt}"
    store.put_bytes("images", key, data)
    request = PrepareRequest(
        study_id=study_id, image=StudyImage(bucket="images", key=key, format=fmt, sha256="0" * 64, size_bytes=len(data))
    )
    prepared = prepare_tensors(request, store, repository, "artifacts")
    outputs = {
        spec.kind: inference.run(InferenceRequest(model=model, study_id=study_id, tensor=prepared.tensors[model]))
        for model, spec in repository.models.items()
    }
    tensors = {model: from_npy(store.get_bytes(ref.bucket, ref.key)) for model, ref in prepared.tensors.items()}
    return {
        "rule": prepared.original.intensity_rule,
        "p": np.array([f.probability for f in outputs["classifier"].findings]),
        "labels": [f.label for f in outputs["classifier"].findings],
        "tensors": tensors,
        "boxes": len(outputs["detector"].detections or []),
        "impression": outputs["encoder"].candidates[0].text,
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    store = LocalObjectStore(tmp_path_factory.mktemp("invariance"))
    repository = ModelRepository(DEFAULT_MODEL_REPOSITORY)
    return store, repository, Inference(OnnxRuntimeBackend(repository), repository, store)


@pytest.fixture(scope="module")
def matrix(pipeline):
    # Edema and Cardiomegaly present: the 12-bit-in-16-bit PNG without sBIT once turned Edema 0.97 into 0.0085.
    picture = generate_phantom(np.random.default_rng(2026), size=SIZE, findings=("Edema", "Cardiomegaly"), lesions=1).image
    rows = []
    for i, (name, fmt, data, lossy) in enumerate(containers(picture)):
        rows.append({"name": name, "lossy": lossy, **run_study(*pipeline, f"c{i:02d}", fmt, data)})
    return rows


def test_every_container_gives_the_8_bit_png_findings(matrix):
    reference = matrix[0]
    assert reference["name"] == "png 8-bit"
    print("\nreference (png 8-bit): " + ", ".join(f"{label} {p:.3f}" for label, p in zip(reference["labels"], reference["p"])))
    print(f"{'container':48s} {'intensity rule':30s} {'max |dp|':>9s} {'limit':>6s}  boxes")
    failures = []
    for row in matrix:
        delta = float(np.abs(row["p"] - reference["p"]).max())
        limit = LOSSY_TOLERANCE if row["lossy"] else LOSSLESS_TOLERANCE
        print(f"{row['name']:48s} {row['rule']:30s} {delta:9.4f} {limit:6.2f}  {row['boxes']}")
        if delta > limit:
            failures.append(f"{row['name']}: max |dp| {delta:.4f} > {limit}")
    assert not failures, failures
    assert len(matrix) == 1 + 8 + 1 + 2 * len(SYNTAXES)


def test_the_picture_is_not_trivial_for_the_classifier(matrix):
    """The comparison means something only if the reference has findings on both sides of 0.5."""
    p = matrix[0]["p"]
    assert p.max() > 0.7 and p.min() < 0.3, p


def dim_containers(values: np.ndarray) -> list[tuple[str, str, bytes]]:
    """The same stored 12-bit values (brightest below 2048) in every container that can hold them."""
    png = cv2.imencode(".png", values.astype(np.uint16))[1].tobytes()
    low, high = np.percentile(values, (0.5, 99.5))
    return [
        ("png 16-bit, no sBIT", "png", png),
        ("png 16-bit, sBIT 12", "png", with_sbit(png, 12)),
        ("dicom BitsStored 12", "dicom", dataset_bytes(dicom_dataset(values, bits_stored=12))),
        ("dicom BitsStored 16", "dicom", dataset_bytes(dicom_dataset(values, bits_stored=16))),
        ("dicom BitsStored 12, MONOCHROME1", "dicom", dataset_bytes(dicom_dataset(4095 - values, "MONOCHROME1", bits_stored=12))),
        ("dicom BitsStored 12, JPEG-LS", "dicom", dicom_in_syntax(values / 4095.0, "jpeg-ls-lossless")),
        # A declared window is the modality's statement and wins; one that says what the percentiles say gives their picture.
        (
            "dicom BitsStored 12, window",
            "dicom",
            dataset_bytes(
                dicom_dataset(values, bits_stored=12, WindowCenter=float(low + high) / 2 + 0.5, WindowWidth=float(high - low) + 1)
            ),
        ),
    ]


@pytest.mark.parametrize("seed", [7, 2027])
def test_the_same_stored_values_are_the_same_picture_in_every_container(pipeline, seed):
    """Issue 20, observation 4: 12-bit data whose brightest pixel is below 2048 was read as 11-bit from a 16-bit PNG
    without sBIT and as 12-bit from a DICOM declaring BitsStored 12; the findings differed by 0.19-0.88."""
    picture = generate_phantom(np.random.default_rng(seed), size=SIZE, findings=("Edema", "Cardiomegaly"), lesions=1).image
    values = stored_values(picture * 0.45 + 0.02, 12)
    assert values.max() < 2048
    rows = [(name, run_study(*pipeline, f"dim{seed}-{i}", fmt, data)) for i, (name, fmt, data) in enumerate(dim_containers(values))]
    reference_name, reference = rows[0]
    failures = []
    print(f"\n{'container':36s} {'intensity rule':36s} {'max |dtensor|':>13s} {'max |dp|':>9s}")
    for name, row in rows:
        dtensor = max(
            float(np.abs(row["tensors"][m] - reference["tensors"][m]).max() / (2048.0 if row["tensors"][m].min() < 0 else 1.0))
            for m in row["tensors"]
        )
        dp = float(np.abs(row["p"] - reference["p"]).max())
        print(f"{name:36s} {row['rule']:36s} {dtensor:13.5f} {dp:9.4f}")
        if dtensor > 0.002 or dp > LOSSLESS_TOLERANCE:
            failures.append(f"{name}: tensors differ by {dtensor:.4f}, findings by {dp:.4f} from {reference_name}")
    assert not failures, failures


def test_32_bit_samples_give_the_8_bit_findings(pipeline):
    """Issue 20, observation 3: in 32-bit RGB, white (0xFFFFFFFF) went through float32 to 2^32 and wrapped to black,
    moving the findings by 0.25. A phantom with saturated (white) bone, in 32-bit samples of every kind."""
    picture = np.clip(generate_phantom(np.random.default_rng(33), size=SIZE, findings=("Edema", "Cardiomegaly")).image * 1.25, 0, 1)
    assert (picture == 1.0).mean() > 0.05, "enough white to matter"
    reference = run_study(*pipeline, "w-png8", "png", cv2.imencode(".png", to_uint8(picture))[1].tobytes())
    failures = []
    for name, data in (
        ("32-bit RGB", wide_dicom(picture, rgb=True)),
        ("32-bit signed RGB", wide_dicom(picture, rgb=True, signed=True)),
        ("32-bit grey", wide_dicom(picture)),
        ("32-bit signed grey", wide_dicom(picture, signed=True)),
    ):
        row = run_study(*pipeline, f"w-{name.replace(' ', '-')}", "dicom", data)
        delta = float(np.abs(row["p"] - reference["p"]).max())
        print(f"{name:20s} {row['rule']:32s} max |dp| {delta:.4f}")
        if delta > LOSSLESS_TOLERANCE:
            failures.append(f"{name}: max |dp| {delta:.4f}")
    assert not failures, failures
