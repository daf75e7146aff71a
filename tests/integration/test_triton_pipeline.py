"""The same studies through a real local Triton server (HTTP and gRPC) and through in-process ONNX Runtime give the same results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radstream.runtime import LocalRuntime
from synthetic.samples import write_demo_studies
from radstream.triton_server import TritonServer
from shared.settings import DEFAULT_MODEL_REPOSITORY, Settings

pytestmark = pytest.mark.slow


def run(folders: list[Path], data_dir: Path, triton_url: str | None) -> dict[str, dict]:
    with LocalRuntime(Settings(data_dir=data_dir, triton_url=triton_url), workers=2) as runtime:
        outcomes = runtime.run_many(folders).outcomes
    assert all(o.status == "succeeded" for o in outcomes), [(o.study_id, o.message) for o in outcomes]
    return {o.study_id: json.loads((data_dir / "results" / "results" / o.study_id / "result.json").read_text()) for o in outcomes}


def assert_same(a: dict, b: dict) -> None:
    assert [f["label"] for f in a["findings"]] == [f["label"] for f in b["findings"]]
    for fa, fb in zip(a["findings"], b["findings"]):
        assert fa["probability"] == pytest.approx(fb["probability"], abs=1e-3)
    assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
    for da, db in zip(a["detections"], b["detections"]):
        assert da["box"] == pytest.approx(db["box"], abs=0.5) and da["score"] == pytest.approx(db["score"], abs=1e-3)
    assert [s["text"] for s in a["report"]["impression"]] == [s["text"] for s in b["report"]["impression"]]
    assert a["models"] == b["models"]


def test_triton_and_onnx_runtime_agree(tmp_path):
    folders = write_demo_studies(tmp_path / "studies", 3, size=512, invalid=False)
    embedded = run(folders, tmp_path / "onnx", None)
    with TritonServer(DEFAULT_MODEL_REPOSITORY) as server:
        over_http = run(folders, tmp_path / "http", server.http_url)
        over_grpc = run(folders, tmp_path / "grpc", server.grpc_url)
    assert set(embedded) == set(over_http) == set(over_grpc)
    for study_id in embedded:
        assert_same(embedded[study_id], over_http[study_id])
        assert_same(embedded[study_id], over_grpc[study_id])
