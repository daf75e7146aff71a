"""A second classifier version for the model-lifecycle demo, built with onnx's helpers (no training, no download).

The candidate reads a 4x4 grid of mean intensities of its input (AveragePool), maps it linearly to its labels and
applies a sigmoid. Its weights are fixed pseudo-random numbers and its biases centre each label's score on the
sample studies: it is NOT a trained model and its outputs are arbitrary; its spec and model card say so, and every
result and shadow output names its provenance. It exists to exercise import, shadow, comparison and feedback with a
version that differs from the reference classifier in input size (160 against 224) and labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

CANDIDATE_SIZE = 160
CANDIDATE_LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion", "Nodule")
GRID = 4
PROVENANCE = "demo candidate built by radstream.demo_models with fixed pseudo-random weights: untrained, outputs arbitrary"


def candidate_spec(size: int = CANDIDATE_SIZE, labels: tuple[str, ...] = CANDIDATE_LABELS) -> dict:
    return {
        "model": "chest_xray_classifier",
        "kind": "classifier",
        "title": "demo candidate (4x4 intensity grid, untrained)",
        "input": {"name": "image", "size": size, "channels": 1, "normalization": "unit", "letterbox": True},
        "outputs": {"labels": list(labels), "thresholds": {label: 0.5 for label in labels}},
        "provenance": PROVENANCE,
        "intended_use": "Demonstrating RadStream's model lifecycle (import, shadow, comparison, feedback) on synthetic phantoms only",
        "limitations": "Untrained demo model, NOT for clinical use: its outputs say nothing about any image",
    }


def build_candidate_classifier(path: Path, size: int = CANDIDATE_SIZE, labels: tuple[str, ...] = CANDIDATE_LABELS, seed: int = 26) -> Path:
    """Write the candidate's ONNX file: image [N, 1, size, size] -> probabilities [N, len(labels)]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if size % GRID:
        raise ValueError(f"size must be a multiple of {GRID}")
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 4.0, (GRID * GRID, len(labels))).astype(np.float32)
    bias = -centre(weights, size)
    cell = size // GRID
    nodes = [
        helper.make_node("AveragePool", ["image"], ["grid"], kernel_shape=[cell, cell], strides=[cell, cell]),
        helper.make_node("Flatten", ["grid"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weights"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "radstream_demo_candidate",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(labels)])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="radstream.demo_models")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def centre(weights: np.ndarray, size: int) -> np.ndarray:
    """Each label's median logit over phantom studies: subtracting it puts about half the studies on each side."""
    from radstream.phantoms import generate_phantom
    from services.prepare.domain import letterbox

    rng = np.random.default_rng(7)
    features = []
    for _ in range(12):
        square, _ = letterbox(generate_phantom(rng, size=256).image.astype(np.float32), size)
        cell = size // GRID
        features.append(square.reshape(GRID, cell, GRID, cell).mean(axis=(1, 3)).reshape(-1))
    return np.median(np.asarray(features, np.float32) @ weights, axis=0).astype(np.float32)


def write_candidate(folder: Path) -> tuple[Path, Path]:
    """The candidate's ONNX file and spec file in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = build_candidate_classifier(folder / "candidate.onnx")
    spec_path = folder / "candidate.spec.yaml"
    spec_path.write_text(yaml.safe_dump(candidate_spec(), sort_keys=False))
    return onnx_path, spec_path
