"""The training script runs end to end in --quick mode into a temp dir (needs torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[2]


def test_quick_training_writes_a_complete_repository(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "model_repository"
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "training" / "train_reference_models.py"),
            "--quick",
            "--out",
            str(out),
            "--summary",
            str(summary),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("chest_xray_classifier", "anomaly_detector", "report_encoder"):
        d = out / name
        for rel in ("config.pbtxt", "labels.txt", "thresholds.json", "MODEL_CARD.md", "metrics.json", "1/model.onnx"):
            assert (d / rel).is_file(), f"{name}/{rel}"
        card = (d / "MODEL_CARD.md").read_text()
        assert "synthetic" in card and "NOT clinically validated" in card.replace("\n> ", " ")
        assert (d / "1" / "model.onnx").stat().st_size < 3_000_000
    assert (out / "report_encoder" / "1" / "sentence_bank.json").is_file()
    s = json.loads(summary.read_text())
    assert s["quick"] is True
    assert set(s["chest_xray_classifier"]["auroc"]) == {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}
