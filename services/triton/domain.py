"""Inference stage: run one model on a study's tensor and read its outputs in the result's terms.

Inputs: the model's name and the tensor's location (with the letterbox used to make it).
Outputs: findings (classifier), detections in original-image pixels (detector), or the sentences
of a draft report retrieved by the image embedding (encoder).
"""
from __future__ import annotations

import io
import json
from functools import cached_property
from pathlib import Path

import numpy as np

from shared.contracts import Detection, Finding, ReportSentence
from shared.errors import ConfigurationError, InferenceFailed
from shared.inference import InferenceBackend
from shared.messages import InferenceRequest, ModelOutput, TensorRef
from shared.model_repository import ModelRepository, ModelSpec
from shared.storage import ObjectStore
from shared.wiring import close_all

REPORT_SENTENCES = 3



class SentenceBank:
    """The report encoder's text side: sentences and their embeddings, in the model's version folder."""

    def __init__(self, path: Path) -> None:
        try:
            bank = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigurationError(f"sentence bank {path} cannot be read: {e}") from e
        self.texts = [s["text"] for s in bank["sentences"]]
        self.embeddings = np.asarray([s["embedding"] for s in bank["sentences"]], np.float32)

    def nearest(self, embedding: np.ndarray, k: int) -> list[ReportSentence]:
        similarity = self.embeddings @ embedding
        order = np.argsort(-similarity)[:k]
        return [ReportSentence(text=self.texts[i], similarity=round(float(similarity[i]), 4)) for i in order]


class Inference:
    """The stage's domain service: a backend, the repository, and what each model kind needs."""

    def __init__(self, backend: InferenceBackend, repository: ModelRepository, store: ObjectStore) -> None:
        self.backend = backend
        self.repository = repository
        self.store = store

    def close(self) -> None:
        close_all(self.backend, self.store)

    @cached_property
    def sentence_bank(self) -> SentenceBank:
        encoders = [s for s in self.repository.models.values() if s.kind == "encoder"]
        if not encoders:
            raise ConfigurationError("no encoder model in the repository")
        return SentenceBank(encoders[0].version_dir / "sentence_bank.json")

    def run(self, request: InferenceRequest) -> ModelOutput:
        spec = self.repository.get(request.model)
        raw = self.store.get_bytes(request.tensor.bucket, request.tensor.key)
        tensor = np.load(io.BytesIO(raw), allow_pickle=False)
        expected = [1, 1, spec.input_size, spec.input_size]
        if list(tensor.shape) != expected:
            raise InferenceFailed(f"tensor for {spec.name} has shape {list(tensor.shape)}, model wants {expected}", study_id=request.study_id)
        outputs = self.backend.infer(spec.name, {spec.input_name: tensor})
        output = ModelOutput(study_id=request.study_id, kind=spec.kind, model=spec.ref, bytes_in=len(raw))
        try:
            if spec.kind == "classifier":
                output.findings = read_findings(spec, outputs)
            elif spec.kind == "detector":
                output.detections = read_detections(spec, outputs, request.tensor)
            else:
                output.impression = self.sentence_bank.nearest(read_embedding(outputs), REPORT_SENTENCES)
        except (KeyError, IndexError, ValueError) as e:
            raise InferenceFailed(f"model {spec.name} returned outputs that do not fit docs/models.md ({type(e).__name__}: {e})", study_id=request.study_id) from e
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
        findings.append(Finding(label=label, probability=round(p, 4), threshold=threshold, positive=p >= threshold))
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
        detections.append(Detection(label=spec.labels[int(cls)], score=round(min(score, 1.0), 4), box=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))))
    return detections


def read_embedding(outputs: dict[str, np.ndarray]) -> np.ndarray:
    embedding = outputs["embedding"][0].astype(np.float32)
    norm = float(np.linalg.norm(embedding))
    if not norm > 0:
        raise ValueError("zero embedding")
    return embedding / norm
