"""Inference stage: run one model on a study's tensor and read its outputs in the result's terms.

Inputs: the model's name and the tensor's location (with the letterbox used to make it).
Outputs: findings (classifier), detections in original-image pixels after non-maximum suppression
(detector), or the report sentences nearest the image embedding, ranked, with what each asserts and
negates (encoder): the store stage picks the impression among them once all three models have answered.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np

from shared.contracts import Detection, Finding, ObjectRef
from shared.errors import ConfigurationError, InferenceFailed
from shared.inference import InferenceBackend
from shared.lake_tables import MODEL_OUTPUTS, model_output_rows, put_rows
from shared.messages import CandidateSentence, InferenceRequest, ModelOutput, ShadowOutput, ShadowRequest, ShadowRun, TensorRef
from shared.priority import to_triton
from shared.model_repository import ModelRepository, ModelSpec
from shared.npy import from_npy
from shared.storage import ObjectStore
from shared.wiring import close_all

# The encoder hands on this many ranked sentences (small next to Step Functions' 256 KB state): enough that
# the store stage still finds the impression's sentences after dropping those the findings contradict.
REPORT_CANDIDATES = 12
# Two reported boxes never overlap more than this (IoU), whatever their labels: the higher score keeps the place.
NMS_IOU = 0.5


class SentenceBank:
    """The report encoder's text side: sentences, their embeddings and tags, in the model's version folder.

    Every entry says which labels (classifier findings, detector lesions) it asserts and which it negates;
    a bank without tags cannot be kept consistent with the findings, so it is refused.
    """

    def __init__(self, path: Path) -> None:
        try:
            bank = json.loads(path.read_text())
            sentences = bank["sentences"]
            self.texts = [s["text"] for s in sentences]
            self.asserts = [list(s["asserts"]) for s in sentences]
            self.negates = [list(s["negates"]) for s in sentences]
            self.embeddings = np.asarray([s["embedding"] for s in sentences], np.float32)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigurationError(f"sentence bank {path} cannot be read: {e}") from e
        except (KeyError, TypeError) as e:
            raise ConfigurationError(
                f"sentence bank {path}: every sentence needs text, asserts, negates and embedding (missing {e})"
            ) from e

    def labels(self) -> set[str]:
        return {label for tags in self.asserts + self.negates for label in tags}

    def nearest(self, embedding: np.ndarray, k: int) -> list[CandidateSentence]:
        similarity = self.embeddings @ embedding
        order = np.argsort(-similarity, kind="stable")[:k]
        return [
            CandidateSentence(
                text=self.texts[i], similarity=round(float(similarity[i]), 4), asserts=self.asserts[i], negates=self.negates[i]
            )
            for i in order
        ]


@dataclass(eq=False)
class Inference:
    """The stage's domain service: a backend, the repository, and what each model kind needs."""

    backend: InferenceBackend
    repository: ModelRepository
    store: ObjectStore
    results_bucket: str = "results"
    lake_bucket: str = "telemetry"
    _shadow_banks: dict[str, SentenceBank] = field(default_factory=dict, init=False, repr=False)

    def close(self) -> None:
        close_all(self.backend, self.store)

    @cached_property
    def sentence_bank(self) -> SentenceBank:
        encoders = [s for s in self.repository.models.values() if s.kind == "encoder"]
        if not encoders:
            raise ConfigurationError("no encoder model in the repository")
        bank = SentenceBank(encoders[0].version_dir / "sentence_bank.json")
        known = {label for s in self.repository.models.values() if s.kind in ("classifier", "detector") for label in s.labels}
        unknown = bank.labels() - known
        if unknown:
            raise ConfigurationError(f"sentence bank of {encoders[0].name} tags labels no model decides on: {', '.join(sorted(unknown))}")
        return bank

    def bank_for(self, spec: ModelSpec) -> SentenceBank:
        """The live encoder's bank (checked against the live labels), or a shadow encoder's own."""
        if spec.version == self.repository.get(spec.name).version:
            return self.sentence_bank
        bank = self._shadow_banks.get(spec.version)
        if bank is None:  # read once per version, like the live bank (a race reads it twice, harmlessly)
            bank = self._shadow_banks[spec.version] = SentenceBank(spec.version_dir / "sentence_bank.json")
        return bank

    def run(self, request: InferenceRequest) -> ModelOutput:
        return self.infer(self.repository.get(request.model), request.tensor, request.study_id, request.priority)

    def run_shadow(self, request: ShadowRequest) -> ShadowOutput:
        """Every shadow candidate whose share holds this study, on its tensor: its output stored apart
        (results/shadow/... and the lake's role=shadow rows), never in the study's result."""
        candidates = self.repository.shadows_for(request.study_id)
        if not candidates:
            return ShadowOutput(study_id=request.study_id, skipped="no shadow candidate runs on this study")
        runs, rows, bytes_in = [], [], 0
        now = datetime.now(UTC)
        for spec in candidates:
            tensor = request.tensors.get(spec.tensor_key)
            if tensor is None:
                raise InferenceFailed(f"no tensor {spec.tensor_key} for the shadow of {spec.name}", study_id=request.study_id)
            started = time.perf_counter()
            output = self.infer(spec, tensor, request.study_id)
            latency_ms = round((time.perf_counter() - started) * 1000, 3)
            bytes_in += output.bytes_in
            key = f"shadow/{request.study_id}/{spec.name}/{spec.version}.json"
            self.store.put_bytes(self.results_bucket, key, output.model_dump_json(indent=2).encode(), content_type="application/json")
            if output.model is None:  # infer() always names it; a guard for the type, not a case
                raise InferenceFailed(f"shadow output of {spec.name} names no model", study_id=request.study_id)
            runs.append(
                ShadowRun(model=output.model, kind=spec.kind, latency_ms=latency_ms, output=ObjectRef(bucket=self.results_bucket, key=key))
            )
            rows += model_output_rows(output, role="shadow", execution_id=request.execution_id, time=now, latency_ms=latency_ms)
        lake = put_rows(self.store, self.lake_bucket, MODEL_OUTPUTS, "shadow", now, request.study_id, request.execution_id, rows)
        return ShadowOutput(
            study_id=request.study_id,
            shadow=runs,
            lake=ObjectRef(bucket=self.lake_bucket, key=lake.key) if lake else None,
            bytes_in=bytes_in,
        )

    def infer(self, spec: ModelSpec, tensor_ref: TensorRef, study_id: str, priority: str = "routine") -> ModelOutput:
        """One model version on one tensor. A shadow run keeps the routine priority: it never queues ahead of live work."""
        raw = self.store.get_bytes(tensor_ref.bucket, tensor_ref.key)
        tensor = from_npy(raw)
        expected = [1, 1, spec.input_size, spec.input_size]
        if list(tensor.shape) != expected:
            raise InferenceFailed(f"tensor for {spec.name} has shape {list(tensor.shape)}, model wants {expected}", study_id=study_id)
        outputs = self.backend.infer(spec.name, {spec.input_name: tensor}, priority=to_triton(priority), version=spec.version)
        output = ModelOutput(
            study_id=study_id,
            kind=spec.kind,
            model=spec.ref,
            bytes_in=len(raw),
            labels=list(spec.labels) if spec.kind != "encoder" else None,
        )
        try:
            if spec.kind == "classifier":
                output.findings = read_findings(spec, outputs)
            elif spec.kind == "detector":
                output.detections = read_detections(spec, outputs, tensor_ref)
            else:
                output.candidates = self.bank_for(spec).nearest(read_embedding(outputs), REPORT_CANDIDATES)
        except (KeyError, IndexError, ValueError) as e:
            raise InferenceFailed(
                f"model {spec.name} returned outputs that do not fit docs/models.md ({type(e).__name__}: {e})", study_id=study_id
            ) from e
        return output


def read_findings(spec: ModelSpec, outputs: dict[str, np.ndarray]) -> list[Finding]:
    probabilities = outputs["probabilities"][0]
    if len(probabilities) != len(spec.labels):
        raise ValueError(f"{len(probabilities)} probabilities for {len(spec.labels)} labels")
    findings = []
    for label, p in zip(spec.labels, probabilities.tolist()):
        if not 0.0 <= p <= 1.0 or p != p:
            raise ValueError(f"probability {p} for {label} is outside [0, 1]")
        threshold = spec.thresholds.get(label, 0.5)
        findings.append(
            Finding(
                label=label,
                probability=round(p, 4),
                threshold=threshold,
                positive=p >= threshold,
                high_specificity_threshold=spec.high_specificity.get(label),
            )
        )
    return findings


def read_detections(spec: ModelSpec, outputs: dict[str, np.ndarray], tensor: TensorRef) -> list[Detection]:
    boxes, scores, classes = outputs["boxes"][0], outputs["scores"][0], outputs["classes"][0]
    threshold = spec.thresholds.get("score_threshold", 0.5)
    lb, w, h = tensor.letterbox, tensor.original_width, tensor.original_height
    detections = []
    for box, score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
        if score < threshold:
            continue
        # Model-input pixels -> original pixels: undo the padding, then the scale.
        x1, x2 = ((np.clip([box[0], box[2]], 0, None) - lb.pad_x) / lb.scale).clip(0, w).tolist()
        y1, y2 = ((np.clip([box[1], box[3]], 0, None) - lb.pad_y) / lb.scale).clip(0, h).tolist()
        if x2 <= x1 or y2 <= y1:
            continue
        detections.append(
            Detection(
                label=spec.labels[int(cls)], score=round(min(score, 1.0), 4), box=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))
            )
        )
    return suppress_overlaps(detections, NMS_IOU)


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def suppress_overlaps(detections: list[Detection], max_iou: float) -> list[Detection]:
    """Greedy non-maximum suppression across labels, on the boxes as reported (original pixels, rounded).

    Highest score first; a box overlapping a kept one by IoU > max_iou is dropped, of the same label
    (class-aware NMS) or another (cross-class: the detector's two heads firing on one lesion is one
    finding, and a reader shown two labels on one place cannot tell which to believe). Ties keep model order.
    At most 16 boxes: the pairwise loop costs microseconds and needs no OpenCV in the inference image.
    """
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.score):
        if all(box_iou(d.box, k.box) <= max_iou for k in kept):
            kept.append(d)
    return kept


def read_embedding(outputs: dict[str, np.ndarray]) -> np.ndarray:
    embedding = outputs["embedding"][0].astype(np.float32)
    norm = float(np.linalg.norm(embedding))
    if not norm > 0:
        raise ValueError("zero embedding")
    return embedding / norm
