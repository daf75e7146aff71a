"""The local Triton's GPU serving (`--model-config-name gpu`): which config is served, on which instances, and
which ONNX Runtime providers each instance asks for. The GPU run itself needs a GPU machine (README Performance)."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest

from radstream.triton_server import (
    gpu_execution_providers,
    iter_models,
    model_config_path,
    write_serving_repository,
)
from shared.errors import ConfigurationError

REPOSITORY = Path(__file__).resolve().parents[2] / "services" / "triton" / "model_repository"


def parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def generated_module(model_py: Path, monkeypatch) -> types.ModuleType:
    """The generated model.py, imported with a stand-in for the backend's own triton_python_backend_utils
    (which exists only inside Triton's Python backend stub); warnings it logs are collected."""
    warnings: list[str] = []
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Logger = types.SimpleNamespace(log_warn=warnings.append, log_info=lambda m: None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    module = types.ModuleType("generated_model")
    exec(compile(model_py.read_text(), str(model_py), "exec"), module.__dict__)
    module.warnings = warnings
    return module


def test_the_gpu_configs_ask_for_tensorrt_then_cuda_then_the_cpu():
    for model_dir in iter_models(REPOSITORY):
        config = parse(model_config_path(model_dir, "gpu"))
        assert model_config_path(model_dir, "gpu") == model_dir / "configs" / "gpu.pbtxt"
        providers = gpu_execution_providers(config)
        assert [p if isinstance(p, str) else p[0] for p in providers] == [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ], model_dir.name
        trt, cuda = providers[0][1], providers[1][1]
        # FP32 as the config says (half precision moves probabilities by ~1e-3), its workspace and engine cache.
        assert trt == {
            "trt_fp16_enable": "False",
            "trt_max_workspace_size": "1073741824",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": "/tmp/trt-engines",
        }
        # No TF32: on an H200 it moved the classifier's probabilities by 2.5e-4 and the detector's boxes by 16 px.
        assert cuda == {"cudnn_conv_use_max_workspace": "1", "use_tf32": "0"}


def test_cuda_parameters_reach_onnx_runtime_as_they_are():
    # As Triton's ONNX Runtime backend does: every "cuda" parameter is a CUDA provider option, by the same name.
    gpu = parse(REPOSITORY / "chest_xray_classifier" / "configs" / "gpu.pbtxt")
    gpu.optimization.execution_accelerators.gpu_execution_accelerator[1].parameters["cudnn_conv_algo_search"] = "HEURISTIC"
    cuda = gpu_execution_providers(gpu)[1]
    assert cuda == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "cudnn_conv_use_max_workspace": "1", "use_tf32": "0"})


def test_without_accelerators_a_gpu_instance_gets_cuda_and_an_unknown_one_is_refused():
    config = parse(REPOSITORY / "chest_xray_classifier" / "config.pbtxt")
    assert gpu_execution_providers(config) == [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    gpu = parse(REPOSITORY / "chest_xray_classifier" / "configs" / "gpu.pbtxt")
    gpu.optimization.execution_accelerators.gpu_execution_accelerator[1].name = "openvino"
    with pytest.raises(ConfigurationError, match="openvino"):
        gpu_execution_providers(gpu)
    gpu = parse(REPOSITORY / "chest_xray_classifier" / "configs" / "gpu.pbtxt")
    gpu.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["trt_int8_enable"] = "1"
    with pytest.raises(ConfigurationError, match="trt_int8_enable"):
        gpu_execution_providers(gpu)


def test_a_model_without_the_named_config_serves_its_config_pbtxt(tmp_path):
    model = tmp_path / "repo" / "m"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "m"\n')
    assert model_config_path(model, "gpu") == model / "config.pbtxt"
    assert model_config_path(model, None) == model / "config.pbtxt"


@pytest.mark.parametrize("config_name, kind", [(None, "KIND_CPU"), ("gpu", "KIND_GPU")])
def test_the_serving_copy_serves_the_named_config_on_its_instances(tmp_path, config_name, kind):
    served = write_serving_repository(REPOSITORY, tmp_path / "served", sys_path=[], model_config_name=config_name)
    for model_dir in iter_models(REPOSITORY):
        config = parse(served / model_dir.name / "config.pbtxt")
        original = parse(model_config_path(model_dir, config_name))
        assert config.backend == "python"
        assert [g.kind for g in config.instance_group] == [getattr(config.instance_group[0], kind)]
        assert config.dynamic_batching == original.dynamic_batching
        model_py = (served / model_dir.name / "1" / "model.py").read_text()
        listed = ast.literal_eval(model_py.split("GPU_PROVIDERS = ", 1)[1].splitlines()[0])
        assert listed == gpu_execution_providers(original)


def test_a_gpu_instance_needs_the_cuda_provider_and_never_falls_back_to_the_cpu(tmp_path, monkeypatch):
    served = write_serving_repository(REPOSITORY, tmp_path / "served", sys_path=[], model_config_name="gpu")
    model = generated_module(served / "chest_xray_classifier" / "1" / "model.py", monkeypatch)
    cpu_only = ["CPUExecutionProvider"]
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    assert model.providers_for("CPU", 0, gpu_build) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        model.providers_for("GPU", 0, cpu_only)
    # Each GPU provider on the instance's own device.
    chosen = model.providers_for("GPU", 1, gpu_build)
    assert [p if isinstance(p, str) else p[0] for p in chosen] == gpu_build
    assert all(p[1]["device_id"] == "1" for p in chosen[:2])
    assert chosen[0][1]["trt_fp16_enable"] == "False"
    # A build without TensorRT: CUDA and the CPU, with a warning in the server's log.
    chosen = model.providers_for("GPU", 0, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert [p if isinstance(p, str) else p[0] for p in chosen] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert model.warnings and "TensorrtExecutionProvider" in model.warnings[0]


class _FallbackOrt:
    """ONNX Runtime's own behaviour when TensorRT's libraries are missing: the session falls back to CUDA and the CPU
    with default options (onnxruntime-gpu 1.31.1 on the H200 did exactly this)."""

    def __init__(self):
        self.calls = []

    def InferenceSession(self, path, options, providers):
        self.calls.append(providers)
        names = [p if isinstance(p, str) else p[0] for p in providers]
        running = [n for n in names if n != "TensorrtExecutionProvider"]
        return types.SimpleNamespace(get_providers=lambda: running)


def test_a_provider_that_cannot_load_does_not_take_the_others_options_with_it():
    from radstream.triton_server import open_onnx_session

    gpu = parse(REPOSITORY / "chest_xray_classifier" / "configs" / "gpu.pbtxt")
    providers = gpu_execution_providers(gpu)
    ort, warnings = _FallbackOrt(), []
    session = open_onnx_session(ort, "model.onnx", None, providers, warnings.append)
    assert session.get_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # Made again on CUDA with its own options (use_tf32 0), not on ONNX Runtime's default-option fallback.
    assert ort.calls[-1] == [("CUDAExecutionProvider", {"cudnn_conv_use_max_workspace": "1", "use_tf32": "0"}), "CPUExecutionProvider"]
    assert "TensorrtExecutionProvider could not be created" in warnings[0]


def test_with_the_real_onnx_runtime_a_missing_provider_is_dropped_and_said(tmp_path):
    import onnxruntime as ort

    from radstream.triton_server import open_onnx_session

    warnings = []
    model = str(REPOSITORY / "report_encoder" / "1" / "model.onnx")
    session = open_onnx_session(
        ort, model, ort.SessionOptions(), [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"], warnings.append
    )
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
    else:  # this machine's CPU build: the CPU only, and a warning that says so
        assert session.get_providers() == ["CPUExecutionProvider"] and "CUDAExecutionProvider" in warnings[0]
