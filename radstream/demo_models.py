"""A second classifier version for the model-lifecycle demo, built with onnx's helpers (no training, no download).

The candidate reads a 4x4 grid of mean intensities of its input (AveragePool), maps it linearly to its labels and
applies a sigmoid. Its weights are fixed pseudo-random numbers and its biases centre each label's score on the
sample studies: it is NOT a trained model and its outputs are arbitrary; its spec and model card say so, and every
result and shadow output names its provenance. It exists to exercise import, shadow, comparison and feedback with a
version that differs from the reference classifier in input size (160 against 224) and labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    from synthetic.phantoms import generate_phantom
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


# --- `radstream demo-models`: import, shadow, feedback, comparison, end to end on one machine ---
DEMO_SITES = ("site-north", "site-south")


def write_demo_studies_with_truth(out: Path, count: int, size: int = 512, seed: int = 26) -> tuple[list[Path], dict[str, dict[str, bool]]]:
    """Phantom studies (sidecar + image) and each one's known findings: the stand-in for what a radiologist would read."""
    from synthetic.phantoms import generate_phantom
    from synthetic.samples import encode, sidecar, write_study

    rng = np.random.default_rng(seed)
    folders, truth = [], {}
    for i in range(count):
        phantom = generate_phantom(rng, size=size)
        name, data = encode(phantom.image, i % 4)
        study_id = f"models-{i + 1:03d}"
        doc = sidecar(study_id, name, rng, data) | {"source": DEMO_SITES[i % 2]}
        folders.append(write_study(out / study_id, doc, name, data))
        truth[study_id] = dict(phantom.findings)
    return folders, truth


def feedback_csv(results_dir: Path, truth: dict[str, dict[str, bool]], labels: tuple[str, ...]) -> str:
    """A reader's verdicts on each live finding, from the phantoms' known truth: agree where the model was right,
    disagree where not; and corrections for labels only the candidate decides on (their truth: absent in a phantom)."""
    import json

    lines = ["study_id,label,verdict,present,box_index,reader"]
    for study_id, findings in sorted(truth.items()):
        path = results_dir / study_id / "result.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        for f in result["findings"]:
            right = f["positive"] == findings.get(f["label"], False)
            lines.append(f"{study_id},{f['label']},{'agree' if right else 'disagree'},,,demo-reader-{int(study_id[-1]) % 2}")
        for label in labels:
            if label not in findings and all(f["label"] != label for f in result["findings"]):
                lines.append(f"{study_id},{label},corrected,false,,demo-reader-{int(study_id[-1]) % 2}")
    return "\n".join(lines) + "\n"


def run_demo(data_dir: Path, count: int = 8, size: int = 512) -> dict:
    """Copy the model repository into the data dir (the committed one is never changed), import the candidate, run it
    in shadow on every study, load feedback from a CSV and answer the comparison and performance queries."""
    import shutil

    from radstream.feedback import import_csv
    from radstream.model_lifecycle import comparison, import_model, set_shadow
    from radstream.runtime import LocalRuntime
    from shared.settings import DEFAULT_MODEL_REPOSITORY, Settings
    from shared.storage import LocalObjectStore

    data_dir = Path(data_dir)
    repo = data_dir / "model_repository"
    if not repo.exists():
        shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo)
    onnx_path, spec_path = write_candidate(data_dir / "candidate")
    imported = import_model(onnx_path, spec_path, repo)
    set_shadow(repo, imported.model, imported.version, 1.0)
    folders, truth = write_demo_studies_with_truth(data_dir / "model-demo-studies", count, size)
    settings = Settings(data_dir=data_dir, model_repository=repo)
    with LocalRuntime(settings, workers=2) as runtime:
        outcomes = runtime.run_many(folders).outcomes
    csv_path = data_dir / "feedback.csv"
    csv_path.write_text(feedback_csv(data_dir / settings.results_bucket / "results", truth, CANDIDATE_LABELS))
    rows = import_csv(csv_path, LocalObjectStore(data_dir), settings.results_bucket, settings.telemetry_bucket)
    from radstream.analytics import DuckDBQueryRunner

    runner = DuckDBQueryRunner(data_dir / settings.telemetry_bucket)
    performance = [r for r in runner.run("model_performance").as_dicts() if r["site"] == "all"]
    return {
        "imported": {"model": imported.model, "version": imported.version},
        "studies": sum(o.status == "succeeded" for o in outcomes),
        "feedback_rows": rows,
        "feedback_csv": str(csv_path),
        **comparison(data_dir),
        "model_performance": performance,
    }


def cmd_demo_models(args: Any) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    found = run_demo(Path(args.data_dir), args.count)
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return 0
    console = Console()
    console.print(
        f"imported {found['imported']['model']} v{found['imported']['version']} (an untrained demo candidate: outputs arbitrary) "
        f"and ran it in shadow on {found['studies']} phantom studies; {found['feedback_rows']} feedback rows from {found['feedback_csv']} "
        "(verdicts from the phantoms' known truth, standing in for a radiologist). Not for clinical use."
    )
    from radstream.model_lifecycle import COMPARE_COLUMNS

    columns = {
        **COMPARE_COLUMNS,
        "model_performance": ("model_name", "model_version", "label", "studies", "sensitivity", "specificity", "ppv"),
    }
    for name, cols in columns.items():
        table = Table(title=name)
        for c in cols:
            table.add_column(c.replace("_", " "))
        for r in found[name]:
            table.add_row(*("" if r[c] is None else str(r[c]) for c in cols))
        console.print(table)
    console.print(f"console: radstream console --data-dir {args.data_dir}  (Models page)")
    return 0
