"""`radstream models import-torchxrayvision` where torch is missing (this environment): a clear message
first, naming the command that provides torch; then the weights file; the import itself runs in .venv-train.
The import proper (torch) is tested by training/tests/test_import_torchxrayvision.py (make test-torch)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from radstream import models_import
from radstream.cli import main

NO_TRAIN_ENV = Path("/nonexistent/.venv-train/bin/python")


@pytest.fixture
def no_train_env(monkeypatch):
    assert importlib.util.find_spec("torch") is None, "this test is about the environment without torch (.venv)"
    monkeypatch.setattr(models_import, "TRAIN_PYTHON", NO_TRAIN_ENV)


def test_missing_torch_is_reported_before_anything_else(no_train_env, tmp_path, capsys):
    (tmp_path / "W.pt").write_bytes(b"\x80\x02}q\x00.")  # a (tiny) pickle, and then a file that is not there
    for weights in (tmp_path / "W.pt", tmp_path / "missing.pt"):
        assert main(["models", "import-torchxrayvision", str(weights), "--model-repository", str(tmp_path / "repo")]) == 2
        err = capsys.readouterr().err
        assert "needs torch" in err and "make venv-train" in err, err
        assert "Traceback" not in err and "ModuleNotFoundError" not in err
        assert "missing.pt" not in err  # torch is checked first, whatever the file
    assert not (tmp_path / "repo").exists()


def test_make_venv_train_is_the_target_that_builds_the_torch_environment():
    makefile = (Path(models_import.REPO_ROOT) / "Makefile").read_text()
    assert "\nvenv-train: .venv-train/.installed\n" in makefile
    assert ".venv-train/bin/python $(PIP_LOCKED) -r training/requirements.lock" in makefile


def test_a_missing_weights_file_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(models_import, "missing_modules", lambda: [])  # as in .venv-train
    weights = tmp_path / "nowhere" / "densenet.pt"
    assert main(["models", "import-torchxrayvision", str(weights)]) == 2
    err = capsys.readouterr().err
    assert f"weights file {weights} does not exist" in err and "Traceback" not in err


def test_without_torch_the_import_runs_in_the_training_environment(monkeypatch, tmp_path, capsys):
    """The command hands its arguments to .venv-train's Python (here a stand-in that records them)."""
    record = tmp_path / "argv.json"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'pythonpath': os.environ.get('PYTHONPATH', '')}}, open({str(record)!r}, 'w'))\n"
        "sys.exit(7)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(models_import, "TRAIN_PYTHON", fake)
    weights = tmp_path / "densenet.pt"
    weights.write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "models",
            "import-torchxrayvision",
            "densenet.pt",
            "--weights-name",
            "densenet121-res224-chex",
            "--allow-pickle",
            "--model-repository",
            "repo",
        ]
    )
    assert rc == 7, "the training environment's exit status is the command's"
    seen = json.loads(record.read_text())
    assert seen["argv"][:4] == ["-m", "radstream.models_import", str(weights), "--export-to"]
    assert seen["argv"][5:] == ["--weights-name", "densenet121-res224-chex", "--allow-pickle"]
    assert str(models_import.REPO_ROOT) in seen["pythonpath"].split(":")


def test_the_export_is_imported_as_a_new_version_through_the_generic_path(monkeypatch, tmp_path, capsys):
    """The training environment's half (here a stand-in writing a small classifier of the slot's shape, 224 px, xrv, five
    labels, and the spec export_torchxrayvision writes) then `models import`'s half in this environment: a new version
    with its own configs and card, the live version untouched."""
    import shutil

    from radstream.models_import import xrv_spec
    from synthetic.phantoms import FINDINGS
    from shared.model_repository import ModelRepository, read_pointer
    from shared.settings import DEFAULT_MODEL_REPOSITORY

    spec = xrv_spec([models_import.XRV_NAMES[f] for f in FINDINGS], None, "test stand-in", None, "0", "weights w.pt sha256 " + "ab" * 32)
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\nimport onnx\nfrom onnx import TensorProto, helper\n"
        "out = sys.argv[sys.argv.index('--export-to') + 1]\n"
        "nodes = [helper.make_node('ReduceMean', ['image'], ['m'], axes=[2, 3], keepdims=0),\n"
        "         helper.make_node('Tile', ['m', 'reps'], ['t']), helper.make_node('Sigmoid', ['t'], ['probabilities'])]\n"
        "graph = helper.make_graph(nodes, 'stand_in', [helper.make_tensor_value_info('image', TensorProto.FLOAT, ['N', 1, 224, 224])],\n"
        "    [helper.make_tensor_value_info('probabilities', TensorProto.FLOAT, ['N', 5])], [helper.make_tensor('reps', TensorProto.INT64, [2], [1, 5])])\n"
        "model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)]); model.ir_version = 8\n"
        "onnx.save(model, out + '/model.onnx')\n"
        f"open(out + '/spec.yaml', 'w').write({json.dumps(spec)!r})\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(models_import, "TRAIN_PYTHON", fake)
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo)
    (tmp_path / "w.pt").write_bytes(b"weights")
    assert main(["models", "import-torchxrayvision", str(tmp_path / "w.pt"), "--model-repository", str(repo)]) == 0
    assert "version 2" in capsys.readouterr().out
    assert read_pointer(repo / "chest_xray_classifier").live == "1"
    assert ModelRepository(repo).get("chest_xray_classifier").version == "1"
    new = repo / "chest_xray_classifier" / "2"
    assert "KIND_GPU" in (new / "gpu.pbtxt").read_text() and "ab" * 32 in (new / "config.pbtxt").read_text()
    card = (new / "MODEL_CARD.md").read_text()
    assert "torchxrayvision pathology" in card and "not validated" in card


def test_each_import_is_a_new_version(tmp_path):
    folder = tmp_path / "chest_xray_classifier"
    assert models_import.next_version(folder) == 1
    for name in ("1", "3", ".import-4", "notes"):
        (folder / name).mkdir(parents=True)
    assert models_import.next_version(folder) == 4


def test_results_name_the_newest_version_and_its_weights(config_only_repository):
    """What an import leaves (a second version folder, the sha256 in the provenance) is what results and telemetry carry."""
    from shared.model_repository import ModelRepository

    folder = config_only_repository / "chest_xray_classifier"
    (folder / "2").mkdir()
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("test fixture", "torchxrayvision DenseNet-121 v2, weights w.pt sha256 " + "ab" * 32))
    ref = ModelRepository(config_only_repository).get("chest_xray_classifier").ref
    assert ref.version == "2" and ref.provenance.endswith("sha256 " + "ab" * 32)


@pytest.mark.parametrize("name", ["chest_xray_classifier", "anomaly_detector", "report_encoder"])
def test_the_committed_gpu_configs_say_what_an_import_writes(name: str):
    """configs/gpu.pbtxt of each committed model and what `radstream models import-torchxrayvision` writes say the
    same, reasons included."""
    text = (Path(__file__).resolve().parents[2] / "services" / "triton" / "model_repository" / name / "configs" / "gpu.pbtxt").read_text()
    assert models_import._GPU_PRIORITY_ONLY + models_import._PLACEMENT["gpu"] in text
