"""A Triton model repository for the tests: the real one when trained, else tiny ONNX models on the same contracts.

The two fixtures are re-exported by the conftest of each test folder that serves models (services/triton/tests,
tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REAL_REPOSITORY = Path(__file__).resolve().parents[1] / "services" / "triton" / "model_repository"
MODEL_NAMES = ("chest_xray_classifier", "anomaly_detector", "report_encoder")

CLASSIFIER_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
DETECTOR_LABELS = ["nodule_mass", "focal_opacity"]


def real_repository_complete(root: Path = REAL_REPOSITORY) -> bool:
    return all((root / m / "config.pbtxt").is_file() and (root / m / "1" / "model.onnx").is_file() for m in MODEL_NAMES)


def _config(
    name: str, size: int, outputs: list[tuple[str, str, list[int]]], *, normalization: str, kind: str, max_queue_delay_us: int = 2000
) -> str:
    outs = ",\n".join(f'  {{ name: "{o}" data_type: {t} dims: [ {", ".join(map(str, d))} ] }}' for o, t, d in outputs)
    return f'''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {{ name: "image" data_type: TYPE_FP32 dims: [ 1, {size}, {size} ] }}
]
output [
{outs}
]
dynamic_batching {{
  preferred_batch_size: [ 4, 8, 16 ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "radstream.normalization" value {{ string_value: "{normalization}" }} }}
parameters {{ key: "radstream.kind" value {{ string_value: "{kind}" }} }}
'''


def _save(model, folder: Path) -> None:
    import onnx

    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, folder / "1" / "model.onnx")


def build_tiny_repository(root: Path, seed: int = 0) -> Path:
    """Three small ONNX models with the names, tensors, dtypes and configs of docs/models.md."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    opset = [helper.make_opsetid("", 17)]

    def weight(name: str, shape: tuple[int, ...], scale: float = 0.05):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    def pooled(size: int, cell: int) -> list:
        # image [N,1,S,S] -> features [N, (S/cell)^2]: cheap, and every pixel counts.
        return [
            helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        ]

    def image_input(size: int):
        return helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])

    # chest_xray_classifier: [N,1,224,224] xrv range -> probabilities [N,5]
    nodes = pooled(224, 16) + [
        helper.make_node("Mul", ["features", "inv_scale"], ["scaled"]),
        helper.make_node("Gemm", ["scaled", "W", "b"], ["logits"], transB=1),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chest_xray_classifier",
        [image_input(224)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 5])],
        [weight("W", (5, 196)), weight("b", (5,)), numpy_helper.from_array(np.array([1 / 1024], np.float32), "inv_scale")],
    )
    folder = root / "chest_xray_classifier"
    _save(helper.make_model(graph, opset_imports=opset), folder)
    (folder / "config.pbtxt").write_text(
        _config("chest_xray_classifier", 224, [("probabilities", "TYPE_FP32", [5])], normalization="xrv", kind="classifier")
    )
    (folder / "labels.txt").write_text("\n".join(CLASSIFIER_LABELS) + "\n")
    (folder / "thresholds.json").write_text(json.dumps({label: 0.5 for label in CLASSIFIER_LABELS}))

    # anomaly_detector: [N,1,256,256] unit range -> boxes [N,16,4], scores [N,16], classes INT32 [N,16]
    nodes = pooled(256, 16) + [
        helper.make_node("Gemm", ["features", "Ws"], ["score_logits"], transB=1),
        helper.make_node("Sigmoid", ["score_logits"], ["raw_scores"]),
        helper.make_node("TopK", ["raw_scores", "k"], ["scores", "order"], axis=1, largest=1, sorted=1),
        helper.make_node("Mod", ["order", "two"], ["class64"]),
        helper.make_node("Cast", ["class64"], ["classes"], to=TensorProto.INT32),
        helper.make_node("Gemm", ["features", "Wb"], ["box_logits"], transB=1),
        helper.make_node("Sigmoid", ["box_logits"], ["box_unit"]),
        helper.make_node("Reshape", ["box_unit", "box_shape"], ["corners"]),
        # x1, y1 in the left-top half, x2, y2 in the right-bottom half: boxes are well formed.
        helper.make_node("Mul", ["corners", "half"], ["half_corners"]),
        helper.make_node("Add", ["half_corners", "offset"], ["boxes_unit"]),
        helper.make_node("Mul", ["boxes_unit", "size"], ["boxes"]),
    ]
    graph = helper.make_graph(
        nodes,
        "anomaly_detector",
        [image_input(256)],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 16, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("classes", TensorProto.INT32, ["N", 16]),
        ],
        [
            weight("Ws", (16, 256), 1.0),
            weight("Wb", (64, 256), 1.0),
            numpy_helper.from_array(np.array([16], np.int64), "k"),
            numpy_helper.from_array(np.array(2, np.int64), "two"),
            numpy_helper.from_array(np.array([0, 16, 4], np.int64), "box_shape"),
            numpy_helper.from_array(np.array([0.5], np.float32), "half"),
            numpy_helper.from_array(np.array([0, 0, 0.5, 0.5], np.float32), "offset"),
            numpy_helper.from_array(np.array([256], np.float32), "size"),
        ],
    )
    folder = root / "anomaly_detector"
    _save(helper.make_model(graph, opset_imports=opset), folder)
    (folder / "config.pbtxt").write_text(
        _config(
            "anomaly_detector",
            256,
            [("boxes", "TYPE_FP32", [16, 4]), ("scores", "TYPE_FP32", [16]), ("classes", "TYPE_INT32", [16])],
            normalization="unit",
            kind="detector",
        )
    )
    (folder / "labels.txt").write_text("\n".join(DETECTOR_LABELS) + "\n")
    (folder / "thresholds.json").write_text(json.dumps({"score_threshold": 0.5}))

    # report_encoder: [N,1,224,224] unit range -> embedding [N,128], L2-normalised
    nodes = pooled(224, 16) + [
        helper.make_node("Gemm", ["features", "We"], ["raw"], transB=1),
        helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "report_encoder",
        [image_input(224)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 128])],
        [weight("We", (128, 196))],
    )
    folder = root / "report_encoder"
    _save(helper.make_model(graph, opset_imports=opset), folder)
    (folder / "config.pbtxt").write_text(
        _config("report_encoder", 224, [("embedding", "TYPE_FP32", [128])], normalization="unit", kind="encoder")
    )
    bank_rng = np.random.default_rng(seed + 1)
    sentences = []
    for text in (
        "No acute cardiopulmonary abnormality.",
        "Small left pleural effusion.",
        "Mild cardiomegaly.",
        "Focal opacity in the right lower lobe.",
    ):
        v = bank_rng.standard_normal(128)
        sentences.append({"text": text, "embedding": (v / np.linalg.norm(v)).round(6).tolist()})
    (folder / "1" / "sentence_bank.json").write_text(json.dumps({"dim": 128, "sentences": sentences}))
    return root


@pytest.fixture(scope="session")
def tiny_model_repository(tmp_path_factory) -> Path:
    return build_tiny_repository(tmp_path_factory.mktemp("tiny_model_repository"))


@pytest.fixture(scope="session")
def model_repository(tiny_model_repository) -> Path:
    """The trained repository once all three models are in it; the tiny test models until then."""
    return REAL_REPOSITORY if real_repository_complete() else tiny_model_repository
