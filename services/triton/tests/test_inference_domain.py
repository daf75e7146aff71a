"""Inference stage: reading each model kind's outputs, boxes back to original pixels, errors by type."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from services.triton.domain import Inference, InferenceRequest, SentenceBank, box_iou
from shared.errors import ConfigurationError, InferenceFailed, InferenceUnavailable
from shared.messages import Letterbox, TensorRef
from shared.model_repository import ModelRepository


class FakeBackend:
    """Answers with fixed outputs per model, or fails the way it is told to."""

    def __init__(self, outputs: dict[str, dict[str, np.ndarray]], fail_with: Exception | None = None) -> None:
        self.outputs = outputs
        self.fail_with = fail_with
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.priorities: list[int] = []

    def infer(self, model_name, inputs, priority=0, version=None):
        self.calls.append((model_name, next(iter(inputs.values())).shape))
        self.priorities.append(priority)
        if self.fail_with:
            raise self.fail_with
        return self.outputs[model_name]


def put_tensor(store, model: str, size: int, letterbox: Letterbox, width: int, height: int) -> TensorRef:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 1, size, size), np.float32))
    key = f"tensors/s1/{model}.npy"
    store.put_bytes("artifacts", key, buffer.getvalue())
    return TensorRef(
        bucket="artifacts", key=key, shape=[1, 1, size, size], letterbox=letterbox, original_width=width, original_height=height
    )


@pytest.fixture
def repository(config_only_repository):
    bank = {
        "dim": 3,
        "sentences": [
            {"text": "Heart size is enlarged.", "asserts": ["Cardiomegaly"], "negates": [], "embedding": [1, 0, 0]},
            {"text": "No pleural effusion.", "asserts": [], "negates": ["Pleural Effusion"], "embedding": [0, 1, 0]},
            {"text": "Small right pleural effusion.", "asserts": ["Pleural Effusion"], "negates": [], "embedding": [0, 0.6, 0.8]},
            {"text": "No pulmonary edema.", "asserts": [], "negates": ["Edema"], "embedding": [0, 0, 1]},
        ],
    }
    (config_only_repository / "report_encoder" / "1" / "sentence_bank.json").write_text(json.dumps(bank))
    return ModelRepository(config_only_repository)


def test_classifier_findings_use_per_finding_thresholds(store, repository):
    backend = FakeBackend({"chest_xray_classifier": {"probabilities": np.array([[0.45, 0.2, 0.9, 0.55, 0.31]], np.float32)}})
    tensor = put_tensor(store, "chest_xray_classifier", 224, Letterbox(scale=0.5, pad_x=0, pad_y=0), 448, 448)
    out = Inference(backend, repository, store).run(InferenceRequest(model="chest_xray_classifier", study_id="s1", tensor=tensor))
    assert [(f.label, f.positive) for f in out.findings] == [
        ("Atelectasis", True),
        ("Cardiomegaly", False),
        ("Consolidation", True),
        ("Edema", False),
        ("Pleural Effusion", True),
    ]
    assert out.findings[3].threshold == 0.6
    assert out.model.name == "chest_xray_classifier" and out.model.provenance == "test fixture"
    assert backend.calls == [("chest_xray_classifier", (1, 1, 224, 224))]


def test_classifier_findings_carry_their_versions_high_specificity_point(store, config_only_repository):
    """Each finding names the model card's high-specificity operating point of the version that produced it (metrics.json),
    so a critical-finding rule can follow a newly activated version; a label the card gives no point has none."""
    (config_only_repository / "chest_xray_classifier" / "metrics.json").write_text(
        json.dumps(
            {
                "high_specificity": {
                    "points": {"Edema": {"threshold": 0.71}, "Pleural Effusion": {"threshold": 0.12}, "Other": {"threshold": 0.2}}
                }
            }
        )
    )
    backend = FakeBackend({"chest_xray_classifier": {"probabilities": np.array([[0.45, 0.2, 0.9, 0.55, 0.31]], np.float32)}})
    tensor = put_tensor(store, "chest_xray_classifier", 224, Letterbox(scale=0.5, pad_x=0, pad_y=0), 448, 448)
    out = Inference(backend, ModelRepository(config_only_repository), store).run(
        InferenceRequest(model="chest_xray_classifier", study_id="s1", tensor=tensor)
    )
    points = {f.label: f.high_specificity_threshold for f in out.findings}
    assert points == {"Atelectasis": None, "Cardiomegaly": None, "Consolidation": None, "Edema": 0.71, "Pleural Effusion": 0.12}
    assert [f.positive for f in out.findings] == [True, False, True, False, True]  # still decided at `threshold`


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
    # All of them, ranked (the store stage picks the impression once the findings are known), with their tags.
    assert [s.text for s in out.candidates] == [
        "Small right pleural effusion.",
        "No pulmonary edema.",
        "No pleural effusion.",
        "Heart size is enlarged.",
    ]
    assert out.candidates[0].similarity > out.candidates[1].similarity
    assert (out.candidates[0].asserts, out.candidates[2].negates) == (["Pleural Effusion"], ["Pleural Effusion"])


def test_a_sentence_bank_without_tags_is_refused(store, repository):
    path = repository.root / "report_encoder" / "1" / "sentence_bank.json"
    path.write_text(json.dumps({"dim": 3, "sentences": [{"text": "No focal consolidation.", "embedding": [1, 0, 0]}]}))
    backend = FakeBackend({"report_encoder": {"embedding": np.array([[1, 0, 0]], np.float32)}})
    tensor = put_tensor(store, "report_encoder", 224, Letterbox(scale=1, pad_x=0, pad_y=0), 224, 224)
    with pytest.raises(ConfigurationError, match="asserts, negates"):
        Inference(backend, repository, store).run(InferenceRequest(model="report_encoder", study_id="s1", tensor=tensor))


def test_a_sentence_bank_tagging_a_label_no_model_decides_is_refused(store, repository):
    path = repository.root / "report_encoder" / "1" / "sentence_bank.json"
    path.write_text(
        json.dumps(
            {"dim": 3, "sentences": [{"text": "No pneumothorax.", "asserts": [], "negates": ["Pneumothorax"], "embedding": [1, 0, 0]}]}
        )
    )
    backend = FakeBackend({"report_encoder": {"embedding": np.array([[1, 0, 0]], np.float32)}})
    tensor = put_tensor(store, "report_encoder", 224, Letterbox(scale=1, pad_x=0, pad_y=0), 224, 224)
    with pytest.raises(ConfigurationError, match="Pneumothorax"):
        Inference(backend, repository, store).run(InferenceRequest(model="report_encoder", study_id="s1", tensor=tensor))


def detector_outputs(rows: list[tuple[list[float], float, int]]) -> dict[str, np.ndarray]:
    boxes, scores, classes = np.zeros((1, 16, 4), np.float32), np.zeros((1, 16), np.float32), np.zeros((1, 16), np.int32)
    for i, (box, score, cls) in enumerate(rows):
        boxes[0, i], scores[0, i], classes[0, i] = box, score, cls
    return {"boxes": boxes, "scores": scores, "classes": classes}


def test_overlapping_boxes_are_suppressed_within_and_across_labels(store, repository):
    rows = [
        ([100, 100, 140, 140], 0.9, 0),  # nodule_mass, kept
        ([101, 101, 141, 141], 0.8, 1),  # focal_opacity on the same place (IoU ~0.9): cross-class duplicate, dropped
        ([102, 100, 142, 140], 0.7, 0),  # nodule_mass again (IoU ~0.9): class-aware duplicate, dropped
        ([120, 100, 160, 140], 0.85, 1),  # half overlapping (IoU 1/3): a second lesion, kept
        ([10, 10, 30, 30], 0.6, 1),  # elsewhere, kept
    ]
    backend = FakeBackend({"anomaly_detector": detector_outputs(rows)})
    tensor = put_tensor(store, "anomaly_detector", 256, Letterbox(scale=1, pad_x=0, pad_y=0), 256, 256)
    out = Inference(backend, repository, store).run(InferenceRequest(model="anomaly_detector", study_id="s1", tensor=tensor))
    assert [(d.label, d.score) for d in out.detections] == [("nodule_mass", 0.9), ("focal_opacity", 0.85), ("focal_opacity", 0.6)]
    assert out.labels == ["nodule_mass", "focal_opacity"]
    boxes = [d.box for d in out.detections]
    assert all(box_iou(a, b) <= 0.5 for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_box_iou_is_intersection_over_union():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0


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
    path.write_text(
        json.dumps(
            {
                "dim": 2,
                "sentences": [
                    {"text": "a", "asserts": [], "negates": [], "embedding": [1, 0]},
                    {"text": "b", "asserts": [], "negates": [], "embedding": [0, 1]},
                ],
            }
        )
    )
    assert [s.text for s in SentenceBank(path).nearest(np.array([0.1, 0.99], np.float32), 2)] == ["b", "a"]


@pytest.mark.parametrize("level,expected", [("stat", 1), ("urgent", 2), ("routine", 0)])
def test_the_studys_priority_is_the_requests_triton_priority(store, repository, level, expected):
    backend = FakeBackend({"chest_xray_classifier": {"probabilities": np.array([[0.45, 0.2, 0.9, 0.55, 0.31]], np.float32)}})
    tensor = put_tensor(store, "chest_xray_classifier", 224, Letterbox(scale=0.5, pad_x=0, pad_y=0), 448, 448)
    request = InferenceRequest(model="chest_xray_classifier", study_id="s1", tensor=tensor, priority=level)
    Inference(backend, repository, store).run(request)
    assert backend.priorities == [expected]
