"""The committed reference models in services/triton/model_repository keep docs/models.md's contracts.

Parses every config.pbtxt as Triton's ModelConfig, loads each ONNX file in onnxruntime, checks names,
shapes and dtypes against the config, runs a batch of phantoms, and checks the classifier is clearly
better than chance on fresh phantoms (these are reference models trained on synthetic phantoms).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from shared.letterbox import letterbox
from synthetic.phantoms import FINDINGS, LESION_LABELS, generate_phantom
from shared.pixels import percentile_window

REPO = Path(__file__).resolve().parents[1] / "model_repository"
MODELS = {
    # name: (kind, normalization, input size, {output: (triton dtype, dims)})
    "chest_xray_classifier": ("classifier", "xrv", 224, {"probabilities": ("TYPE_FP32", [5])}),
    "anomaly_detector": (
        "detector",
        "unit",
        256,
        {"boxes": ("TYPE_FP32", [16, 4]), "scores": ("TYPE_FP32", [16]), "classes": ("TYPE_INT32", [16])},
    ),
    "report_encoder": ("encoder", "unit", 224, {"embedding": ("TYPE_FP32", [128])}),
}
ORT_TYPES = {"TYPE_FP32": "tensor(float)", "TYPE_INT32": "tensor(int32)"}
NP_TYPES = {"TYPE_FP32": np.float32, "TYPE_INT32": np.int32}


def _config(name: str) -> model_config_pb2.ModelConfig:
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((REPO / name / "config.pbtxt").read_text(), cfg)
    return cfg


def _session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(REPO / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def _normalize(x: np.ndarray, norm: str) -> np.ndarray:
    return (2.0 * x - 1.0) * 1024.0 if norm == "xrv" else x


def _batch(size: int, seeds, norm: str, **kw):
    phs = [generate_phantom(np.random.default_rng(s), 384, **kw) for s in seeds]
    # What prepare gives the models: the picture through the intensity rule (docs/models.md "Intensity"), letterboxed.
    x = np.stack([letterbox(percentile_window(p.image), size)[0] for p in phs])[:, None].astype(np.float32)
    return phs, _normalize(x, norm)


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    name = request.param
    assert (REPO / name / "config.pbtxt").is_file(), f"{name}: no config.pbtxt (run training/train_reference_models.py)"
    assert (REPO / name / "1" / "model.onnx").is_file(), f"{name}: no 1/model.onnx"
    return name, _config(name), _session(name)


def test_config_matches_contract(model):
    name, cfg, _ = model
    kind, norm, size, outputs = MODELS[name]
    assert cfg.name == name
    assert cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 16
    assert [i.name for i in cfg.input] == ["image"]
    inp = cfg.input[0]
    assert model_config_pb2.DataType.Name(inp.data_type) == "TYPE_FP32"
    assert list(inp.dims) == [1, size, size]
    assert {o.name: (model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output} == outputs
    # CPU batching as measured (README Performance): the detector keeps a 2 ms delay, the others batch without one.
    if kind == "detector":
        assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    else:
        assert list(cfg.dynamic_batching.preferred_batch_size) == []
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 0 and cfg.HasField("dynamic_batching")
    assert [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in cfg.instance_group] == [("KIND_CPU", 1)]
    assert cfg.parameters["radstream.normalization"].string_value == norm
    assert cfg.parameters["radstream.kind"].string_value == kind


def test_side_files(model):
    name, _, _ = model
    d = REPO / name
    labels = (d / "labels.txt").read_text().splitlines()
    thresholds = json.loads((d / "thresholds.json").read_text())
    card = (d / "MODEL_CARD.md").read_text()
    assert "synthetic" in card and "not for clinical use" in card.lower() and "NOT clinically" in card
    if name == "chest_xray_classifier":
        assert labels == list(FINDINGS)
        assert set(thresholds) == set(FINDINGS) and all(0.0 < v < 1.0 for v in thresholds.values())
    elif name == "anomaly_detector":
        assert labels == list(LESION_LABELS)
        assert 0.0 < thresholds["score_threshold"] < 1.0
    else:
        bank = json.loads((d / "1" / "sentence_bank.json").read_text())
        assert bank["dim"] == 128 and len(bank["sentences"]) >= 10
        emb = np.array([s["embedding"] for s in bank["sentences"]], np.float32)
        assert emb.shape == (len(bank["sentences"]), 128)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
        assert labels == [s["text"] for s in bank["sentences"]]


def test_onnx_io_matches_config(model):
    name, cfg, sess = model
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert inp.shape[1:] == list(cfg.input[0].dims) and not isinstance(inp.shape[0], int)  # dynamic batch
    outs = {o.name: o for o in sess.get_outputs()}
    assert set(outs) == {o.name for o in cfg.output}
    for o in cfg.output:
        assert outs[o.name].type == ORT_TYPES[model_config_pb2.DataType.Name(o.data_type)]
        assert outs[o.name].shape[1:] == list(o.dims) and not isinstance(outs[o.name].shape[0], int)


def test_batch_of_two_phantoms(model):
    name, cfg, sess = model
    kind, norm, size, outputs = MODELS[name]
    phs, x = _batch(size, [11, 12], norm, lesions=2)
    res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))
    for oname, (dtype, dims) in outputs.items():
        assert res[oname].shape == (2, *dims) and res[oname].dtype == NP_TYPES[dtype]
        assert np.isfinite(res[oname]).all()
    if kind == "classifier":
        p = res["probabilities"]
        assert ((p >= 0) & (p <= 1)).all()
    elif kind == "detector":
        s, b, c = res["scores"], res["boxes"], res["classes"]
        assert ((s >= 0) & (s <= 1)).all() and (np.diff(s, axis=1) <= 1e-7).all()  # sorted, descending
        assert ((b >= 0) & (b <= size)).all() and (b[..., 2] >= b[..., 0]).all() and (b[..., 3] >= b[..., 1]).all()
        assert set(np.unique(c)) <= {0, 1}
    else:
        e = res["embedding"]
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # batching does not change the answer
    single = sess.run(None, {"image": x[:1]})
    np.testing.assert_allclose(single[0], sess.run(None, {"image": x})[0][:1], atol=1e-4)


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg)))


def test_classifier_beats_chance_on_fresh_phantoms():
    norm, size = MODELS["chest_xray_classifier"][1:3]
    sess = _session("chest_xray_classifier")
    phs, x = _batch(size, range(90_000, 90_160), norm)
    probs = np.concatenate([sess.run(None, {"image": x[i : i + 32]})[0] for i in range(0, len(x), 32)])
    y = np.array([[p.findings[f] for f in FINDINGS] for p in phs])
    aucs = [_auroc(y[:, i], probs[:, i]) for i in range(len(FINDINGS)) if 0 < y[:, i].sum() < len(y)]
    assert len(aucs) == len(FINDINGS)
    assert np.mean(aucs) > 0.75, aucs
    assert min(aucs) > 0.6, aucs


def test_detector_finds_lesions_on_fresh_phantoms():
    norm, size = MODELS["anomaly_detector"][1:3]
    sess = _session("anomaly_detector")
    thr = json.loads((REPO / "anomaly_detector" / "thresholds.json").read_text())["score_threshold"]
    phs, x = _batch(size, range(91_000, 91_040), norm, lesions=2)
    boxes, scores, classes = sess.run(None, {"image": x})
    found = total = 0
    for p, b, s in zip(phs, boxes, scores):
        scale = size / p.image.shape[0]
        for les in p.lesions:
            gt = np.array(les.box) * scale
            total += 1
            ix = np.clip(np.minimum(b[:, 2], gt[2]) - np.maximum(b[:, 0], gt[0]), 0, None)
            iy = np.clip(np.minimum(b[:, 3], gt[3]) - np.maximum(b[:, 1], gt[1]), 0, None)
            inter = ix * iy
            union = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
            found += bool(((inter / union >= 0.3) & (s >= thr)).any())
    assert found / total > 0.5, (found, total)


def test_encoder_retrieves_matching_sentences():
    norm, size = MODELS["report_encoder"][1:3]
    sess = _session("report_encoder")
    bank = json.loads((REPO / "report_encoder" / "1" / "sentence_bank.json").read_text())
    texts = [s["text"] for s in bank["sentences"]]
    emb = np.array([s["embedding"] for s in bank["sentences"]], np.float32)
    phs, x = _batch(size, range(92_000, 92_040), norm)
    img = sess.run(None, {"image": x})[0]
    recall = []
    for p, e in zip(phs, img):
        k = len(p.report_sentences)
        top = [texts[i] for i in np.argsort(-(emb @ e))[:k]]
        recall.append(len(set(top) & set(p.report_sentences)) / k)
    assert np.mean(recall) > 0.6, np.mean(recall)


def test_gpu_configs_differ_from_config_pbtxt_only_in_placement(model):
    """configs/gpu.pbtxt (what Triton loads on GPU nodes) is config.pbtxt with GPU instances and TensorRT/CUDA, and a
    dynamic batcher that only orders the queue by priority: one request a batch."""
    name, cfg, _ = model
    text = (REPO / name / "configs" / "gpu.pbtxt").read_text()
    # what `radstream models import-torchxrayvision` writes says the same (tests/e2e/test_models_import.py)
    gpu = model_config_pb2.ModelConfig()
    text_format.Parse(text, gpu)
    assert [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in gpu.instance_group] == [("KIND_GPU", 1)]
    (trt, cuda) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP32" and trt.parameters["trt_engine_cache_enable"] == "1"
    assert cuda.name == "cuda"
    # TF32 off: ONNX Runtime's CUDA provider rounds convolutions to TF32 on Ampere and newer GPUs by default, which moved
    # the classifier's probabilities by 2.5e-4 and the detector's boxes by up to 16 px against the CPU on an H200.
    assert cuda.parameters["use_tf32"] == "0"
    # No merging on the GPU: ONNX Runtime's CUDA provider pays 10-100x a call whenever the batch size changes from the
    # call before (measured on an H200, README Performance), and merging changes it almost every call. The batcher is
    # there for its priority queue (docs/triage.md): stat (1) and urgent (2) ahead of routine (3, the default), as on the
    # CPU (shared.priority.to_triton).
    batching = gpu.dynamic_batching
    assert (batching.priority_levels, batching.default_priority_level) == (3, 3)
    assert (cfg.dynamic_batching.priority_levels, cfg.dynamic_batching.default_priority_level) == (3, 3)
    assert list(batching.preferred_batch_size) == [1] and batching.max_queue_delay_microseconds == 0
    assert gpu.max_batch_size == cfg.max_batch_size > 0  # clients may still batch
    cpu = model_config_pb2.ModelConfig()
    cpu.CopyFrom(cfg)  # the fixture's config is shared by the module's tests
    for config in (gpu, cpu):
        config.ClearField("instance_group")
        config.ClearField("optimization")
        config.ClearField("dynamic_batching")
    assert gpu == cpu
