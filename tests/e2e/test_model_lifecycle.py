"""Bring your own model: `radstream models import|list|activate|rollback|shadow` on a copy of the model repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from radstream.cli import main
from radstream.demo_models import CANDIDATE_LABELS, CANDIDATE_SIZE, candidate_spec, write_candidate
from radstream.model_lifecycle import serving_config
from services.triton.onnx_backend import OnnxRuntimeBackend
from shared.model_repository import ModelRepository, read_pointer, shadow_selected
from shared.settings import DEFAULT_MODEL_REPOSITORY

CLASSIFIER = "chest_xray_classifier"


@pytest.fixture
def repo(tmp_path) -> Path:
    dest = tmp_path / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, dest)
    return dest


@pytest.fixture
def candidate(tmp_path) -> tuple[Path, Path]:
    return write_candidate(tmp_path / "candidate")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_import_adds_a_new_version_and_leaves_live_alone(repo, candidate, capsys):
    onnx_path, spec_path = candidate
    live_before = snapshot(repo / CLASSIFIER / "1")
    assert main(["models", "import", str(onnx_path), "--spec", str(spec_path), "--model-repository", str(repo)]) == 0
    assert "version 2" in capsys.readouterr().out
    # The live version's files are as they were (it got copies of the folder's files, nothing of its own changed).
    after = snapshot(repo / CLASSIFIER / "1")
    assert {k: v for k, v in after.items() if k in live_before} == live_before
    assert read_pointer(repo / CLASSIFIER).live == "1"
    live = ModelRepository(repo).get(CLASSIFIER)
    assert (live.version, live.input_size, len(live.labels)) == ("1", 224, 5)
    new = repo / CLASSIFIER / "2"
    for name in ("model.onnx", "config.pbtxt", "gpu.pbtxt", "labels.txt", "thresholds.json", "MODEL_CARD.md", "spec.yaml", "checks.json"):
        assert (new / name).is_file(), name
    assert "KIND_GPU" in (new / "gpu.pbtxt").read_text() and "KIND_CPU" in (new / "config.pbtxt").read_text()
    card = (new / "MODEL_CARD.md").read_text()
    assert "NOT for clinical use" in card and "untrained" in card
    assert json.loads((new / "checks.json").read_text())["input_shape"] == [4, 1, CANDIDATE_SIZE, CANDIDATE_SIZE]


def test_activate_and_rollback_swap_the_pointer_and_keep_versions(repo, candidate, capsys):
    onnx_path, spec_path = candidate
    assert main(["models", "import", str(onnx_path), "--spec", str(spec_path), "--model-repository", str(repo)]) == 0
    assert main(["models", "activate", CLASSIFIER, "2", "--model-repository", str(repo)]) == 0
    spec = ModelRepository(repo).get(CLASSIFIER)
    assert (spec.version, spec.input_size, spec.labels) == ("2", CANDIDATE_SIZE, CANDIDATE_LABELS)
    assert "untrained" in spec.provenance  # every output names what the model is
    # What inference uses locally: ONNX Runtime on version 2's file.
    backend = OnnxRuntimeBackend(ModelRepository(repo))
    out = backend.infer(CLASSIFIER, {"image": np.zeros((1, 1, CANDIDATE_SIZE, CANDIDATE_SIZE), np.float32)}, version=spec.version)
    assert out["probabilities"].shape == (1, len(CANDIDATE_LABELS))
    # What Triton serves: the folder's config names version 2 in its version_policy, with version 2's dims.
    served = (repo / CLASSIFIER / "config.pbtxt").read_text()
    assert "versions: 2" in served and "224" not in served
    assert main(["models", "rollback", CLASSIFIER, "--model-repository", str(repo)]) == 0
    assert ModelRepository(repo).get(CLASSIFIER).version == "1"
    assert sorted(p.name for p in (repo / CLASSIFIER).iterdir() if p.name.isdigit()) == ["1", "2"]  # kept
    assert main(["models", "rollback", CLASSIFIER, "--model-repository", str(repo)]) == 2
    assert "no earlier live version" in capsys.readouterr().err
    assert main(["models", "list", "--json", "--model-repository", str(repo)]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["model"] == CLASSIFIER]
    assert [(r["version"], r["role"]) for r in rows] == [("1", "live"), ("2", "")]
    assert not any(r["serving_lags_pointer"] for r in rows)
    # Nothing beside the models that Triton would take for a model (its temp files stay inside the model folder).
    assert sorted(p.name for p in repo.iterdir()) == ["anomaly_detector", "chest_xray_classifier", "report_encoder"]


def test_shadow_serves_both_versions_with_variable_dims(repo, candidate):
    onnx_path, spec_path = candidate
    assert main(["models", "import", str(onnx_path), "--spec", str(spec_path), "--model-repository", str(repo)]) == 0
    assert main(["models", "shadow", CLASSIFIER, "2", "--fraction", "0.5", "--model-repository", str(repo)]) == 0
    repository = ModelRepository(repo)
    shadow, fraction = repository.shadows[CLASSIFIER]
    assert (shadow.version, fraction, shadow.tensor_key) == ("2", 0.5, "chest_xray_classifier@2")
    served = (repo / CLASSIFIER / "config.pbtxt").read_text()
    assert "versions: 1" in served and "versions: 2" in served
    assert "dims: -1" in served  # 224 vs 160, 5 vs 4 labels: variable where the versions differ
    gpu = (repo / CLASSIFIER / "configs" / "gpu.pbtxt").read_text()
    assert "KIND_GPU" in gpu and "versions: 2" in gpu
    chosen = [s for s in (f"study-{i}" for i in range(400)) if shadow_selected(s, 0.5)]
    assert 150 < len(chosen) < 250 and chosen == [s for s in (f"study-{i}" for i in range(400)) if shadow_selected(s, 0.5)]
    assert serving_config(repo / CLASSIFIER, read_pointer(repo / CLASSIFIER), "config.pbtxt") == served
    assert main(["models", "shadow", CLASSIFIER, "--stop", "--model-repository", str(repo)]) == 0
    assert ModelRepository(repo).shadows == {}


def test_the_critical_finding_rules_follow_the_activated_versions_card(repo, candidate):
    """A version imported with high-specificity points carries them in its findings once active, so the default rules
    (threshold "high-specificity") hold its findings to its own card, not to the version before it; a rollback restores
    the old points."""
    from services.notify.rules import held_to, load_rules
    from shared.contracts import Finding

    onnx_path, spec_path = candidate
    spec = candidate_spec()
    points = {label: 0.61 + i / 100 for i, label in enumerate(spec["outputs"]["labels"])}
    spec["outputs"]["high_specificity"] = points
    spec_path.write_text(yaml.safe_dump(spec))
    before = ModelRepository(repo).get(CLASSIFIER).high_specificity
    assert main(["models", "import", str(onnx_path), "--spec", str(spec_path), "--model-repository", str(repo)]) == 0
    assert json.loads((repo / CLASSIFIER / "2" / "metrics.json").read_text())["high_specificity"]["points"] == {
        label: {"threshold": t} for label, t in points.items()
    }
    assert "high-specificity point" in (repo / CLASSIFIER / "2" / "MODEL_CARD.md").read_text()
    assert ModelRepository(repo).get(CLASSIFIER).high_specificity == before  # imported, not live
    assert main(["models", "activate", CLASSIFIER, "2", "--model-repository", str(repo)]) == 0
    live = ModelRepository(repo).get(CLASSIFIER)
    assert live.version == "2" and live.high_specificity == points
    for rule in (r for r in load_rules() if r.label in points):
        finding = Finding(
            label=rule.label, probability=0.7, threshold=0.5, positive=True, high_specificity_threshold=live.high_specificity[rule.label]
        )
        assert held_to(rule, finding) == points[rule.label] != before.get(rule.label)
    assert main(["models", "rollback", CLASSIFIER, "--model-repository", str(repo)]) == 0
    assert ModelRepository(repo).get(CLASSIFIER).high_specificity == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["outputs"].update(labels=["A", "B"], thresholds={}), "probabilities has shape [4, 4]"),
        (lambda s: s["input"].update(size=224), "input image has shape"),
        (lambda s: s.update(kind="detector"), "needs outputs.box_format"),
        (lambda s: s["outputs"].update(thresholds={"Nope": 0.3}), "thresholds names labels the model does not have"),
        (lambda s: s["outputs"].update(high_specificity={"Nope": 0.3}), "high_specificity names labels the model does not have"),
        (lambda s: s["outputs"].update(high_specificity={s["outputs"]["labels"][0]: 1.5}), "high_specificity must be within [0, 1]"),
        (lambda s: s.update(model="lung_nodule_finder"), "not a model slot"),
    ],
)
def test_a_model_that_does_not_fit_its_spec_is_refused_by_name(repo, candidate, change, message, capsys):
    onnx_path, spec_path = candidate
    spec = candidate_spec()
    change(spec)
    spec_path.write_text(yaml.safe_dump(spec))
    before = snapshot(repo)
    assert main(["models", "import", str(onnx_path), "--spec", str(spec_path), "--model-repository", str(repo)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert snapshot(repo) == before  # nothing written


def test_a_probability_out_of_range_is_refused(repo, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    # A classifier without its sigmoid: logits, not probabilities.
    size = 64
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0), helper.make_node("Mul", ["m", "k"], ["probabilities"])],
        "no_sigmoid",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [50.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    spec = candidate_spec(size=size, labels=("Edema",))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["models", "import", str(tmp_path / "m.onnx"), "--spec", str(tmp_path / "s.yaml"), "--model-repository", str(repo)]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err
