"""Reads a Triton model repository: each model's config.pbtxt, labels and thresholds.

Everything the pipeline knows about a model (input size, normalisation, how to read its outputs)
comes from here, so swapping weights means swapping files, not code. See docs/models.md.
"""

from __future__ import annotations

from typing import Literal

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from google.protobuf import text_format

from shared.contracts import ModelRef
from shared.errors import ConfigurationError

ModelKind = Literal["classifier", "detector", "encoder"]
KINDS: tuple[ModelKind, ...] = ("classifier", "detector", "encoder")
NORMALIZATIONS = ("unit", "xrv")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    folder: Path
    kind: ModelKind
    normalization: str
    input_name: str
    input_size: int
    outputs: tuple[str, ...]
    max_batch_size: int
    provenance: str
    labels: tuple[str, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, provenance=self.provenance)

    @property
    def version_dir(self) -> Path:
        return self.folder / self.version


def parse_config(path: Path):
    """A config.pbtxt (or configs/<name>.pbtxt) as Triton's ModelConfig message; ConfigurationError naming the file."""
    # Imported here: the message type comes with tritonclient, which only prepare and triton install.
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as e:
        raise ConfigurationError(f"cannot read {path}: {e}") from e


def load_model_spec(folder: Path) -> ModelSpec:
    config = parse_config(folder / "config.pbtxt")
    name = config.name or folder.name
    params = {k: v.string_value for k, v in config.parameters.items()}
    kind, normalization = params.get("radstream.kind"), params.get("radstream.normalization")
    if kind not in KINDS or normalization not in NORMALIZATIONS:
        raise ConfigurationError(
            f"model {name}: config.pbtxt needs parameters radstream.kind in {KINDS} and "
            f"radstream.normalization in {NORMALIZATIONS} (got {kind!r}, {normalization!r})"
        )
    if len(config.input) != 1:
        raise ConfigurationError(f"model {name}: expected one input, found {len(config.input)}")
    dims = list(config.input[0].dims)
    if len(dims) != 3 or dims[0] != 1 or dims[1] != dims[2] or dims[1] <= 0:
        raise ConfigurationError(f"model {name}: input dims must be [1, S, S], found {dims}")
    versions = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    if not versions:
        raise ConfigurationError(f"model {name}: no version folder in {folder}")
    labels_file = folder / "labels.txt"
    labels = tuple(line.strip() for line in labels_file.read_text().splitlines() if line.strip()) if labels_file.exists() else ()
    thresholds_file = folder / "thresholds.json"
    thresholds = json.loads(thresholds_file.read_text()) if thresholds_file.exists() else {}
    return ModelSpec(
        name=name,
        version=versions[-1],
        folder=folder,
        kind=kind,
        normalization=normalization,
        input_name=config.input[0].name,
        input_size=dims[1],
        outputs=tuple(o.name for o in config.output),
        max_batch_size=config.max_batch_size,
        provenance=params.get("radstream.provenance", "unspecified"),
        labels=labels,
        thresholds={k: float(v) for k, v in thresholds.items()},
    )


class ModelRepository:
    """The model repository on disk, read once (at cold start) and then held."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigurationError(f"model repository {self.root} does not exist")

    @cached_property
    def models(self) -> dict[str, ModelSpec]:
        folders = sorted(p for p in self.root.iterdir() if (p / "config.pbtxt").is_file())
        if not folders:
            raise ConfigurationError(f"model repository {self.root} holds no model (no */config.pbtxt)")
        return {spec.name: spec for spec in map(load_model_spec, folders)}

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ConfigurationError(f"model {name!r} is not in {self.root} (have: {', '.join(self.models)})") from None
