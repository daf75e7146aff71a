"""radstream.models_import: torchxrayvision DenseNet -> chest_xray_classifier slot (needs torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.torch


def _xrv():
    torch = pytest.importorskip("torch")
    from radstream.models_import import _import_torchxrayvision

    try:
        xrv = _import_torchxrayvision()
    except ImportError as exc:
        pytest.skip(f"torchxrayvision not installed: {exc}")
    return torch, xrv


def _check_slot(folder, torch_ref=None):
    import onnxruntime as ort
    from google.protobuf import text_format

    from synthetic.phantoms import FINDINGS

    cfg_text = (folder / "config.pbtxt").read_text()
    assert 'string_value: "xrv"' in cfg_text and 'string_value: "classifier"' in cfg_text
    try:
        from tritonclient.grpc import model_config_pb2

        cfg = model_config_pb2.ModelConfig()
        text_format.Parse(cfg_text, cfg)
        assert cfg.name == "chest_xray_classifier" and list(cfg.input[0].dims) == [1, 224, 224]
        assert cfg.parameters["radstream.normalization"].string_value == "xrv"
        assert [o.name for o in cfg.output] == ["probabilities"] and list(cfg.output[0].dims) == [5]
    except ImportError:
        pass
    assert (folder / "labels.txt").read_text().splitlines() == list(FINDINGS)
    assert json.loads((folder / "thresholds.json").read_text()) == {f: 0.5 for f in FINDINGS}
    assert "torchxrayvision" in (folder / "MODEL_CARD.md").read_text()
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.shape[1:] == [1, 224, 224]
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    return sess


def test_random_init_export_matches_torch(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import XRV_NAMES, import_torchxrayvision

    folder = import_torchxrayvision(None, tmp_path / "repo", random_init=True)
    assert folder == tmp_path / "repo" / "chest_xray_classifier"
    sess = _check_slot(folder)
    x = ((np.random.default_rng(1).random((2, 1, 224, 224), dtype=np.float32) * 2 - 1) * 1024).astype(np.float32)
    (got,) = sess.run(None, {"image": x})
    assert got.shape == (2, 5) and ((got >= 0) & (got <= 1)).all()
    assert XRV_NAMES["Pleural Effusion"] == "Effusion"


def test_state_dict_file_is_loaded_and_mapped(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import XRV_NAMES, import_torchxrayvision
    from synthetic.phantoms import FINDINGS

    torch.manual_seed(0)
    ref = xrv.models.DenseNet(weights=None).eval()
    # make the classifier bias distinctive so a wrong label mapping would show
    with torch.no_grad():
        ref.classifier.bias.copy_(torch.linspace(-3, 3, ref.classifier.out_features))
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": ref.state_dict()}, weights)

    folder = import_torchxrayvision(weights, tmp_path / "repo")
    sess = _check_slot(folder)
    assert "sha256" in (folder / "MODEL_CARD.md").read_text()
    x = ((np.random.default_rng(2).random((2, 1, 224, 224), dtype=np.float32) * 2 - 1) * 1024).astype(np.float32)
    (got,) = sess.run(None, {"image": x})
    with torch.no_grad():
        full = torch.sigmoid(ref(torch.from_numpy(x))).numpy()
    idx = [list(xrv.datasets.default_pathologies).index(XRV_NAMES[f]) for f in FINDINGS]
    np.testing.assert_allclose(got, full[:, idx], atol=1e-4)


def test_missing_weights_or_pathology_is_an_error(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import import_torchxrayvision

    with pytest.raises(ValueError):
        import_torchxrayvision(None, tmp_path / "repo")
    names = ["Lung Opacity"] * 18
    with pytest.raises(ValueError, match="does not predict"):
        import_torchxrayvision(None, tmp_path / "repo", random_init=True, pathologies=names)


def test_weights_name_uses_operating_points(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import import_torchxrayvision

    name = "densenet121-res224-chex"
    if name not in xrv.models.model_urls:
        pytest.skip(f"{name} not in this torchxrayvision's registry")
    folder = import_torchxrayvision(None, tmp_path / "repo", random_init=True, weights_name=name)
    sess = _check_slot(folder)
    assert "operating-point" in (folder / "MODEL_CARD.md").read_text()
    x = np.zeros((1, 1, 224, 224), np.float32)
    (got,) = sess.run(None, {"image": x})
    assert got.shape == (1, 5) and ((got >= 0) & (got <= 1)).all()


def test_each_import_is_a_new_version_with_its_sha256_in_card_and_provenance(tmp_path):
    torch, xrv = _xrv()
    import hashlib
    import shutil
    from pathlib import Path

    from radstream.models_import import import_torchxrayvision

    repo = tmp_path / "repo"
    reference = Path(__file__).resolve().parents[2] / "services" / "triton" / "model_repository" / "chest_xray_classifier"
    shutil.copytree(reference, repo / "chest_xray_classifier")  # the reference classifier is version 1
    torch.manual_seed(0)
    weights = tmp_path / "weights.pt"
    torch.save(xrv.models.DenseNet(weights=None).state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()

    folder = import_torchxrayvision(weights, repo)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "configs") == ["1", "2"]  # no staging folder left
    # What a GPU node loads changes with config.pbtxt: the same model, placed on the GPU.
    gpu, cpu = (folder / "configs" / "gpu.pbtxt").read_text(), (folder / "config.pbtxt").read_text()
    assert "KIND_GPU" in gpu and "tensorrt" in gpu and "KIND_CPU" in cpu
    gpu, cpu = ("\n".join(line for line in text.splitlines() if not line.startswith("#")) for text in (gpu, cpu))
    # Only batching (tuned on CPU; none on the GPU, README Performance), placement and accelerators differ.
    assert "dynamic_batching" in cpu and "dynamic_batching" not in gpu
    assert gpu.split("instance_group")[0] == cpu.split("dynamic_batching")[0] and gpu.split("parameters:", 1)[1] == cpu.split("parameters:", 1)[1]
    assert (folder / "1" / "model.onnx").exists() and (folder / "2" / "model.onnx").exists()
    # radstream.provenance is what every result repeats per model (shared/model_repository.py ModelSpec.ref).
    config = (folder / "config.pbtxt").read_text()
    assert f"DenseNet-121 v2, weights weights.pt sha256 {digest}" in config
    card = (folder / "MODEL_CARD.md").read_text()
    assert digest in card and "version: 2" in card

    import_torchxrayvision(weights, repo)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "configs") == ["1", "2", "3"]


def test_a_pickled_model_needs_allow_pickle(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import ImportRefused, import_torchxrayvision

    weights = tmp_path / "whole-model.pt"
    torch.save(xrv.models.DenseNet(weights=None), weights)  # how torchxrayvision publishes its weights
    with pytest.raises(ImportRefused, match="--allow-pickle"):
        import_torchxrayvision(weights, tmp_path / "repo")
    assert not any((tmp_path / "repo" / "chest_xray_classifier").glob("[0-9]*"))
    folder = import_torchxrayvision(weights, tmp_path / "repo", allow_pickle=True)
    _check_slot(folder)


def test_the_command_imports_in_the_training_environment(tmp_path, capsys):
    torch, xrv = _xrv()
    from radstream.models_import import main

    weights = tmp_path / "weights.pt"
    torch.save(xrv.models.DenseNet(weights=None).state_dict(), weights)
    assert main([str(weights), "--model-repository", str(tmp_path / "repo")]) == 0
    assert "chest_xray_classifier version 1" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.pt"), "--model-repository", str(tmp_path / "repo")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
