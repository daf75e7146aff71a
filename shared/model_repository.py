"""Reads a Triton model repository: each model's config.pbtxt, labels and thresholds, and which version is live.

Everything the pipeline knows about a model (input size, normalisation, how to read its outputs)
comes from here, so swapping weights means swapping files, not code. See docs/models.md.

A model folder may hold several versions, each imported with its own files (`<version>/config.pbtxt`,
`labels.txt`, `thresholds.json`, `MODEL_CARD.md`), and a pointer `live.json` that names the live version and an
optional shadow candidate (docs/model-lifecycle.md). The pointer is the one thing activation and rollback replace
(atomically): what the embedded runtime infers with, and what the serving config's version_policy serves, follow it.
A folder without a pointer is the original layout: the highest version, with the model folder's own files.
"""

from __future__ import annotations

from typing import Literal

import hashlib
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
POINTER = "live.json"  # <model>/live.json: {"live": "2", "shadow": {"version": "3", "fraction": 0.5} | null, "history": [...]}


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
    # The card's high-specificity operating points per label (metrics.json `high_specificity.points`), where it has them.
    high_specificity: dict[str, float] = field(default_factory=dict)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, provenance=self.provenance)

    @property
    def version_dir(self) -> Path:
        return self.folder / self.version

    @property
    def tensor_key(self) -> str:
        """The key of this version's tensor in PreparedTensors.tensors: the model's name for the live version."""
        return self.name


@dataclass(frozen=True)
class Pointer:
    """A model's live.json: the live version, the shadow candidate and the share of studies it sees, past live versions."""

    live: str
    shadow: str | None = None
    shadow_fraction: float = 0.0
    history: tuple[str, ...] = ()

    def to_json(self) -> dict:
        shadow = {"version": self.shadow, "fraction": self.shadow_fraction} if self.shadow else None
        return {"live": self.live, "shadow": shadow, "history": list(self.history)}


def read_pointer(folder: Path) -> Pointer | None:
    path = Path(folder) / POINTER
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        shadow = raw.get("shadow") or None
        pointer = Pointer(
            live=str(raw["live"]),
            shadow=str(shadow["version"]) if shadow else None,
            shadow_fraction=float(shadow["fraction"]) if shadow else 0.0,
            history=tuple(str(v) for v in raw.get("history", [])),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigurationError(
            f"{path} cannot be read ({type(e).__name__}): it needs live, and shadow as null or version and fraction"
        ) from e
    if not 0.0 <= pointer.shadow_fraction <= 1.0:
        raise ConfigurationError(f"{path}: shadow fraction must be within [0, 1]")
    return pointer


def versions_in(folder: Path) -> list[str]:
    return sorted((p.name for p in Path(folder).iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def shadow_selected(study_id: str, fraction: float) -> bool:
    """Whether a study is in a shadow's share: decided by the study id alone, so a re-run picks the same studies."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    draw = int.from_bytes(hashlib.sha256(study_id.encode()).digest()[:8], "big") / 2**64
    return draw < fraction


def shadow_tensor_key(name: str, version: str) -> str:
    """PreparedTensors.tensors key of a shadow candidate's own tensor (its input size or normalisation differs from live's)."""
    return f"{name}@{version}"


def parse_config(path: Path):
    """A config.pbtxt (or configs/<name>.pbtxt) as Triton's ModelConfig message; ConfigurationError naming the file."""
    # Imported here: the message type comes with tritonclient, which only prepare and triton install.
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as e:
        raise ConfigurationError(f"cannot read {path}: {e}") from e


def load_model_spec(folder: Path, version: str | None = None) -> ModelSpec:
    """The spec of one version of a model (default: the live one). A version imported with its own files
    (`<version>/config.pbtxt`) is read from them; otherwise from the model folder's."""
    versions = versions_in(folder)
    if not versions:
        raise ConfigurationError(f"model {folder.name}: no version folder in {folder}")
    if version is None:
        pointer = read_pointer(folder)
        version = pointer.live if pointer else versions[-1]
    if version not in versions:
        raise ConfigurationError(f"model {folder.name}: version {version} has no folder in {folder}")
    own = folder / version
    source = own if (own / "config.pbtxt").is_file() else folder
    config = parse_config(source / "config.pbtxt")
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
    labels_file = source / "labels.txt"
    labels = tuple(line.strip() for line in labels_file.read_text().splitlines() if line.strip()) if labels_file.exists() else ()
    thresholds_file = source / "thresholds.json"
    thresholds = json.loads(thresholds_file.read_text()) if thresholds_file.exists() else {}
    metrics_file = source / "metrics.json"
    points = (json.loads(metrics_file.read_text()).get("high_specificity") or {}).get("points", {}) if metrics_file.exists() else {}
    return ModelSpec(
        name=name,
        version=version,
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
        high_specificity={label: float(point["threshold"]) for label, point in points.items() if label in labels},
    )


@dataclass(frozen=True)
class ShadowSpec(ModelSpec):
    """A shadow candidate: its tensor is live's when input size and normalisation match, else its own (see prepare)."""

    @property
    def tensor_key(self) -> str:
        return shadow_tensor_key(self.name, self.version)


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

    @cached_property
    def shadows(self) -> dict[str, tuple[ModelSpec, float]]:
        """Each model's shadow candidate (its spec, read from its own files) and the share of studies it runs on."""
        out: dict[str, tuple[ModelSpec, float]] = {}
        for name, live in self.models.items():
            pointer = read_pointer(live.folder)
            if pointer and pointer.shadow and pointer.shadow != live.version and pointer.shadow_fraction > 0:
                spec = load_model_spec(live.folder, pointer.shadow)
                if spec.kind != live.kind:
                    raise ConfigurationError(f"model {name}: shadow version {spec.version} is a {spec.kind}, live is a {live.kind}")
                out[name] = (ShadowSpec(**{**spec.__dict__}), pointer.shadow_fraction)
        return out

    def shadows_for(self, study_id: str) -> list[ModelSpec]:
        """The shadow candidates that run on this study (deterministic by study id)."""
        return [spec for spec, fraction in self.shadows.values() if shadow_selected(study_id, fraction)]

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ConfigurationError(f"model {name!r} is not in {self.root} (have: {', '.join(self.models)})") from None
