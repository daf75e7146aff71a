"""Models over their life: import an ONNX model with a spec as a new version, list, activate, roll back, shadow.

    radstream models import model.onnx --spec spec.yaml     a NEW version (checked on sample studies); live untouched
    radstream models list                                   versions, which is live, which runs in shadow
    radstream models activate chest_xray_classifier 3       live := 3 (one atomic pointer replacement)
    radstream models rollback chest_xray_classifier         live := the previous live version
    radstream models shadow chest_xray_classifier 3 --fraction 0.5    3 runs beside live on half the studies

Each model folder's `live.json` (shared.model_repository.POINTER) is the one decision: it is replaced whole (temp file,
fsync, rename, fsync of the folder), so a reader sees the old pointer or the new one. Every version keeps its own files
(`<v>/config.pbtxt`, `<v>/gpu.pbtxt`, `labels.txt`, `thresholds.json`, `MODEL_CARD.md`, `spec.yaml`, `checks.json`);
versions are never deleted. After the pointer, the model folder's serving files (config.pbtxt and configs/gpu.pbtxt with
a version_policy naming live and shadow, labels.txt) are written from the live version's: what Triton loads. They
are derived: `radstream models list` says when they lag the pointer (a crash between the two writes) and `activate`
again writes them. See docs/model-lifecycle.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from radstream.cli_args import add_data_dir
from shared.atomicfile import atomic_write, fsync_dir
from shared.errors import ConfigurationError
from shared.model_repository import (
    POINTER,
    ModelKind,
    Pointer,
    load_model_spec,
    read_pointer,
    versions_in,
)

EXIT_REFUSED = 2
GPU_CONFIG = "gpu.pbtxt"  # <v>/gpu.pbtxt: the version's GPU config; the model folder's configs/gpu.pbtxt is derived from it
SERVING_HEADER = "# Written by `radstream models activate` from version {live}'s files (docs/model-lifecycle.md): edit those, not this.\n"
# Files a version carries of its own; a version from before the lifecycle (the model folder's files) is given copies.
VERSION_FILES = ("labels.txt", "thresholds.json", "MODEL_CARD.md", "metrics.json")
SAMPLE_STUDIES = 4


class ImportRefused(ValueError):
    """The import cannot go on: the message says which check failed and what to change."""


# --- the spec file ---
class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "image"
    size: int = Field(gt=15, le=2048)
    channels: Literal[1] = 1  # the pipeline makes one grey channel: [N, 1, S, S]
    normalization: Literal["unit", "xrv"] = "unit"  # unit: [0, 1]; xrv: (2x - 1) * 1024
    letterbox: Literal[True] = True  # the longer side scaled to `size`, centred, black padding (services/prepare)


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[str] = []
    thresholds: dict[str, float] = {}  # operating points, per label (classifier); 0.5 where absent
    # classifier: per label, the high-specificity operating point (e.g. specificity >= 0.95 on the importer's validation
    # set); written to the version's metrics.json, carried by its findings, and what the critical-finding rules with
    # threshold "high-specificity" hold them to (docs/triage.md). Absent: those rules use the label's threshold.
    high_specificity: dict[str, float] = {}
    score_threshold: float | None = Field(default=None, ge=0, le=1)  # detector: boxes below it are not reported
    box_format: Literal["xyxy"] | None = None  # detector: x1, y1, x2, y2 in model-input pixels
    embedding_size: int | None = Field(default=None, gt=0)  # encoder
    sentence_bank: str | None = None  # encoder: sentence_bank.json, relative to the spec file


class ImportSpec(BaseModel):
    """A model's spec: what the pipeline needs to feed it and read it, and what a reader needs to trust it."""

    model_config = ConfigDict(extra="forbid")
    model: str  # the slot: chest_xray_classifier, anomaly_detector or report_encoder
    kind: ModelKind
    title: str
    input: InputSpec
    outputs: OutputSpec
    provenance: str  # where the weights come from and what they were trained on
    intended_use: str
    limitations: str = "not validated for clinical use"
    notes: str = ""  # Markdown for the model card (an importer's own facts: architecture, label mapping)

    @model_validator(mode="after")
    def _fits_kind(self) -> ImportSpec:
        o = self.outputs
        if self.kind in ("classifier", "detector"):
            if not o.labels or len(set(o.labels)) != len(o.labels):
                raise ValueError(f"a {self.kind} needs outputs.labels, each once")
            unknown = set(o.thresholds) - set(o.labels)
            if unknown:
                raise ValueError(f"outputs.thresholds names labels the model does not have: {', '.join(sorted(unknown))}")
            if any(not 0 <= t <= 1 for t in o.thresholds.values()):
                raise ValueError("outputs.thresholds must be within [0, 1]")
        if o.high_specificity:
            if self.kind != "classifier":
                raise ValueError("outputs.high_specificity is a classifier's (per label)")
            unknown = set(o.high_specificity) - set(o.labels)
            if unknown:
                raise ValueError(f"outputs.high_specificity names labels the model does not have: {', '.join(sorted(unknown))}")
            if any(not 0 <= t <= 1 for t in o.high_specificity.values()):
                raise ValueError("outputs.high_specificity must be within [0, 1]")
        if self.kind == "detector" and o.box_format is None:
            raise ValueError("a detector needs outputs.box_format (xyxy)")
        if self.kind == "encoder" and (o.embedding_size is None or o.sentence_bank is None):
            raise ValueError("an encoder needs outputs.embedding_size and outputs.sentence_bank")
        for text in (self.provenance, self.title, self.intended_use):
            if '"' in text or "\\" in text or "\n" in text:
                raise ValueError("provenance, title and intended_use are one line without quotes or backslashes")
        return self


def load_spec(path: Path) -> ImportSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        return ImportSpec.model_validate(raw)
    except (OSError, yaml.YAMLError) as e:
        raise ImportRefused(f"spec {path} cannot be read: {e}") from e
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg']}" for err in e.errors())
        raise ImportRefused(f"spec {path}: {fields}") from e


# --- checks on sample studies ---
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "classifier": ("probabilities",),
    "detector": ("boxes", "scores", "classes"),
    "encoder": ("embedding",),
}


def sample_tensors(spec: ImportSpec, count: int = SAMPLE_STUDIES) -> np.ndarray:
    """Synthetic phantom studies (with and without findings), letterboxed and normalised as prepare does: [N, 1, S, S]."""
    from synthetic.phantoms import generate_phantom
    from services.prepare.domain import letterbox, normalise

    rng = np.random.default_rng(26)
    tensors = []
    for i in range(count):
        image = generate_phantom(rng, size=384 + 64 * i, findings=[] if i == 0 else None).image
        if i % 2:  # a landscape picture too: the letterbox pads it
            image = image[: image.shape[0] * 3 // 4]
        square, _ = letterbox(image.astype(np.float32), spec.input.size)
        tensors.append(normalise(square, spec.input.normalization)[np.newaxis])
    return np.stack(tensors).astype(np.float32)


def check_outputs(spec: ImportSpec, outputs: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """Shapes and ranges of what the model answered on `n` samples, as docs/models.md reads them; a summary of them."""
    o = spec.outputs
    for name, value in outputs.items():
        if not np.all(np.isfinite(value)):
            raise ImportRefused(f"output {name} holds NaN or infinite values on the sample studies")
    if spec.kind == "classifier":
        p = outputs["probabilities"]
        if p.shape != (n, len(o.labels)):
            raise ImportRefused(
                f"probabilities has shape {list(p.shape)} for {n} studies, the spec's {len(o.labels)} labels want {[n, len(o.labels)]}"
            )
        if p.min() < 0 or p.max() > 1:
            raise ImportRefused(f"probabilities range over [{p.min():.4g}, {p.max():.4g}], outside [0, 1]: apply the sigmoid in the model")
        return {"probability_min": round(float(p.min()), 4), "probability_max": round(float(p.max()), 4)}
    if spec.kind == "detector":
        boxes, scores, classes = outputs["boxes"], outputs["scores"], outputs["classes"]
        if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
            raise ImportRefused(f"boxes has shape {list(boxes.shape)}, want [{n}, K, 4] ({o.box_format})")
        if scores.shape != boxes.shape[:2] or classes.shape != boxes.shape[:2]:
            raise ImportRefused(f"scores {list(scores.shape)} and classes {list(classes.shape)} must both be {list(boxes.shape[:2])}")
        if scores.min() < 0 or scores.max() > 1:
            raise ImportRefused(f"scores range over [{scores.min():.4g}, {scores.max():.4g}], outside [0, 1]")
        if classes.min() < 0 or classes.max() >= len(o.labels) or not np.all(classes == np.round(classes)):
            raise ImportRefused(f"classes must be whole numbers in [0, {len(o.labels)}) (indices of outputs.labels)")
        if (boxes[..., 2] < boxes[..., 0]).any() or (boxes[..., 3] < boxes[..., 1]).any():
            raise ImportRefused("boxes are not x1, y1, x2, y2 with x2 >= x1 and y2 >= y1 (box_format xyxy)")
        return {"boxes_per_study": int(boxes.shape[1]), "score_max": round(float(scores.max()), 4)}
    e = outputs["embedding"]
    if e.shape != (n, o.embedding_size):
        raise ImportRefused(f"embedding has shape {list(e.shape)}, the spec wants [{n}, {o.embedding_size}]")
    if (np.linalg.norm(e, axis=1) == 0).any():
        raise ImportRefused("the embedding is zero on a sample study: it cannot be compared with the sentence bank")
    return {"embedding_size": e.shape[1]}


def run_on_samples(onnx_path: Path, spec: ImportSpec) -> dict[str, Any]:
    """Load the model with ONNX Runtime and run it on a batch of sample studies (a batch: Triton batches up to 16)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for a file it cannot load
        raise ImportRefused(f"ONNX Runtime cannot load {onnx_path}: {type(e).__name__}: {e}") from e
    inputs = {i.name: i for i in session.get_inputs()}
    if list(inputs) != [spec.input.name]:
        raise ImportRefused(f"the model's inputs are {list(inputs)}; the spec says one input, {spec.input.name!r}")
    shape = inputs[spec.input.name].shape
    want = [spec.input.channels, spec.input.size, spec.input.size]
    if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != want:
        raise ImportRefused(f"input {spec.input.name} has shape {shape}; the spec wants [N, {', '.join(map(str, want))}]")
    if isinstance(shape[0], int):
        raise ImportRefused(f"input {spec.input.name} has a fixed batch size {shape[0]}: export it with a dynamic first dimension")
    names = OUTPUT_NAMES[spec.kind]
    have = [o.name for o in session.get_outputs()]
    missing = [n for n in names if n not in have]
    if missing:
        raise ImportRefused(f"a {spec.kind} must have outputs {', '.join(names)}; the model has {', '.join(have)}")
    batch = sample_tensors(spec)
    try:
        values = session.run(list(names), {spec.input.name: batch})
    except Exception as e:  # as above: ONNX Runtime's own error types
        raise ImportRefused(f"the model failed on the sample studies: {type(e).__name__}: {e}") from e
    summary = check_outputs(spec, dict(zip(names, [np.asarray(v) for v in values])), len(batch))
    # Triton's config names each output's type as the model has it (a detector's classes are often INT32 or INT64).
    types = {o.name: ONNX_TO_TRITON.get(o.type, "") for o in session.get_outputs() if o.name in names}
    unknown = [n for n, t in types.items() if not t]
    if unknown:
        raise ImportRefused(f"outputs {', '.join(unknown)} have a type Triton's ONNX Runtime backend is not given here")
    return {"sample_studies": len(batch), "input_shape": [len(batch), *want], "output_types": types, **summary}


ONNX_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
}


# --- the version's files ---
def triton_configs(spec: ImportSpec, version: int, digest: str, types: dict[str, str]) -> dict[str, str]:
    """The version's CPU and GPU Triton configs, written as the reference models' are (radstream.models_import);
    `types`: each output's Triton type, as the model declares it."""
    from radstream.models_import import triton_config

    o = spec.outputs
    outputs: list[tuple[str, str, list[int], str | None]]
    if spec.kind == "classifier":
        outputs = [("probabilities", types["probabilities"], [len(o.labels)], "labels.txt")]
    elif spec.kind == "detector":
        outputs = [
            ("boxes", types["boxes"], [-1, 4], None),
            ("scores", types["scores"], [-1], None),
            ("classes", types["classes"], [-1], None),
        ]
    else:
        outputs = [("embedding", types["embedding"], [int(o.embedding_size or 0)], None)]
    provenance = f"{spec.provenance} (v{version}, sha256 {digest[:12]})"
    return {
        placement: triton_config(
            spec.model, f"{spec.model}: {spec.title}", spec.input.size, spec.input.normalization, spec.kind, outputs, provenance, placement
        ).replace('name: "image"', f'name: "{spec.input.name}"', 1)
        for placement in ("cpu", "gpu")
    }


def model_card(spec: ImportSpec, version: int, digest: str, checks: dict[str, Any], source: str) -> str:
    o = spec.outputs
    rows = "\n".join(
        f"| {label} | {o.thresholds.get(label, 0.5)} |"
        + (f" {o.high_specificity[label]} |" if label in o.high_specificity else " |" * bool(o.high_specificity))
        for label in o.labels
    )
    outputs = {
        "classifier": f"`probabilities` FP32 [N, {len(o.labels)}] in the order of labels.txt, thresholded per label below",
        "detector": f"`boxes` FP32 [N, K, 4] ({o.box_format}, model-input pixels), `scores` [N, K], `classes` [N, K]"
        f" (index into labels.txt); boxes under {o.score_threshold if o.score_threshold is not None else 0.5} are not reported",
        "encoder": f"`embedding` FP32 [N, {o.embedding_size}], compared with the sentences of sentence_bank.json",
    }[spec.kind]
    return f"""# {spec.model} v{version}: {spec.title}

> {spec.limitations}. Every output of this version is labelled with its provenance: {spec.provenance}.

## Provenance
- imported from `{source}` (sha256 {digest}) on {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} by `radstream models import`
- {spec.provenance}

## Intended use
{spec.intended_use}

## Input and output
- input `{spec.input.name}` FP32 [N, {spec.input.channels}, {spec.input.size}, {spec.input.size}], letterboxed (longer side
  scaled, centred, black padding), normalisation `{spec.input.normalization}`
- output {outputs}

{("| label | operating point |" + (" high-specificity point |" if o.high_specificity else "")) + chr(10) + ("|---|---|" + ("---|" if o.high_specificity else "")) + chr(10) + rows if rows else ""}

## Checks at import
Run on {checks["sample_studies"]} synthetic phantom studies: {json.dumps({k: v for k, v in checks.items() if k != "sample_studies"})}.
Shapes and ranges only: these checks say the model fits the pipeline, not that it reads radiographs well.
{("## Notes" + chr(10) + spec.notes) if spec.notes else ""}"""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _staging(model_folder: Path) -> Path:
    """Temp files of the model's atomic writes: inside the model folder, not a number, so Triton never takes it for a
    version, and not beside the models, where Triton would take it for a model."""
    return Path(model_folder) / ".staging"


def adopt_legacy(folder: Path) -> Pointer:
    """A model folder from before the lifecycle (no live.json): give its versions their own copies of the folder's
    files, then pin the version it serves today (the highest) as live, so a new, higher version does not go live."""
    pointer = read_pointer(folder)
    if pointer is not None:
        return pointer
    versions = versions_in(folder)
    if not versions:
        raise ImportRefused(f"{folder} holds no version")
    staging = _staging(folder)
    for v in versions:
        own = folder / v
        if (own / "config.pbtxt").exists():
            continue
        copies = {folder / "config.pbtxt": own / "config.pbtxt", folder / "configs" / "gpu.pbtxt": own / GPU_CONFIG}
        copies |= {folder / name: own / name for name in VERSION_FILES}
        # config.pbtxt last: its presence is what says the version has its own files (load_model_spec).
        for source, target in sorted(copies.items(), key=lambda c: c[1].name == "config.pbtxt"):
            if source.exists():
                atomic_write(target, source.read_bytes(), staging)
    pointer = Pointer(live=versions[-1])
    write_pointer(folder, pointer)
    return pointer


def write_pointer(folder: Path, pointer: Pointer) -> None:
    data = (json.dumps(pointer.to_json(), indent=2) + "\n").encode()
    atomic_write(Path(folder) / POINTER, data, _staging(Path(folder)))


@dataclass(frozen=True)
class Imported:
    model: str
    version: str
    folder: Path
    checks: dict[str, Any]


def import_model(onnx_path: Path, spec_path: Path, repo: Path) -> Imported:
    """Check the model on sample studies, then add it to its slot as a new version. The live version is not touched."""
    onnx_path, spec_path, repo = Path(onnx_path), Path(spec_path), Path(repo)
    spec = load_spec(spec_path)
    if not onnx_path.is_file():
        raise ImportRefused(f"model file {onnx_path} does not exist")
    folder = repo / spec.model
    if not (folder / "config.pbtxt").is_file():
        raise ImportRefused(
            f"{spec.model} is not a model slot of {repo} (the workflow runs: {', '.join(sorted(p.parent.name for p in repo.glob('*/config.pbtxt')))})"
        )
    live = load_model_spec(folder)
    if live.kind != spec.kind:
        raise ImportRefused(f"{spec.model} is a {live.kind}; the spec says {spec.kind}")
    bank: dict[str, Any] | None = None
    if spec.kind == "encoder":
        bank_path = spec_path.parent / str(spec.outputs.sentence_bank)
        try:
            bank = json.loads(bank_path.read_text())
            sizes = {len(s["embedding"]) for s in bank["sentences"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ImportRefused(f"sentence bank {bank_path} cannot be read ({type(e).__name__})") from e
        if sizes != {spec.outputs.embedding_size}:
            raise ImportRefused(
                f"sentence bank embeddings have sizes {sorted(sizes)}, the spec's embedding_size is {spec.outputs.embedding_size}"
            )
    checks = run_on_samples(onnx_path, spec)
    adopt_legacy(folder)
    digest = file_sha256(onnx_path)
    version = max(map(int, versions_in(folder))) + 1
    staging = folder / f".import-{uuid.uuid4().hex[:8]}"  # not a number: Triton and the readers ignore it
    staging.mkdir()
    try:
        shutil.copy2(onnx_path, staging / "model.onnx")
        configs = triton_configs(spec, version, digest, checks["output_types"])
        (staging / "config.pbtxt").write_text(configs["cpu"])
        (staging / GPU_CONFIG).write_text(configs["gpu"])
        if spec.kind != "encoder":
            (staging / "labels.txt").write_text("\n".join(spec.outputs.labels) + "\n")
        thresholds: dict[str, float] = {label: spec.outputs.thresholds.get(label, 0.5) for label in spec.outputs.labels}
        if spec.kind == "detector":
            thresholds = {"score_threshold": spec.outputs.score_threshold if spec.outputs.score_threshold is not None else 0.5}
        (staging / "thresholds.json").write_text(json.dumps(thresholds, indent=2) + "\n")
        if spec.outputs.high_specificity:  # the shape training writes (metrics.json `high_specificity.points`), from the spec
            points = {label: {"threshold": t} for label, t in spec.outputs.high_specificity.items()}
            (staging / "metrics.json").write_text(
                json.dumps({"high_specificity": {"chosen_on": "spec", "points": points}}, indent=2) + "\n"
            )
        if bank is not None:
            (staging / "sentence_bank.json").write_text(json.dumps(bank))
        shutil.copy2(spec_path, staging / "spec.yaml")
        (staging / "checks.json").write_text(json.dumps({"sha256": digest, **checks}, indent=2) + "\n")
        (staging / "MODEL_CARD.md").write_text(model_card(spec, version, digest, checks, onnx_path.name))
        for f in staging.iterdir():
            with f.open("rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(staging)
        staging.rename(folder / str(version))  # the version appears whole or not at all
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    load_model_spec(folder, str(version))  # it reads back as the pipeline will read it
    return Imported(spec.model, str(version), folder / str(version), checks)


# --- activate, roll back, shadow ---
def _check_version(folder: Path, version: str) -> None:
    if version not in versions_in(folder):
        raise ImportRefused(f"{folder.name} has no version {version} (have: {', '.join(versions_in(folder))})")
    live = load_model_spec(folder)
    candidate = load_model_spec(folder, version)
    if candidate.kind != live.kind:
        raise ImportRefused(f"{folder.name} v{version} is a {candidate.kind}, the slot holds a {live.kind}")


def _model_folder(repo: Path, model: str) -> Path:
    folder = Path(repo) / model
    if not (folder / "config.pbtxt").is_file():
        raise ImportRefused(f"no model {model!r} in {repo}")
    return folder


def activate(repo: Path, model: str, version: str) -> Pointer:
    folder = _model_folder(repo, model)
    current = adopt_legacy(folder)
    _check_version(folder, version)
    if version == current.live:
        write_serving_files(folder)
        return current
    shadow = current.shadow if current.shadow != version else None
    pointer = Pointer(
        live=version,
        shadow=shadow,
        shadow_fraction=current.shadow_fraction if shadow else 0.0,
        history=(*current.history, current.live),
    )
    write_pointer(folder, pointer)
    write_serving_files(folder)
    return pointer


def rollback(repo: Path, model: str) -> Pointer:
    folder = _model_folder(repo, model)
    current = adopt_legacy(folder)
    if not current.history:
        raise ImportRefused(f"{model} has no earlier live version to roll back to (live is v{current.live})")
    previous = current.history[-1]
    pointer = Pointer(
        live=previous,
        shadow=current.shadow if current.shadow != previous else None,
        shadow_fraction=current.shadow_fraction if current.shadow != previous else 0.0,
        history=current.history[:-1],
    )
    write_pointer(folder, pointer)
    write_serving_files(folder)
    return pointer


def set_shadow(repo: Path, model: str, version: str | None, fraction: float = 1.0) -> Pointer:
    """Run `version` beside live on `fraction` of studies (by study id); None stops the shadow."""
    folder = _model_folder(repo, model)
    current = adopt_legacy(folder)
    if version is not None:
        _check_version(folder, version)
        if version == current.live:
            raise ImportRefused(f"v{version} is {model}'s live version: a shadow is another version")
        if not 0 < fraction <= 1:
            raise ImportRefused("--fraction must be within (0, 1]")
    pointer = Pointer(live=current.live, shadow=version, shadow_fraction=fraction if version else 0.0, history=current.history)
    write_pointer(folder, pointer)
    write_serving_files(folder)
    return pointer


def _parse(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def served_versions(pointer: Pointer) -> list[int]:
    return sorted({int(pointer.live), *([int(pointer.shadow)] if pointer.shadow else [])})


def serving_config(folder: Path, pointer: Pointer, file_name: str) -> str:
    """The live version's config with a version_policy serving live and shadow; a dim the two versions' configs give
    differently (another input size, another label count) becomes -1 (variable) so Triton serves both."""
    from google.protobuf import text_format

    live = _parse((folder / pointer.live / file_name).read_text())
    if pointer.shadow and (folder / pointer.shadow / file_name).exists():
        other = _parse((folder / pointer.shadow / file_name).read_text())
        for mine, theirs in ((live.input, other.input), (live.output, other.output)):
            by_name = {t.name: t for t in theirs}
            for tensor in mine:
                if tensor.name in by_name and list(by_name[tensor.name].dims) != list(tensor.dims):
                    if len(by_name[tensor.name].dims) != len(tensor.dims):
                        raise ImportRefused(f"{folder.name}: {tensor.name} has a different rank in v{pointer.shadow} and v{pointer.live}")
                    dims = [d if d == t else -1 for d, t in zip(tensor.dims, by_name[tensor.name].dims)]
                    del tensor.dims[:]
                    tensor.dims.extend(dims)
    live.version_policy.specific.versions[:] = served_versions(pointer)
    return SERVING_HEADER.format(live=pointer.live) + text_format.MessageToString(live)


def write_serving_files(folder: Path) -> None:
    pointer = read_pointer(folder)
    if pointer is None:
        return
    staging = _staging(folder)
    atomic_write(folder / "config.pbtxt", serving_config(folder, pointer, "config.pbtxt").encode(), staging)
    if (folder / pointer.live / GPU_CONFIG).exists():
        (folder / "configs").mkdir(exist_ok=True)
        atomic_write(folder / "configs" / "gpu.pbtxt", serving_config(folder, pointer, GPU_CONFIG).encode(), staging)
    for name in ("labels.txt", "thresholds.json"):
        if (folder / pointer.live / name).exists():
            atomic_write(folder / name, (folder / pointer.live / name).read_bytes(), staging)


def serving_lags(folder: Path, pointer: Pointer) -> bool:
    """Whether the model folder's config.pbtxt serves other versions than the pointer names (a crash between writes)."""
    try:
        config = _parse((folder / "config.pbtxt").read_text())
    except Exception:
        return True
    return list(config.version_policy.specific.versions) != served_versions(pointer)


def list_versions(repo: Path) -> list[dict[str, Any]]:
    rows = []
    for config in sorted(Path(repo).glob("*/config.pbtxt")):
        folder = config.parent
        pointer = read_pointer(folder)
        live = pointer.live if pointer else versions_in(folder)[-1]
        for v in versions_in(folder):
            spec = load_model_spec(folder, v)
            role = "live" if v == live else ("shadow" if pointer and v == pointer.shadow else "")
            rows.append(
                {
                    "model": spec.name,
                    "version": v,
                    "role": role,
                    "shadow_fraction": pointer.shadow_fraction if role == "shadow" and pointer else None,
                    "kind": spec.kind,
                    "input_size": spec.input_size,
                    "normalization": spec.normalization,
                    "labels": len(spec.labels),
                    "provenance": spec.provenance,
                    "serving_lags_pointer": bool(pointer and role == "live" and serving_lags(folder, pointer)),
                }
            )
    return rows


# --- the CLI ---
def default_repository() -> Path:
    from shared.settings import Settings

    return Path(Settings.from_env().model_repository)


def add_parsers(models_sub: Any) -> None:
    def repo_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model-repository", help="Triton model repository (default: MODEL_REPOSITORY or services/triton/model_repository)")

    imp = models_sub.add_parser("import", help="import an ONNX model with a spec file as a NEW version (checked on sample studies)")
    imp.add_argument("onnx", help="the model (.onnx)")
    imp.add_argument("--spec", required=True, help="the spec file (YAML): docs/model-lifecycle.md")
    repo_arg(imp)
    imp.set_defaults(func=cmd_import)
    lst = models_sub.add_parser("list", help="every model's versions: which is live, which runs in shadow")
    lst.add_argument("--json", action="store_true", help="print JSON")
    repo_arg(lst)
    lst.set_defaults(func=cmd_list)
    act = models_sub.add_parser("activate", help="make a version live (one atomic pointer replacement; versions are kept)")
    act.add_argument("model")
    act.add_argument("version")
    repo_arg(act)
    act.set_defaults(func=cmd_activate)
    rb = models_sub.add_parser("rollback", help="make the previous live version live again")
    rb.add_argument("model")
    repo_arg(rb)
    rb.set_defaults(func=cmd_rollback)
    sh = models_sub.add_parser("shadow", help="run a candidate version beside live on a share of studies (by study id)")
    sh.add_argument("model")
    sh.add_argument("version", nargs="?", help="the candidate (omit with --stop)")
    sh.add_argument("--fraction", type=float, default=1.0, help="share of studies, chosen by study id (default 1: all)")
    sh.add_argument("--stop", action="store_true", help="stop the shadow")
    repo_arg(sh)
    sh.set_defaults(func=cmd_shadow)
    add_compare_parser(models_sub)
    from radstream.feedback import add_parser as add_feedback_parser

    add_feedback_parser(models_sub)
    from radstream.feedback_listen import add_parser as add_listen_parser

    add_listen_parser(models_sub)
    from radstream.model_drift import add_parser as add_drift_parser

    add_drift_parser(models_sub)


def add_compare_parser(models_sub: Any) -> None:
    cmp = models_sub.add_parser(
        "compare", help="live against shadow: per-label agreement (positive agreement, Cohen's kappa, mean |dp|), latency and cost"
    )
    add_data_dir(cmp)
    cmp.add_argument("--days", type=int, default=30, help="window in days (default 30)")
    cmp.add_argument("--json", action="store_true", help="print JSON")
    cmp.set_defaults(func=cmd_compare)


def comparison(data_dir: Path, days: int = 30) -> dict[str, list[dict[str, Any]]]:
    """The named queries model_agreement and model_version_cost over the local lake (DuckDB)."""
    from radstream.analytics import DuckDBQueryRunner
    from shared.settings import Settings

    runner = DuckDBQueryRunner(Path(data_dir) / Settings().telemetry_bucket)
    try:
        return {name: runner.run(name, days=days).as_dicts() for name in ("model_agreement", "model_version_cost")}
    finally:
        runner.close()


# What the table shows (--json gives every column, the 2x2 counts included).
COMPARE_COLUMNS = {
    "model_agreement": ("model_name", "live_version", "shadow_version", "label", "studies", "positive_agreement", "kappa", "mean_abs_dp"),
    "model_version_cost": ("model_name", "model_version", "role", "inferences", "avg_ms", "p95_ms", "usd_per_1000_inferences"),
}


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        found = comparison(Path(args.data_dir), args.days)
    except ConfigurationError as e:
        return _refused(e)
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for name, rows in found.items():
        if not rows:
            console.print(f"{name}: no rows (no study with both a live and a shadow answer in {args.days} days)")
            continue
        columns = COMPARE_COLUMNS[name]
        table = Table(title=f"{name} (model outputs labelled with their provenance: see `radstream models list`)")
        for column in columns:
            table.add_column(column.replace("_", " "))
        for r in rows:
            table.add_row(*("" if r[c] is None else str(r[c]) for c in columns))
        console.print(table)
    return 0


def _repo(args: argparse.Namespace) -> Path:
    return Path(args.model_repository) if args.model_repository else default_repository()


def _refused(e: Exception) -> int:
    print(f"radstream: {e}", file=sys.stderr)
    return EXIT_REFUSED


def cmd_import(args: argparse.Namespace) -> int:
    try:
        imported = import_model(Path(args.onnx), Path(args.spec), _repo(args))
    except (ImportRefused, ConfigurationError) as e:
        return _refused(e)
    print(
        f"imported {Path(args.onnx).name} as {imported.model} version {imported.version} ({imported.folder}); "
        f"checks on {imported.checks['sample_studies']} sample studies passed; live unchanged. "
        f"Next: `radstream models shadow {imported.model} {imported.version}` or `radstream models activate {imported.model} {imported.version}`"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    try:
        rows = list_versions(_repo(args))
    except ConfigurationError as e:
        return _refused(e)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Model versions (outputs labelled with their provenance)")
    for column in ("model", "version", "role", "kind", "input", "labels", "provenance"):
        table.add_column(column)
    for r in rows:
        role = (
            r["role"]
            + (f" ({r['shadow_fraction']:.0%})" if r["shadow_fraction"] else "")
            + (" [serving config lags: run activate]" if r["serving_lags_pointer"] else "")
        )
        table.add_row(
            r["model"], r["version"], role, r["kind"], f"{r['input_size']} {r['normalization']}", str(r["labels"]), r["provenance"]
        )
    Console().print(table)
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    try:
        pointer = activate(_repo(args), args.model, args.version)
    except (ImportRefused, ConfigurationError) as e:
        return _refused(e)
    print(f"{args.model}: live is v{pointer.live}" + (f" (previous: v{pointer.history[-1]})" if pointer.history else ""))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    try:
        pointer = rollback(_repo(args), args.model)
    except (ImportRefused, ConfigurationError) as e:
        return _refused(e)
    print(f"{args.model}: rolled back, live is v{pointer.live}")
    return 0


def cmd_shadow(args: argparse.Namespace) -> int:
    if bool(args.stop) == bool(args.version):
        return _refused(ValueError("give a version, or --stop"))
    try:
        pointer = set_shadow(_repo(args), args.model, None if args.stop else args.version, args.fraction)
    except (ImportRefused, ConfigurationError) as e:
        return _refused(e)
    print(
        f"{args.model}: "
        + (f"v{pointer.shadow} runs in shadow on {pointer.shadow_fraction:.0%} of studies" if pointer.shadow else "no shadow")
    )
    return 0
