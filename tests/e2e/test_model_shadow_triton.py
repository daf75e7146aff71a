"""A real tritonserver (nvidia-pytriton's binary, CPU) serving a live and a shadow version of the classifier under the
version_policy `radstream models shadow` wrote, their inputs of different sizes (dims -1), and the pipeline calling
both through it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from radstream.demo_models import CANDIDATE_LABELS, CANDIDATE_SIZE, write_candidate
from radstream.model_lifecycle import import_model, set_shadow
from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from radstream.triton_server import TritonServer
from services.triton.triton_client import TritonInference
from shared.settings import DEFAULT_MODEL_REPOSITORY, Settings

CLASSIFIER = "chest_xray_classifier"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("triton-shadow")
    repo = root / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo)
    onnx_path, spec_path = write_candidate(root / "candidate")
    set_shadow(repo, CLASSIFIER, import_model(onnx_path, spec_path, repo).version, 1.0)
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo, ready_deadline_s=90) as triton:
        yield triton


def test_triton_serves_both_versions_by_model_version(repo, server):
    rng = np.random.default_rng(3)
    with TritonInference(server.grpc_url, timeout_s=30) as client:
        for version, size, labels in (("1", 224, 5), ("2", CANDIDATE_SIZE, len(CANDIDATE_LABELS))):
            image = rng.random((2, 1, size, size), dtype=np.float32)
            got = client.infer(CLASSIFIER, {"image": image}, version=version)["probabilities"]
            session = ort.InferenceSession(str(repo / CLASSIFIER / version / "model.onnx"), providers=["CPUExecutionProvider"])
            (expected,) = session.run(["probabilities"], {"image": image})
            assert got.shape == (2, labels)
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_pipeline_calls_live_and_shadow_through_triton(tmp_path, repo, server):
    folders = write_demo_studies(tmp_path / "studies", 2, size=256, invalid=False)
    settings = Settings(data_dir=tmp_path / "data", model_repository=repo, triton_url=server.grpc_url)
    with LocalRuntime(settings, workers=1) as runtime:
        outcomes = [o for o in runtime.run_many(folders).outcomes if o.study_id.startswith("demo-")]
    assert outcomes and all(o.status == "succeeded" for o in outcomes)
    for o in outcomes:
        result = json.loads((tmp_path / "data" / "results" / "results" / o.study_id / "result.json").read_text())
        assert result["models"][CLASSIFIER]["version"] == "1" and len(result["findings"]) == 5
        shadow = json.loads((tmp_path / "data" / "results" / "shadow" / o.study_id / CLASSIFIER / "2.json").read_text())
        assert [f["label"] for f in shadow["findings"]] == list(CANDIDATE_LABELS)
