"""DICOM files in every transfer syntax a CR/DX archive uses, made here from a [0, 1] picture.

For the tests that prove every container decodes to the same picture (and the demo's folder of DICOM
files). pydicom writes the syntaxes it has encoders for (RLE, JPEG-LS, JPEG 2000, deflate, implicit VR);
dcmtk writes the rest: `dcmcjpeg` the JPEG processes (Baseline, Extended, Lossless), `dcmconv` Big
Endian (pydicom 3 refuses to convert a dataset's endianness). Nothing is downloaded.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Syntax:
    name: str
    uid: str
    bits: int  # the stored depth the file gets: 8 for JPEG Baseline, 12 otherwise
    lossy: bool
    tool: str  # "pydicom", "dcmcjpeg" or "dcmconv"
    options: tuple[str, ...] = ()


SYNTAXES: dict[str, Syntax] = {
    s.name: s
    for s in (
        Syntax("explicit-le", "1.2.840.10008.1.2.1", 12, False, "pydicom"),
        Syntax("implicit-le", "1.2.840.10008.1.2", 12, False, "pydicom"),
        Syntax("explicit-be", "1.2.840.10008.1.2.2", 12, False, "dcmconv", ("+tb",)),
        Syntax("deflated-le", "1.2.840.10008.1.2.1.99", 12, False, "pydicom"),
        Syntax("rle", "1.2.840.10008.1.2.5", 12, False, "pydicom"),
        Syntax("jpeg-baseline", "1.2.840.10008.1.2.4.50", 8, True, "dcmcjpeg", ("+eb", "+q", "95", "+sr")),
        Syntax("jpeg-extended", "1.2.840.10008.1.2.4.51", 12, True, "dcmcjpeg", ("+ee", "+q", "95", "+sr")),
        Syntax("jpeg-lossless", "1.2.840.10008.1.2.4.57", 12, False, "dcmcjpeg", ("+el",)),
        Syntax("jpeg-lossless-sv1", "1.2.840.10008.1.2.4.70", 12, False, "dcmcjpeg", ("+e1",)),
        Syntax("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80", 12, False, "pydicom"),
        Syntax("jpeg-ls-near-lossless", "1.2.840.10008.1.2.4.81", 12, True, "pydicom"),
        Syntax("jpeg2000-lossless", "1.2.840.10008.1.2.4.90", 12, False, "pydicom"),
        Syntax("jpeg2000", "1.2.840.10008.1.2.4.91", 12, True, "pydicom"),
    )
}

# dcmcjpeg's lossy modes rescale by default to the pixel values actually used (+sp: the minimum becomes 0
# while the header keeps an identity rescale), which shifts a MONOCHROME1 picture; +sr keeps the stored range.
# Lossy settings near what archives use: JPEG-LS allowing an error of 2 of 4095, JPEG 2000 at 10:1.
NEAR_LOSSLESS_ERROR = 2
JPEG2000_RATIO = 10


def stored_values(image: np.ndarray, bits: int, photometric: str = "MONOCHROME2", signed: bool = False) -> np.ndarray:
    """[0, 1] (1 = white) -> the integers a detector of `bits` stores; MONOCHROME1 stores white as low."""
    peak = 2**bits - 1
    values = np.rint(np.clip(image, 0.0, 1.0) * peak)
    if photometric == "MONOCHROME1":
        values = peak - values
    if signed:
        values -= 2 ** (bits - 1)
    return values.astype(np.int32)


def dicom_dataset(values: np.ndarray, photometric: str = "MONOCHROME2", *, bits_stored: int = 12, signed: bool = False, **tags):
    """A Digital X-Ray (For Presentation) dataset, Explicit VR Little Endian, CHEST PA; `tags` set more attributes."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("study.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = values.shape[:2]
    ds.SamplesPerPixel = 1 if values.ndim == 2 else values.shape[2]
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    allocated = 8 if bits_stored <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits_stored, bits_stored - 1, int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (8, True): np.int8, (16, True): np.int16}[(allocated, signed)]
    ds.PixelData = values.astype(dtype).tobytes()
    return ds


def dataset_bytes(ds, implicit_vr: bool = False) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit_vr)
    return buffer.getvalue()


def require_dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} (Debian package dcmtk) is not installed; `make test` installs it")
    return path


def dcmtk(tool: str, options: tuple[str, ...], data: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        source.write_bytes(data)
        run = subprocess.run([require_dcmtk(tool), *options, str(source), str(target)], capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(options)} failed: {run.stderr.strip() or run.stdout.strip()}")
        return target.read_bytes()


def encode(ds, syntax: Syntax) -> bytes:
    """The dataset written in `syntax` (the dataset is changed in place for pydicom's encoders)."""
    from pydicom.uid import UID

    if syntax.tool != "pydicom":
        return dcmtk(syntax.tool, syntax.options, dataset_bytes(ds))
    uid = UID(syntax.uid)
    if syntax.name == "explicit-le":
        return dataset_bytes(ds)
    if not uid.is_compressed:  # implicit VR, deflate: a different encoding of the same elements
        ds.file_meta.TransferSyntaxUID = uid
        return dataset_bytes(ds, implicit_vr=uid.is_implicit_VR)
    encoder_options: dict[str, dict[str, Any]] = {
        "jpeg-ls-near-lossless": {"jls_error": NEAR_LOSSLESS_ERROR},
        "jpeg2000": {"j2k_cr": [JPEG2000_RATIO]},
    }
    options = encoder_options.get(syntax.name, {})
    ds.compress(uid, **options)
    return dataset_bytes(ds)


def dicom_in_syntax(image: np.ndarray, syntax: str, photometric: str = "MONOCHROME2", **tags) -> bytes:
    """The [0, 1] picture as a DICOM file of `syntax`'s depth, photometric interpretation and transfer syntax."""
    chosen = SYNTAXES[syntax]
    values = stored_values(image, chosen.bits, photometric)
    return encode(dicom_dataset(values, photometric, bits_stored=chosen.bits, **tags), chosen)


def write_transfer_syntax_studies(
    out: Path, image: np.ndarray, photometrics: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
) -> list[Path]:
    """One study folder per transfer syntax and photometric interpretation, each holding one DICOM file."""
    folders = []
    for name in SYNTAXES:
        for photometric in photometrics:
            folder = out / f"dcm-{name}-{photometric.lower()}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "study.dcm").write_bytes(dicom_in_syntax(image, name, photometric))
            folders.append(folder)
    return folders
