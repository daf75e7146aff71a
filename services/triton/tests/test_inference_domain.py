"""Inference stage: reading each model kind's outputs, boxes back to original pixels, errors by type."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from services.triton.domain import Inference, InferenceRequest, SentenceBank
from shared.errors import InferenceFailed, InferenceUnavailable
from shared.messages import Letterbox, TensorRef
from shared.model_repository import ModelRepository


class FakeBackend:
    """Answers with fixed outputs per model, or fails the way it is told to."""

    def __init__(self, outputs: dict[str, dict[str, np.ndarray]], fail_with: Exception | None = None) -> None:
        self.outputs = outputs
        self.fail_with = fail_with
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def infer(self, model_name, inputs):
        self.calls.append((model_name, next(iter(inputs.values())).shape))
        if self.fail_with:
            raise self.fail_with
        return self.outputs[model_name]


def put_tensor(store, model: str, size: int, letterbox: Letterbox, width: int, height: int) -> TensorRef:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 1, size, size), np.float32))
    key = f"tensors/s1/{model}.npy"
    store.put_bytes("artifacts", key, buffer.getvalue())
    return TensorRef(bucket="artifacts", key=key, shape=[1, 1, size, size], letterbox=letterbox, original_width=width, original_height=height)


@pytest.fixture
def repository(config_only_repository):
    bank = {"dim": 3, "sentences": [
        {"text": "Heart size is enlarged.", "embedding": [1, 0, 0]},
        {"text": "No pleural effusion.", "embedding": [0, 1, 0]},
        {"text": "Small right pleural effusion.", "embedding": [0, 0.6, 0.8]},
        {"text": "No pulmonary edema.", "embedding": [0, 0, 1]},
    ]}
    (config_only_repository / "report_encoder" / "1" / "sentence_bank.json").write_text(json.dumps(bank))
    return ModelRepository(config_only_repository)


def test_classifier_findings_use_per_finding_thresholds(store, repository):
    backend = FakeBackend({"chest_xray_classifier": {"probabilities": np.array([[0.45, 0.2, 0.9, 0.55, 0.31]], np.float32)}})
    tensor = put_tensor(store, "chest_xray_classifier", 224, Letterbox(scale=0.5, pad_x=0, pad_y=0), 448, 448)
    out = Inference(backend, repository, store).run(InferenceRequest(model="chest_xray_classifier", study_id="s1", tensor=tensor))
    assert [(f.label, f.positive) for f in out.findings] == [
        ("Atelectasis", True), ("Cardiomegaly", False), ("Consolidation", True), ("Edema", False), ("Pleural Effusion", True),
    ]
    assert out.findings[3].threshold == 0.6
    assert out.model.name == "chest_xray_classifier" and out.model.provenance == "test fixture"
    assert backend.calls == [("chest_xray_classifier", (1, 1, 224, 224))]


def test_detections_are_mapped_back_to_original_pixels(store, repository):
    boxes = np.zeros((1, 16, 4), np.float32)
    boxes[0, 0] = [64, 80, 128, 144]
    boxes[0, 1] = [10, 10, 20, 20]
    scores = np.zeros((1, 16), np.float32)
    scores[0, :2] = [0.9, 0.3]  # the second is under the 0.5 score threshold
    classes = np.zeros((1, 16), np.int32)
    classes[0, 0] = 1
    backend = FakeBackend({"anomaly_detector": {"boxes": boxes, "scores": scores, "classes": classes}})
    # A 2000x1000 image letterboxed into 256: scale 0.128, content 256x128, padded 64 rows above.
    tensor = put_tensor(store, "anomaly_detector", 256, Letterbox(scale=0.128, pad_x=0, pad_y=64), 2000, 1000)
    out = Inference(backend, repository, store).run(InferenceRequest(model="anomaly_detector", study_id="s1", tensor=tensor))
    assert len(out.detections) == 1
    detection = out.detections[0]
    assert detection.label == "focal_opacity" and detection.score == pytest.approx(0.9)
    assert detection.box == pytest.approx((500.0, 125.0, 1000.0, 625.0))


def test_encoder_retrieves_the_nearest_sentences(store, repository):
    backend = FakeBackend({"report_encoder": {"embedding": np.array([[0, 2, 2.6]], np.float32)}})
    tensor = put_tensor(store, "report_encoder", 224, Letterbox(scale=1, pad_x=0, pad_y=0), 224, 224)
    out = Inference(backend, repository, store).run(InferenceRequest(model="report_encoder", study_id="s1", tensor=tensor))
    assert [s.text for s in out.impression] == ["Small right pleural effusion.", "No pulmonary edema.", "No pleural effusion."]
    assert out.impression[0].similarity > out.impression[1].similarity


def test_unavailable_server_stays_retryable(store, repository):
    backend = FakeBackend({}, fail_with=InferenceUnavailable("triton not ready"))
    tensor = put_tensor(store, "report_encoder", 224, Letterbox(scale=1, pad_x=0, pad_y=0), 224, 224)
    with pytest.raises(InferenceUnavailable) as err:
        Inference(backend, repository, store).run(InferenceRequest(model="report_encoder", study_id="s1", tensor=tensor))
    assert err.value.retryable


def test_outputs_that_break_the_contract_are_permanent(store, repository):
    backend = FakeBackend({"chest_xray_classifier": {"probabilities": np.array([[0.1, 0.2]], np.float32)}})
    tensor = put_tensor(store, "chest_xray_classifier", 224, Letterbox(scale=1, pad_x=0, pad_y=0), 224, 224)
    with pytest.raises(InferenceFailed, match="2 probabilities for 5 labels"):
        Inference(backend, repository, store).run(InferenceRequest(model="chest_xray_classifier", study_id="s1", tensor=tensor))


def test_wrong_tensor_shape_is_refused_before_inference(store, repository):
    backend = FakeBackend({})
    tensor = put_tensor(store, "chest_xray_classifier", 256, Letterbox(scale=1, pad_x=0, pad_y=0), 256, 256)
    with pytest.raises(InferenceFailed, match="model wants \\[1, 1, 224, 224\\]"):
        Inference(backend, repository, store).run(InferenceRequest(model="chest_xray_classifier", study_id="s1", tensor=tensor))
    assert backend.calls == []


def test_sentence_bank_orders_by_cosine(tmp_path):
    path = tmp_path / "bank.json"
    path.write_text(json.dumps({"dim": 2, "sentences": [{"text": "a", "embedding": [1, 0]}, {"text": "b", "embedding": [0, 1]}]}))
    assert [s.text for s in SentenceBank(path).nearest(np.array([0.1, 0.99], np.float32), 2)] == ["b", "a"]
