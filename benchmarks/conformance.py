"""The conformance corpus: DICOM files no one on this project wrote, in every container dcmtk and GDCM write,
each run through `radstream run` and through the gateway, with the table of what came out.

    .venv/bin/python -m benchmarks.conformance                 # every source in every container (the full table)
    .venv/bin/python -m benchmarks.conformance --transcode classes   # what the suite runs: see below
    .venv/bin/python -m benchmarks.conformance --json          # the rows as JSON

Sources: every single-frame image among pydicom's bundled test files that are present in the installed wheel
(`pydicom.data`'s test_files folder; the files pydicom fetches from the network on demand are never fetched), and
the project's phantoms (synthetic/phantoms.py, 12-bit MONOCHROME1 and MONOCHROME2). Each source is re-tagged as a
chest CR, DX or Secondary Capture (SOP class, Modality, BodyPartExamined CHEST, new Study/Series/SOP Instance UIDs)
with its pixel data and pixel-module attributes untouched: that file is the group's "original". Each source is
then transcoded by dcmtk (dcmconv, dcmcjpeg, dcmcjpls, dcmcrle) and GDCM (gdcmconv) into every transfer syntax
they write, from its uncompressed Explicit VR Little Endian form. A transcoder that refuses an input is recorded as
"not produced by <tool>: <reason>"; a transcoder that is missing is an error (the corpus cannot be built).

`--transcode classes` (what tests/e2e/test_conformance_corpus.py runs, to stay within minutes on two cores) still runs
every original, but transcodes one source per pixel-module class (photometric interpretation, samples, bits
allocated and stored, pixel representation): pydicom's 30 16x16 CT/MR/CR images of dicomdirtests/ are three
classes. `--transcode all` transcodes every source.

Every file goes through `radstream run` (one invocation, a folder of study folders) and through the gateway
(started here on a free loopback port, one pynetdicom association as the modality). The checks, per row:
- decoded: the pipeline's result, or its failure record; a refusal passes only where the reference decoders
  (pydicom, then GDCM) cannot read the pixel data either, and it must be a failure record, never a crash;
- max |dp|: over the five findings, against the group's reference (the original, or its first lossless container
  with a result): within 0.02 for a lossless container, 0.10 for a lossy one (a lossy transcode that re-quantised
  the samples to fewer bits, or a picture under 128 pixels a side, is measured and printed but not held: LOSSY_MIN_SIDE);
- dciodvfy: errors dicom3tools' validator reports on the SR and the overlay the export wrote (0 passes);
- fhir: the bundle validates with fhir.resources (R4B), and every urn:uuid it uses is a UUID (FHIR's uuid type).
Exit code 0 when every row passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural_Effusion")
LOSSLESS_TOLERANCE, LOSSY_TOLERANCE = 0.02, 0.10
# A lossy file is held to LOSSY_TOLERANCE when it is the same picture with coding noise. Not held (its max |dp| is still
# measured and printed): a transcode that re-quantised the samples to fewer bits (dcmcjpeg's 8-bit baseline of 14-bit
# CT: another picture, whose values the encoder chose), and pictures under LOSSY_MIN_SIDE pixels a side, where 8x8 JPEG
# blocks and JPEG 2000 code blocks at 10:1 are the picture (pydicom's 10 x 10 RT dose, 60 x 80 ultrasound).
LOSSY_MIN_SIDE = 128
PSEUDONYM_KEY = "conformance-corpus-pseudonym-key-0123456789"
CONTROL = (KeyboardInterrupt, SystemExit, GeneratorExit)  # never taken for a decoder's failure


@dataclass(frozen=True)
class Container:
    name: str
    tool: str
    args: tuple[str, ...]
    uid: str  # the transfer syntax the file must come out in
    lossy: bool


# dcmcjpeg +sr keeps the stored range in its lossy modes (its default +sp rescales to the values used while keeping an
# identity rescale in the header: another picture); the lossy settings are near what archives use.
CONTAINERS: tuple[Container, ...] = (
    Container("dcmtk-explicit-le", "dcmconv", ("+te",), "1.2.840.10008.1.2.1", False),
    Container("dcmtk-implicit-le", "dcmconv", ("+ti",), "1.2.840.10008.1.2", False),
    Container("dcmtk-explicit-be", "dcmconv", ("+tb",), "1.2.840.10008.1.2.2", False),
    Container("dcmtk-deflated-le", "dcmconv", ("+td",), "1.2.840.10008.1.2.1.99", False),
    Container("dcmtk-rle", "dcmcrle", (), "1.2.840.10008.1.2.5", False),
    Container("dcmtk-jpeg-baseline", "dcmcjpeg", ("+eb", "+q", "90", "+sr"), "1.2.840.10008.1.2.4.50", True),
    Container("dcmtk-jpeg-extended", "dcmcjpeg", ("+ee", "+q", "90", "+sr"), "1.2.840.10008.1.2.4.51", True),
    Container("dcmtk-jpeg-lossless", "dcmcjpeg", ("+el",), "1.2.840.10008.1.2.4.57", False),
    Container("dcmtk-jpeg-lossless-sv1", "dcmcjpeg", ("+e1",), "1.2.840.10008.1.2.4.70", False),
    Container("dcmtk-jpeg-ls-lossless", "dcmcjpls", ("+el",), "1.2.840.10008.1.2.4.80", False),
    Container("dcmtk-jpeg-ls-near-lossless", "dcmcjpls", ("+en", "+md", "2"), "1.2.840.10008.1.2.4.81", True),
    Container("gdcm-explicit-le", "gdcmconv", ("--raw", "--explicit"), "1.2.840.10008.1.2.1", False),
    Container("gdcm-implicit-le", "gdcmconv", ("--raw", "--implicit"), "1.2.840.10008.1.2", False),
    Container("gdcm-deflated-le", "gdcmconv", ("--deflated",), "1.2.840.10008.1.2.1.99", False),
    Container("gdcm-rle", "gdcmconv", ("--rle",), "1.2.840.10008.1.2.5", False),
    Container("gdcm-jpeg-lossless-sv1", "gdcmconv", ("--jpeg",), "1.2.840.10008.1.2.4.70", False),
    Container("gdcm-jpeg-lossy", "gdcmconv", ("--jpeg", "--lossy", "-q", "90"), "", True),  # Baseline for 8 bits, Extended for 12
    Container("gdcm-jpeg-ls-lossless", "gdcmconv", ("--jpegls",), "1.2.840.10008.1.2.4.80", False),
    Container("gdcm-jpeg-ls-near-lossless", "gdcmconv", ("--jpegls", "--lossy", "-e", "2"), "1.2.840.10008.1.2.4.81", True),
    Container("gdcm-jpeg2000-lossless", "gdcmconv", ("--j2k",), "1.2.840.10008.1.2.4.90", False),
    Container("gdcm-jpeg2000-lossy", "gdcmconv", ("--j2k", "--lossy", "-r", "10"), "1.2.840.10008.1.2.4.91", True),
)
TOOL_PACKAGES = {
    "dcmconv": "dcmtk",
    "dcmcrle": "dcmtk",
    "dcmcjpeg": "dcmtk",
    "dcmcjpls": "dcmtk",
    "gdcmconv": "libgdcm-tools",
    "dciodvfy": "dicom3tools",
}


class ToolMissing(RuntimeError):
    """A transcoder or validator the corpus needs is not installed: the corpus cannot be built (`make dcmtk`)."""


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} (Debian package {TOOL_PACKAGES.get(name, name)}) is not installed: `make dcmtk` installs it")
    return path


@dataclass
class Source:
    group: str  # the group's name: pydicom/<file> or phantom/<kind>
    data: bytes  # the re-tagged original, pixel data as the source holds it
    pixel_class: str
    reference: str  # "pydicom" / "gdcm": the reference decoder that reads it; "" when none does
    reference_error: str = ""
    picture: str = ""  # picture_digest: sources that hold one picture are compared with each other


@dataclass
class Member:
    """One file of the corpus: a group's picture in one container."""

    group: str
    container: str  # "original" or a Container's name
    lossy: bool
    transfer_syntax: str = ""
    path: str = ""  # "" when not produced
    note: str = ""  # "not produced by <tool>: <reason>"
    reference: str = ""  # the reference decoder that reads its pixel data: pydicom, else gdcm; "" for none
    expect_refusal: str = ""  # why a refusal is allowed (a documented limit, or the reference decoders cannot read it either)
    refusal_names: str = ""  # the attribute an allowed refusal's message must name, for a documented limit
    picture: str = ""  # the picture it holds: rows with one picture are compared (max |dp|)
    not_held: str = ""  # why a lossy file's max |dp| is shown but not held to LOSSY_TOLERANCE


@dataclass
class Outcome:
    status: str  # succeeded | failed | missing
    message: str = ""
    error_type: str = ""
    stage: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    sr_errors: int | None = None
    overlay_errors: int | None = None
    dciodvfy_first_error: str = ""
    fhir: str = ""  # "valid", or the validation error's first line; "" when there is no bundle
    folder: str = ""  # the study's results folder
    unanswered: str = ""  # the gateway left a C-STORE unanswered (the file was sent again on a new association)
    code_path: str = ""  # an unexpected error's code path, from the stage's log line (code locations only, no values)


# ---------------------------------------------------------------- sources


def pydicom_test_files() -> list[Path]:
    """pydicom's bundled test files present locally (never `get_testdata_files()`, which downloads the rest)."""
    import pydicom.data

    root = Path(pydicom.data.DATA_ROOT) / "test_files"
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc", ".json", ".txt", ".gz", ".bz2", ".xz", ".zip")
    )


def _frames(ds: Any) -> int:
    try:
        return int(str(ds.get("NumberOfFrames", 1) or 1))
    except ValueError:
        return -1  # not an integer: told apart by the caller


def pixel_class(ds: Any) -> str:
    return "/".join(
        str(ds.get(k, "-")) for k in ("PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")
    )


# What, beside the stored values, decides the picture the models see (docs/models.md, "Intensity").
PICTURE_ATTRIBUTES = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PresentationLUTShape",
)


def picture_digest(ds: Any) -> str:
    """Files with the same decoded values and the same intensity attributes hold one picture, whatever their container."""
    values = np.ascontiguousarray(ds.pixel_array)
    values = values.astype(values.dtype.newbyteorder("<"))
    digest = hashlib.sha1(values.tobytes())
    # pydicom's pixel_array is RGB for every YBR form: the colour space the file stores does not change the picture.
    attributes = ["RGB" if str(ds.get(k, "")).startswith("YBR") else str(ds.get(k, "")) for k in PICTURE_ATTRIBUTES]
    digest.update(repr((values.shape, values.dtype.kind, "VOILUTSequence" in ds, attributes)).encode())
    return digest.hexdigest()[:16]


def reference_decode(data: bytes) -> tuple[str, str, str]:
    """("pydicom" or "gdcm", "", the picture's digest) when a reference decoder reads the pixel data, else ("", pydicom's error, "").

    pydicom with the pixel plugins the pipeline uses (python-gdcm is there for one fallback, not as a plugin), then
    GDCM's own gdcmconv as the independent second reference."""
    import pydicom

    from shared.pixels import use_pixel_plugins

    use_pixel_plugins()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "pydicom", "", picture_digest(pydicom.dcmread(io.BytesIO(data)))
    except CONTROL:
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        source.write_bytes(data)
        run = subprocess.run([tool("gdcmconv"), "--raw", str(source), str(target)], capture_output=True, text=True, timeout=60)
        if run.returncode == 0 and target.exists():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return "gdcm", "", picture_digest(pydicom.dcmread(target))
            except CONTROL:
                raise
            except BaseException:
                pass
    return "", error, ""


# The README's documented limits ("A study folder holds ... one DICOM file (CR or DX, BodyPartExamined CHEST, one frame,
# MONOCHROME1/2, RGB or YBR)"): a refusal for one of these is allowed, and must name the attribute.
DOCUMENTED_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")


def constant_picture(data: bytes) -> bool:
    import pydicom

    try:
        array = pydicom.dcmread(io.BytesIO(data)).pixel_array
    except Exception:
        return False
    return bool(array.size) and bool(array.min() == array.max())


def documented_limit(ds: Any) -> tuple[str, str]:
    """(attribute, why) when the README documents that this file is refused; ("", "") otherwise."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in DOCUMENTED_PHOTOMETRICS:
        return "PhotometricInterpretation", f"PhotometricInterpretation {photometric} is outside the documented MONOCHROME1/2, RGB or YBR"
    return "", ""


def choose_sop_class(ds: Any, index: int) -> tuple[str, str]:
    """(SOP class, Modality): colour, palette and 1-bit pictures only fit Secondary Capture; grey ones take turns as CR, DX and SC."""
    grey = str(ds.get("PhotometricInterpretation", "")) in ("MONOCHROME1", "MONOCHROME2") and int(ds.get("BitsAllocated", 0) or 0) in (
        8,
        16,
    )
    if not grey:
        return SECONDARY_CAPTURE, ("CR", "DX")[index % 2]
    return [(CR_IMAGE_STORAGE, "CR"), (DX_FOR_PRESENTATION, "DX"), (SECONDARY_CAPTURE, ("DX", "CR")[index // 3 % 2])][index % 3]


def retag(ds: Any, sop_class: str, modality: str) -> bytes:
    """The dataset as a chest CR/DX/SC with new Study, Series and SOP Instance UIDs, in its own transfer syntax; pixels untouched."""
    from pydicom.uid import generate_uid

    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for _ in ds.iterall():  # resolves every element's VR (a file whose body is implicit VR under an explicit syntax is written explicit)
        pass
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pydicom_sources() -> tuple[list[Source], list[tuple[str, str]]]:
    """Every single-frame image among the local test files, re-tagged; and (file, why not a source) for the rest that hold pixel data."""
    import pydicom
    import pydicom.data

    root = Path(pydicom.data.DATA_ROOT) / "test_files"
    sources, left_out = [], []
    for path in pydicom_test_files():
        name = str(path.relative_to(root))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
        except Exception:
            continue
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                left_out.append((name, "float pixel data (not a CR/DX/SC picture)"))
            continue
        if not all(k in ds for k in ("Rows", "Columns", "BitsAllocated")) or "TransferSyntaxUID" not in ds.file_meta:
            left_out.append((name, "not an image: pixel module or transfer syntax missing"))
            continue
        frames = _frames(ds)
        if frames != 1:
            left_out.append((name, "multi-frame" if frames > 1 else "NumberOfFrames is not an integer"))
            continue
        sop_class, modality = choose_sop_class(ds, len(sources))
        klass = pixel_class(ds)
        data = retag(ds, sop_class, modality)
        decoder, error, picture = reference_decode(data)
        sources.append(Source(f"pydicom/{name}", data, klass, decoder, error, picture))
    return sources, left_out


def phantom_sources(size: int = 256) -> list[Source]:
    from pydicom.uid import generate_uid

    from synthetic.phantoms import generate_phantom
    from synthetic.transfer_syntaxes import dataset_bytes, dicom_dataset, stored_values

    image = generate_phantom(np.random.default_rng(20), size=size).image
    sources = []
    for photometric, sop_class, modality in (("MONOCHROME1", CR_IMAGE_STORAGE, "CR"), ("MONOCHROME2", DX_FOR_PRESENTATION, "DX")):
        ds = dicom_dataset(
            stored_values(image, 12, photometric),
            photometric,
            bits_stored=12,
            SOPClassUID=sop_class,
            Modality=modality,
            StudyInstanceUID=generate_uid(),
            SeriesInstanceUID=generate_uid(),
        )
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        data = dataset_bytes(ds)
        sources.append(Source(f"phantom/{photometric.lower()}-12bit", data, pixel_class(ds), *reference_decode(data)))
    return sources


# ---------------------------------------------------------------- containers


def native(data: bytes) -> bytes:
    """The file uncompressed, Explicit VR Little Endian (the transcoders' common input): pydicom (else GDCM) decodes
    compressed pixel data (YBR to RGB), dcmtk's dcmconv rewrites Big Endian, implicit and deflated encodings."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_compressed and not syntax.is_deflated:
            try:
                ds.decompress(generate_instance_uid=False)
            except CONTROL:
                raise
            except BaseException:
                return run_tool("gdcmconv", ("--raw", "--explicit"), data)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            return buffer.getvalue()
    if syntax == "1.2.840.10008.1.2.1":
        return data
    return run_tool("dcmconv", ("+te",), data)


def run_tool(name: str, args: tuple[str, ...], data: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        source.write_bytes(data)
        command = (
            [tool(name), *args, str(source), str(target)]
            if name != "gdcmconv"
            else [tool(name), *args, "-i", str(source), "-o", str(target)]
        )
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if run.returncode != 0 or not target.exists():
            said = (run.stderr + "\n" + run.stdout).replace(str(source), "the input").replace(str(target), "the output")
            lines = [line.strip() for line in said.splitlines() if line.strip() and "very experimental" not in line]
            raise NotProduced(f"not produced by {name}: {lines[-1][:160] if lines else f'exit code {run.returncode}'}")
        return target.read_bytes()


class NotProduced(Exception):
    """A transcoder refused an input (exit code, or a file in another transfer syntax): recorded, not a failure."""


def new_instance(data: bytes) -> bytes:
    """The same file with a new SOP Instance UID (each container is its own instance), nothing else changed."""
    import pydicom
    from pydicom.uid import generate_uid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def transcode(container: Container, base: bytes) -> tuple[bytes, str]:
    """(the file, its transfer syntax); NotProduced when the tool refuses the input or writes another syntax."""
    import pydicom

    out = run_tool(container.tool, container.args, new_instance(base))
    syntax = str(pydicom.dcmread(io.BytesIO(out), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if container.uid and syntax != container.uid:
        raise NotProduced(f"not produced by {container.tool}: it wrote transfer syntax {syntax} instead of {container.uid}")
    return out, syntax


def build_corpus(
    out: Path, transcode_all: bool = False, containers: tuple[Container, ...] = CONTAINERS
) -> tuple[list[Member], list[tuple[str, str]]]:
    """Write every member under out/<study folder>/study.dcm; (members, left-out files with their reason)."""
    import pydicom

    for name in {c.tool for c in containers} | {"dcmconv", "gdcmconv"}:
        tool(name)
    sources, left_out = pydicom_sources()
    sources += phantom_sources()
    # Each source's uncompressed form (the transcoders' input); a class is what the transcoders receive (YBR is RGB by then).
    bases: dict[str, bytes] = {}
    for source in sources:
        if source.reference:  # a picture no reference decoder reads cannot be transcoded
            try:
                bases[source.group] = native(source.data)
            except NotProduced as e:
                left_out.append((source.group, f"no uncompressed form to transcode from: {e}"))
    seen_classes: set[str] = set()
    jobs: list[tuple[Source, Container | None]] = []
    for source in sources:
        jobs.append((source, None))
        if source.group not in bases:
            continue
        klass = pixel_class(pydicom.dcmread(io.BytesIO(bases[source.group]), stop_before_pixels=True))
        if transcode_all or source.group.startswith("phantom/") or klass not in seen_classes:
            seen_classes.add(klass)
            jobs += [(source, c) for c in containers]

    def make(job: tuple[Source, Container | None]) -> Member:
        source, container = job
        folder_name = hashlib.sha1(f"{source.group}|{container.name if container else 'original'}".encode()).hexdigest()[:12]
        member = Member(source.group, container.name if container else "original", bool(container and container.lossy))
        try:
            if container is None:
                data = source.data
                member.transfer_syntax = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)
            else:
                data, member.transfer_syntax = transcode(container, bases[source.group])
        except NotProduced as e:
            member.note = str(e)
            return member
        member.reference, error, picture = (
            (source.reference, source.reference_error, source.picture) if container is None else reference_decode(data)
        )
        member.picture = source.picture or source.group
        if container is not None and not container.lossy and picture and picture != source.picture:
            # A lossless transcoder wrote other values than the source's, as the reference decoder reads them (dcmconv and
            # pydicom order 32-bit samples in Big Endian OW differently): the file is compared with files of its own values.
            member.picture, member.note = picture, f"{container.tool} changed the values (as {member.reference} reads them)"
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        if container is not None and container.lossy:
            source_bits = int(pydicom.dcmread(io.BytesIO(bases[source.group]), stop_before_pixels=True).get("BitsStored") or 0)
            bits = int(header.get("BitsStored") or 0)
            if bits < source_bits:
                member.not_held = f"re-quantised from {source_bits} to {bits} bits by {container.tool}: another picture"
            elif min(int(header.Rows), int(header.Columns)) < LOSSY_MIN_SIDE:
                member.not_held = f"{header.Rows} x {header.Columns} pixels: lossy coding blocks are the picture"
        attribute, why = documented_limit(header)
        if member.reference and constant_picture(data):
            # The transcoder wrote one value everywhere (dcmcjpeg's 8-bit baseline of 32-bit dose): a refusal naming it is right.
            member.expect_refusal, member.refusal_names = "the reference decoder reads a constant picture", "constant value"
        elif attribute:
            member.expect_refusal, member.refusal_names = f"a documented limit: {why}", attribute
        elif not member.reference:
            member.expect_refusal = f"no reference decoder (pydicom, GDCM) reads its pixel data ({error})"
        folder = out / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "study.dcm").write_bytes(data)
        member.path = str(folder / "study.dcm")
        return member

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        members = list(pool.map(make, jobs))
    return members, left_out


# ---------------------------------------------------------------- running


def _outcome_from_result(results: Path, study_id: str, status: str, message: str = "", error_type: str = "", stage: str = "") -> Outcome:
    outcome = Outcome(status=status, message=message or "", error_type=error_type or "", stage=stage or "")
    folder = results / "results" / study_id
    outcome.folder = str(folder)
    if status == "succeeded" and (folder / "result.json").exists():
        result = json.loads((folder / "result.json").read_text())
        outcome.probabilities = {f["label"]: float(f["probability"]) for f in result["findings"]}
    return outcome


def unexpected_errors(data_dir: Path) -> dict[str, str]:
    """study id -> "ErrorType at file:line <- ..." for each stage that failed unexpectedly (logs/radstream.log)."""
    found = {}
    log = data_dir / "logs" / "radstream.log"
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if "failed unexpectedly" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        frames = " <- ".join(str(record.get("code_path", "")).split(" <- ")[:5])
        found[str(record.get("study_id", ""))] = f"{record.get('error_type', '')} at {frames}"
    return found


def run_cli(members: list[Member], work: Path, workers: int = 2) -> dict[str, Outcome]:
    """Every produced member through one `radstream run` of a folder of study folders; path -> outcome."""
    studies = work / "run-studies"
    studies.mkdir(parents=True, exist_ok=True)
    by_folder = {}
    for member in members:
        if member.path:
            folder = studies / Path(member.path).parent.name
            folder.mkdir(exist_ok=True)
            shutil.copyfile(member.path, folder / "study.dcm")
            by_folder[folder.name] = member.path
    data = work / "run-data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "radstream.cli",
            "run",
            str(studies),
            "--data-dir",
            str(data),
            "--json",
            "--quiet",
            "--workers",
            str(workers),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
        env=env,
    )
    try:
        summary = json.loads(run.stdout)
    except ValueError:
        summary = None
    if run.returncode not in (0, 1) or summary is None:
        raise RuntimeError(f"radstream run exited {run.returncode} with no summary: {run.stderr[-2000:]}")
    outcomes, unexpected = {}, unexpected_errors(data)
    for study in summary["studies"]:
        path = by_folder.get(study["study_id"])
        if path:
            outcomes[path] = _outcome_from_result(
                data / "results",
                study["study_id"],
                study["status"],
                study.get("message") or "",
                study.get("error_type") or "",
                study.get("stage") or "",
            )
            outcomes[path].code_path = unexpected.get(study["study_id"], "")
    return outcomes


def run_gateway(members: list[Member], work: Path, workers: int = 2) -> dict[str, Outcome]:
    """Every produced member sent to the gateway (free loopback port) in one association; path -> outcome."""
    import pydicom
    from pynetdicom import AE

    from radstream.runtime import LocalRuntime
    from services.gateway.domain import study_id_for
    from services.gateway.server import Gateway, LocalPipeline
    from shared.settings import Settings

    settings = Settings(
        data_dir=work / "gateway-data",
        gateway_dimse_port=0,
        gateway_http_port=0,
        gateway_pseudonym_key=PSEUDONYM_KEY,
        gateway_dimse_timeout_s=60,
        gateway_acse_timeout_s=30,
        gateway_network_timeout_s=60,
    )
    files = []
    for member in members:
        if member.path:
            ds = pydicom.dcmread(member.path, stop_before_pixels=True)
            files.append(
                (
                    member.path,
                    str(ds.SOPClassUID),
                    str(ds.file_meta.TransferSyntaxUID),
                    study_id_for(PSEUDONYM_KEY.encode(), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))[0],
                )
            )
    contexts = sorted({(sop, syntax) for _, sop, syntax, _ in files})
    if len(contexts) > 128:
        raise RuntimeError(f"{len(contexts)} presentation contexts: more than one association may propose (128)")
    outcomes: dict[str, Outcome] = {}
    unanswered: dict[str, str] = {}
    with LocalRuntime(settings, workers=workers) as runtime:
        pipeline = LocalPipeline(runtime, workers=workers)
        try:
            with Gateway(settings, store=runtime.store, on_stored=pipeline) as gateway:
                scu = AE(ae_title="CORPUS")
                for sop, syntax in contexts:
                    scu.add_requested_context(sop, [syntax])
                scu.dimse_timeout = scu.network_timeout = 60

                def associate() -> Any:
                    assoc = scu.associate("127.0.0.1", gateway.dimse.port, ae_title=gateway.ae_title)
                    if not assoc.is_established:
                        raise RuntimeError("the gateway did not accept the corpus's association")
                    return assoc

                assoc = associate()
                try:
                    for path, _, _, _study_id in files:
                        started = time.perf_counter()
                        status = assoc.send_c_store(Path(path))
                        if "Status" not in status:  # no response: the association was aborted or timed out
                            unanswered[path] = (
                                f"the C-STORE got no response in {time.perf_counter() - started:.0f} s "
                                f"(association {'aborted' if not assoc.is_established else 'timed out'}); sent again"
                            )
                            if assoc.is_established:
                                assoc.abort()
                            assoc = associate()
                            status = assoc.send_c_store(Path(path))
                        code = int(status.Status) if "Status" in status else -1
                        if code != 0:
                            comment = str(status.get("ErrorComment", "")) if status else "no response"
                            outcomes[path] = Outcome("failed", f"C-STORE status 0x{code & 0xFFFF:04X}: {comment}", "Refused", "gateway")
                finally:
                    if assoc.is_established:
                        assoc.release()
            for future in list(pipeline.futures.values()):
                future.result(timeout=1800)
        finally:
            pipeline.close()
        by_study = {}
        for future in pipeline.futures.values():
            outcome = future.result()
            by_study[outcome.study_id] = outcome
    unexpected = unexpected_errors(settings.data_dir)
    for path, _, _, study_id in files:
        if path in outcomes:
            continue
        outcome = by_study.get(study_id)
        if outcome is None:
            outcomes[path] = Outcome("missing", "stored but never run")
            continue
        outcomes[path] = _outcome_from_result(
            settings.data_dir / "results", study_id, outcome.status, outcome.message or "", outcome.error_type or "", outcome.stage or ""
        )
        outcomes[path].code_path = unexpected.get(study_id, "")
    for path, why in unanswered.items():
        outcomes[path].unanswered = why
    return outcomes


def dciodvfy_errors(path: Path) -> tuple[int, str]:
    """(errors dciodvfy reports, the first one)."""
    run = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    errors = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip().startswith("Error")]
    return len(errors), errors[0] if errors else ""


# FHIR's uuid type (R4 2.24.0.1): "urn:uuid:" and an RFC 4122 UUID in lower case; fhir.resources types fullUrl and
# Reference.reference as plain uri/string, so a "urn:uuid:report" passes it.
FHIR_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _urn_uuids(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("fullUrl", "reference") and isinstance(v, str) and v.startswith("urn:uuid:")] + [
            u for v in node.values() for u in _urn_uuids(v)
        ]
    if isinstance(node, list):
        return [u for v in node for u in _urn_uuids(v)]
    return []


def fhir_validity(path: Path) -> str:
    """ "valid" when fhir.resources (R4B) validates the bundle and every urn:uuid it uses is a UUID; else the first error."""
    from fhir.resources.R4B.bundle import Bundle

    text = path.read_text()
    try:
        Bundle.model_validate_json(text) if hasattr(Bundle, "model_validate_json") else Bundle.parse_raw(text)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    bad = sorted({u for u in _urn_uuids(json.loads(text)) if not FHIR_UUID.fullmatch(u)})
    if bad:
        return f"fullUrl/reference not a urn:uuid UUID (FHIR uuid type): {', '.join(bad)[:160]}"
    return "valid"


def check_exports(outcome: Outcome) -> None:
    """dciodvfy on the SR and the overlay, fhir.resources on the bundle, where the export wrote them."""
    if not outcome.folder:
        return
    folder = Path(outcome.folder)
    if (folder / "report.sr.dcm").exists():
        outcome.sr_errors, first = dciodvfy_errors(folder / "report.sr.dcm")
        outcome.dciodvfy_first_error = first and f"SR: {first}"
    if (folder / "report.overlay.dcm").exists():
        outcome.overlay_errors, first = dciodvfy_errors(folder / "report.overlay.dcm")
        if first and not outcome.dciodvfy_first_error:
            outcome.dciodvfy_first_error = f"overlay: {first}"
    if (folder / "report.fhir.json").exists():
        outcome.fhir = fhir_validity(folder / "report.fhir.json")


# ---------------------------------------------------------------- the table


@dataclass
class Row:
    path: str  # "run" or "gateway"
    group: str
    container: str
    transfer_syntax: str
    lossy: bool
    decoded: str  # "yes", "refused: ...", "not produced by ...", "crashed: ..."
    max_dp: float | None = None
    tolerance: float | None = None
    sr_errors: int | None = None
    overlay_errors: int | None = None
    fhir: str = ""
    reference: str = ""  # which reference decoder reads the file: pydicom, gdcm, or none
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


STUDY_PREFIX = re.compile(r"^study [^ ]+: ")


def evaluate(members: list[Member], outcomes: dict[str, Outcome], path: str) -> list[Row]:
    """One row per member for one entry point, with the problems that fail it."""
    rows: list[Row] = []
    by_picture: dict[str, list[tuple[Member, Outcome, Row]]] = {}
    for member in members:
        row = Row(path, member.group, member.container, member.transfer_syntax, member.lossy, "", reference=member.reference or "none")
        if not member.path:
            row.decoded = member.note
            rows.append(row)
            continue
        outcome = outcomes.get(member.path) or Outcome("missing", "no outcome")
        if outcome.unanswered:
            row.problems.append(f"gateway: {outcome.unanswered}")
        if outcome.status == "succeeded":
            row.decoded = "yes"
            if member.expect_refusal:
                row.decoded = "yes (the reference decoders cannot)"
            by_picture.setdefault(member.picture, []).append((member, outcome, row))
            row.sr_errors, row.overlay_errors, row.fhir = outcome.sr_errors, outcome.overlay_errors, outcome.fhir
            for kind, count in (("SR", outcome.sr_errors), ("overlay", outcome.overlay_errors)):
                if count is None:
                    row.problems.append(f"no {kind} written")
                elif count:
                    row.problems.append(f"{kind}: {count} dciodvfy error(s), first: {outcome.dciodvfy_first_error}")
            if outcome.fhir != "valid":
                row.problems.append(f"FHIR bundle: {outcome.fhir or 'not written'}")
        elif outcome.status == "failed":
            row.decoded = f"refused at {outcome.stage} ({outcome.error_type}): {STUDY_PREFIX.sub('', outcome.message)}"
            clear = (
                outcome.error_type
                and outcome.message
                and outcome.stage in ("validate", "prepare", "gateway")
                and not outcome.code_path
                and member.refusal_names in outcome.message
            )
            where = f" [{outcome.code_path}]" if outcome.code_path else ""
            if not member.expect_refusal:
                row.problems.append(
                    f"refused though {member.reference} decodes it: {outcome.stage} {outcome.error_type}: {outcome.message}{where}"
                )
            elif not clear:
                row.problems.append(
                    f"refusal is not a clear failure record: {outcome.stage} {outcome.error_type}: {outcome.message}{where}"
                )
        else:
            row.decoded = f"crashed: {outcome.message}"
            row.problems.append(row.decoded)
        if member.note:
            row.decoded += f" [{member.note}]"
        rows.append(row)
    for entries in by_picture.values():
        # The reference: the first original holding the picture (sources with one picture are compared with each other),
        # else its first lossless container with a result.
        reference = next((o for m, o, _ in entries if m.container == "original"), None) or next(
            (o for m, o, _ in entries if not m.lossy), None
        )
        if reference is None or not reference.probabilities:
            continue
        for member, outcome, row in entries:
            row.max_dp = round(max(abs(outcome.probabilities.get(f, np.nan) - reference.probabilities.get(f, np.nan)) for f in FINDINGS), 4)
            if member.not_held:
                row.decoded += f" [max |dp| not held: {member.not_held}]"
                continue
            row.tolerance = LOSSY_TOLERANCE if member.lossy else LOSSLESS_TOLERANCE
            if not row.max_dp <= row.tolerance:  # NaN (a finding missing) fails too
                row.problems.append(
                    f"max |dp| {row.max_dp} over the {row.tolerance} a {'lossy' if member.lossy else 'lossless'} container allows"
                )
    return rows


SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "implicit-le",
    "1.2.840.10008.1.2.1": "explicit-le",
    "1.2.840.10008.1.2.2": "explicit-be",
    "1.2.840.10008.1.2.1.99": "deflated-le",
    "1.2.840.10008.1.2.5": "rle",
    "1.2.840.10008.1.2.4.50": "jpeg-baseline",
    "1.2.840.10008.1.2.4.51": "jpeg-extended",
    "1.2.840.10008.1.2.4.57": "jpeg-lossless",
    "1.2.840.10008.1.2.4.70": "jpeg-lossless-sv1",
    "1.2.840.10008.1.2.4.80": "jpeg-ls-lossless",
    "1.2.840.10008.1.2.4.81": "jpeg-ls-near-lossless",
    "1.2.840.10008.1.2.4.90": "jpeg2000-lossless",
    "1.2.840.10008.1.2.4.91": "jpeg2000",
}


def format_table(rows: list[Row]) -> str:
    """group x container x decoded x max |dp| x dciodvfy errors, run and gateway side by side."""
    paired: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        paired.setdefault((row.group, row.container), {})[row.path] = row
    header = ("group", "container", "syntax", "run: decoded", "max|dp|", "SR/OV err", "gateway: decoded", "max|dp|", "SR/OV err", "ok")
    lines = []

    def cells(row: Row | None) -> tuple[str, str, str]:
        if row is None:
            return "-", "-", "-"
        decoded = row.decoded if len(row.decoded) <= 72 else row.decoded[:69] + "..."
        dp = "" if row.max_dp is None else f"{row.max_dp:.4f}"
        errors = (
            ""
            if row.sr_errors is None and row.overlay_errors is None
            else f"{row.sr_errors if row.sr_errors is not None else '-'}/{row.overlay_errors if row.overlay_errors is not None else '-'}"
        )
        return decoded, dp, errors

    for (group, container), by_path in paired.items():
        any_row = next(iter(by_path.values()))
        ok = "PASS" if all(r.passed for r in by_path.values()) else "FAIL"
        lines.append(
            (
                group,
                container,
                SYNTAX_NAMES.get(any_row.transfer_syntax, any_row.transfer_syntax or "-"),
                *cells(by_path.get("run")),
                *cells(by_path.get("gateway")),
                ok,
            )
        )
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


# One letter per kind of problem, for the matrix: a cell holds the letters of its run and gateway rows ("." passes).
MATRIX_LEGEND = {
    "E": "the export stage crashed (unexpected error; the result is superseded)",
    "U": "another stage failed unexpectedly",
    "T": "refused as truncated though a reference decoder reads it",
    "X": "refused as unreadable though a reference decoder reads it",
    "C": "refused as a constant picture though a reference decoder reads it",
    "R": "another refusal a reference decoder does not share, or an unclear one",
    "D": "max |dp| over the tolerance",
    "V": "dciodvfy errors in the SR or the overlay",
    "F": "the FHIR bundle does not validate",
    "G": "the gateway left a C-STORE unanswered",
    "N": "no SR or overlay written",
    "-": "not produced by the transcoder",
}


def _letter(problem: str) -> str:
    if problem.startswith("gateway:"):
        return "G"
    if "max |dp|" in problem:
        return "D"
    if "dciodvfy" in problem:
        return "V"
    if problem.startswith("FHIR"):
        return "F"
    if problem.startswith("no "):
        return "N"
    if "unexpected" in problem:
        return "E" if " export " in problem else "U"
    return "T" if "truncated" in problem else "X" if "cannot be read" in problem else "C" if "constant value" in problem else "R"


def format_matrix(rows: list[Row]) -> str:
    """group x container, one cell per file: "." passes, else the letters of its problems (MATRIX_LEGEND)."""
    groups: list[str] = list(dict.fromkeys(r.group for r in rows))
    containers: list[str] = list(dict.fromkeys(r.container for r in rows))
    cells: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        cell = cells.setdefault((row.group, row.container), set())
        if row.decoded.startswith("not produced"):
            cell.add("-")
        cell.update(_letter(p) for p in row.problems)
    width = max(len(g) for g in groups)
    lines = [" ".ljust(width) + " " + " ".join(f"{i:>3}" for i in range(len(containers)))]
    for group in groups:
        lines.append(
            group.ljust(width)
            + " "
            + " ".join(f"{''.join(sorted(cells[(group, c)])) or '.':>3}" if (group, c) in cells else "   " for c in containers)
        )
    lines.append("")
    lines.append("containers: " + "; ".join(f"{i} {c}" for i, c in enumerate(containers)))
    lines.append("cells: . passes; " + "; ".join(f"{k} {v}" for k, v in MATRIX_LEGEND.items()))
    return "\n".join(lines)


def failures(rows: list[Row]) -> list[str]:
    return [
        f"{r.path}: {r.group} [{r.container}, {SYNTAX_NAMES.get(r.transfer_syntax, r.transfer_syntax)}]: {p}"
        for r in rows
        for p in r.problems
    ]


def conformance(work: Path, transcode_all: bool = False, workers: int = 2, gateway: bool = True) -> dict[str, Any]:
    """Build the corpus under `work`, run it both ways, check every export; the rows and what was left out."""
    timings = {}
    started = time.perf_counter()
    members, left_out = build_corpus(work / "corpus", transcode_all)
    timings["build_s"] = round(time.perf_counter() - started, 1)
    tool("dciodvfy")
    rows: list[Row] = []
    entry_points = [("run", run_cli)] + ([("gateway", run_gateway)] if gateway else [])
    for name, runner in entry_points:
        started = time.perf_counter()
        outcomes = runner(members, work / name, workers)
        timings[f"{name}_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            list(pool.map(check_exports, [o for o in outcomes.values() if o.status == "succeeded"]))
        timings[f"{name}_exports_checked_s"] = round(time.perf_counter() - started, 1)
        rows += evaluate(members, outcomes, name)
    return {"members": members, "left_out": left_out, "rows": rows, "timings": timings}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--transcode",
        choices=("all", "classes"),
        default="all",
        help="transcode every source (all, the default) or one source per pixel-module class (classes: the suite's run)",
    )
    ap.add_argument("--workers", type=int, default=2, help="studies run at once, by `radstream run` and by the gateway's pipeline")
    ap.add_argument("--no-gateway", action="store_true", help="only `radstream run`")
    ap.add_argument("--work-dir", help="keep the corpus and both data dirs here (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--matrix", action="store_true", help="print group x container as one letter-coded cell per file, not the wide table")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        # The in-process gateway's loggers write to the process's stdout: while it runs, that is stderr, so stdout
        # holds the table (or the JSON) alone.
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        try:
            report = conformance(work, args.transcode == "all", args.workers, not args.no_gateway)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
    rows = report["rows"]
    if args.json:
        print(
            json.dumps(
                {"rows": [{**asdict(r), "passed": r.passed} for r in rows], "left_out": report["left_out"], "timings": report["timings"]},
                indent=1,
            )
        )
    else:
        print(format_matrix(rows) if args.matrix else format_table(rows))
        print()
        sources = sorted({m.group for m in report["members"]})
        produced = sum(1 for m in report["members"] if m.path)
        print(
            f"{len(sources)} sources, {produced} files ({sum(1 for m in report['members'] if not m.path)} containers not produced); "
            f"rows passing: {sum(r.passed for r in rows)} of {len(rows)}; timings {report['timings']}"
        )
        for name, why in report["left_out"]:
            print(f"left out: {name}: {why}")
        for line in failures(rows):
            print(f"FAIL {line}")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
