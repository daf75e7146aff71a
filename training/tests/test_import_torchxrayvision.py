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


def _check_export(onnx_path, spec_path):
    """What the export hands the generic import (radstream.model_lifecycle.import_model, run in .venv): the ONNX file
    and its spec. The import's own checks and files are tested there (tests/e2e/test_models_import.py)."""
    import onnxruntime as ort

    from synthetic.phantoms import FINDINGS

    spec = json.loads(spec_path.read_text())  # JSON is YAML: the import reads it with yaml.safe_load
    assert (spec["model"], spec["kind"]) == ("chest_xray_classifier", "classifier")
    assert spec["input"] == {"name": "image", "size": 224, "channels": 1, "normalization": "xrv", "letterbox": True}
    assert spec["outputs"] == {"labels": list(FINDINGS), "thresholds": {f: 0.5 for f in FINDINGS}}
    assert "torchxrayvision" in spec["provenance"] and "torchxrayvision" in spec["notes"]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.shape[1:] == [1, 224, 224] and not isinstance(inp.shape[0], int)
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    return sess, spec


def test_random_init_export_matches_torch(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import XRV_NAMES, export_torchxrayvision

    onnx_path, spec_path = export_torchxrayvision(None, tmp_path / "out", random_init=True)
    assert (onnx_path, spec_path) == (tmp_path / "out" / "model.onnx", tmp_path / "out" / "spec.yaml")
    sess, _ = _check_export(onnx_path, spec_path)
    x = ((np.random.default_rng(1).random((2, 1, 224, 224), dtype=np.float32) * 2 - 1) * 1024).astype(np.float32)
    (got,) = sess.run(None, {"image": x})
    assert got.shape == (2, 5) and ((got >= 0) & (got <= 1)).all()
    assert XRV_NAMES["Pleural Effusion"] == "Effusion"


def test_state_dict_file_is_loaded_and_mapped(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import XRV_NAMES, export_torchxrayvision
    from synthetic.phantoms import FINDINGS

    torch.manual_seed(0)
    ref = xrv.models.DenseNet(weights=None).eval()
    # make the classifier bias distinctive so a wrong label mapping would show
    with torch.no_grad():
        ref.classifier.bias.copy_(torch.linspace(-3, 3, ref.classifier.out_features))
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": ref.state_dict()}, weights)

    sess, spec = _check_export(*export_torchxrayvision(weights, tmp_path / "out"))
    assert "sha256" in spec["provenance"]
    x = ((np.random.default_rng(2).random((2, 1, 224, 224), dtype=np.float32) * 2 - 1) * 1024).astype(np.float32)
    (got,) = sess.run(None, {"image": x})
    with torch.no_grad():
        full = torch.sigmoid(ref(torch.from_numpy(x))).numpy()
    idx = [list(xrv.datasets.default_pathologies).index(XRV_NAMES[f]) for f in FINDINGS]
    np.testing.assert_allclose(got, full[:, idx], atol=1e-4)


def test_missing_weights_or_pathology_is_an_error(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import export_torchxrayvision

    with pytest.raises(ValueError):
        export_torchxrayvision(None, tmp_path / "out")
    names = ["Lung Opacity"] * 18
    with pytest.raises(ValueError, match="does not predict"):
        export_torchxrayvision(None, tmp_path / "out", random_init=True, pathologies=names)


def test_weights_name_uses_operating_points(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import export_torchxrayvision

    name = "densenet121-res224-chex"
    if name not in xrv.models.model_urls:
        pytest.skip(f"{name} not in this torchxrayvision's registry")
    sess, spec = _check_export(*export_torchxrayvision(None, tmp_path / "out", random_init=True, weights_name=name))
    assert "operating-point" in spec["notes"]
    x = np.zeros((1, 1, 224, 224), np.float32)
    (got,) = sess.run(None, {"image": x})
    assert got.shape == (1, 5) and ((got >= 0) & (got <= 1)).all()


def test_the_weights_sha256_is_in_the_spec_provenance(tmp_path):
    """Versions, configs and the model card come from the generic import (tests/e2e/test_models_import.py): what the
    export owes it is the provenance with the weights' digest, which every result repeats."""
    torch, xrv = _xrv()
    import hashlib

    from radstream.models_import import export_torchxrayvision

    torch.manual_seed(0)
    weights = tmp_path / "weights.pt"
    torch.save(xrv.models.DenseNet(weights=None).state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    _, spec = _check_export(*export_torchxrayvision(weights, tmp_path / "out"))
    assert f"weights weights.pt sha256 {digest}" in spec["provenance"]


def test_a_pickled_model_needs_allow_pickle(tmp_path):
    torch, xrv = _xrv()
    from radstream.models_import import ImportRefused, export_torchxrayvision

    weights = tmp_path / "whole-model.pt"
    torch.save(xrv.models.DenseNet(weights=None), weights)  # how torchxrayvision publishes its weights
    with pytest.raises(ImportRefused, match="--allow-pickle"):
        export_torchxrayvision(weights, tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()
    _check_export(*export_torchxrayvision(weights, tmp_path / "out", allow_pickle=True))


def test_the_command_exports_in_the_training_environment(tmp_path, capsys):
    """What `radstream models import-torchxrayvision` asks of .venv-train: --export-to a folder."""
    torch, xrv = _xrv()
    from radstream.models_import import main

    weights = tmp_path / "weights.pt"
    torch.save(xrv.models.DenseNet(weights=None).state_dict(), weights)
    assert main([str(weights), "--export-to", str(tmp_path / "out")]) == 0
    _check_export(tmp_path / "out" / "model.onnx", tmp_path / "out" / "spec.yaml")
    assert main([str(tmp_path / "missing.pt"), "--export-to", str(tmp_path / "out2")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
