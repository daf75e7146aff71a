"""Fixtures shared by every test folder: the test layers, a small model repository written on the fly, stores, uploads.

It imports only shared/ and pytest, so every service's tests run in that service's own environment; test data and
builders live in synthetic/."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from shared.settings import ENVIRONMENT
from shared.storage import LocalObjectStore

# A shell starts background jobs (`make test &`, `nohup … &`) with SIGINT ignored, and an ignored signal stays ignored
# across exec: the processes the tests start and then stop with Ctrl-C (`radstream run`, `radstream gateway`) would
# never see it. A handled signal is reset to the default at exec, so handling it here gives them Ctrl-C back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The test layers (make test-unit, test-integration, test-e2e; make test runs all three). By where a test lives:
# integration tests talk to a real peer over loopback (the AWS emulator, dcmtk, Orthanc, Chromium, tritonserver,
# the template tools); end-to-end tests run the CLI or the whole local pipeline on files; the rest are unit tests.
INTEGRATION = (
    "tests/aws/",
    "tests/infra/",
    "tests/integration/",
    "tests/console/test_console_browser.py",
    "services/gateway/tests/",
)
# "tests/test_": an end-to-end test a branch adds where they all stood before tests/e2e/ (its place is tests/e2e/).
E2E = ("tests/e2e/", "tests/analytics/", "tests/test_")
ROOT = Path(__file__).resolve().parent


def layer_of(path: Path) -> str:
    relative = path.resolve().relative_to(ROOT).as_posix()
    if relative.startswith(INTEGRATION):
        return "integration"
    return "e2e" if relative.startswith(E2E) else "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(layer_of(item.path))


@pytest.fixture(autouse=True)
def hermetic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees RadStream settings from the shell that runs it (or from an earlier test)."""
    for var in ENVIRONMENT.values():
        monkeypatch.delenv(var, raising=False)


CONFIG = """name: "{name}"
backend: "onnxruntime"
max_batch_size: 16
input [{{ name: "image" data_type: TYPE_FP32 dims: [1, {size}, {size}] }}]
output [{{ name: "{output}" data_type: TYPE_FP32 dims: [{dims}] }}]
parameters {{ key: "radstream.kind" value {{ string_value: "{kind}" }} }}
parameters {{ key: "radstream.normalization" value {{ string_value: "{normalization}" }} }}
parameters {{ key: "radstream.provenance" value {{ string_value: "test fixture" }} }}
"""


@pytest.fixture
def config_only_repository(tmp_path: Path) -> Path:
    """Three models' configs (no weights): enough for the stages that read shapes and labels."""
    root = tmp_path / "model_repository"
    models = [
        ("chest_xray_classifier", 224, "probabilities", "5", "classifier", "xrv"),
        ("anomaly_detector", 256, "boxes", "16, 4", "detector", "unit"),
        ("report_encoder", 224, "embedding", "128", "encoder", "unit"),
    ]
    for name, size, output, dims, kind, normalization in models:
        folder = root / name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(
            CONFIG.format(name=name, size=size, output=output, dims=dims, kind=kind, normalization=normalization)
        )
    (root / "chest_xray_classifier" / "labels.txt").write_text("Atelectasis\nCardiomegaly\nConsolidation\nEdema\nPleural Effusion\n")
    (root / "chest_xray_classifier" / "thresholds.json").write_text(
        json.dumps({"Atelectasis": 0.4, "Cardiomegaly": 0.5, "Consolidation": 0.5, "Edema": 0.6, "Pleural Effusion": 0.3})
    )
    (root / "anomaly_detector" / "labels.txt").write_text("nodule_mass\nfocal_opacity\n")
    (root / "anomaly_detector" / "thresholds.json").write_text(json.dumps({"score_threshold": 0.5}))
    return root


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "data")


@pytest.fixture
def upload(store: LocalObjectStore):
    """Put a study into the images bucket the way the CLI does; returns the sidecar's key."""

    def put(doc: dict | bytes, image: bytes | None, study_id: str = "study-001", image_name: str = "image.png") -> str:
        if image is not None:
            store.put_bytes("images", f"incoming/{study_id}/{image_name}", image)
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return store.put_bytes("images", f"incoming/{study_id}/study.json", raw).key

    return put
