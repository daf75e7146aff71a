"""Drift: the model_drift named query's population stability index fires on a shifted synthetic population and stays
quiet on an unshifted one; daily_distributions gives the per-day, per-site figures the console charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from radstream.analytics import DuckDBQueryRunner
from shared.lake_tables import MODEL_OUTPUTS, put_rows
from shared.storage import LocalObjectStore

CLASSIFIER = "chest_xray_classifier"


def write_population(
    data: Path, when: datetime, prefix: str, rng: np.random.Generator, *, exposure: tuple[float, float], edema: float
) -> None:
    """400 studies (PSI over 10 bins reads ~(bins - 1) * (1/n1 + 1/n2) from sampling alone: 0.045 here, 0.3 at 60 a
    window): exposure uniform in `exposure`, Edema probability around `edema`, 12-bit DX PA from one scanner."""
    rows = []
    for i in range(400):
        p = float(np.clip(rng.normal(edema, 0.08), 0, 1))
        row = {
            "time": when.isoformat(),
            "study_id": f"{prefix}-{i}",
            "execution_id": "e",
            "model_name": CLASSIFIER,
            "model_version": "1",
            "kind": "classifier",
            "label": "Edema",
            "probability": round(p, 4),
            "threshold": 0.5,
            "positive": p >= 0.5,
            "latency_ms": 1.0,
            "site": "site-a",
            "scanner": "Acme DR1",
            "modality": "DX",
            "view_position": "PA",
            "width": 2048,
            "height": 2500,
            "bit_depth": 12,
            "exposure": round(float(rng.uniform(*exposure)), 4),
        }
        rows.append(row)
    put_rows(LocalObjectStore(data), "telemetry", MODEL_OUTPUTS, "live", when, prefix, "e", rows)


def drift(data: Path) -> dict[str, dict]:
    return {r["feature"]: r for r in DuckDBQueryRunner(data / "telemetry").run("model_drift", days=1, baseline_days=28).as_dicts()}


def test_drift_is_quiet_on_an_unshifted_population(tmp_path):
    rng = np.random.default_rng(1)
    now = datetime.now(UTC)
    write_population(tmp_path, now - timedelta(days=10), "base", rng, exposure=(0.35, 0.65), edema=0.3)
    write_population(tmp_path, now, "new", rng, exposure=(0.35, 0.65), edema=0.3)
    found = drift(tmp_path)
    assert {"exposure", "size", "bit_depth", "modality", "view_position", "scanner", "output:Edema"} <= set(found)
    assert all(r["level"] == "stable" for r in found.values()), {f: r["psi"] for f, r in found.items()}
    assert found["exposure"]["baseline_studies"] == found["exposure"]["recent_studies"] == 400


def test_drift_fires_on_a_shifted_population(tmp_path):
    rng = np.random.default_rng(2)
    now = datetime.now(UTC)
    write_population(tmp_path, now - timedelta(days=10), "base", rng, exposure=(0.35, 0.65), edema=0.3)
    # Under-exposed pictures, and the classifier's Edema moving with them (the 0.45x exposure case).
    write_population(tmp_path, now, "new", rng, exposure=(0.1, 0.3), edema=0.75)
    found = drift(tmp_path)
    assert found["exposure"]["level"] == "shifted" and found["output:Edema"]["level"] == "shifted"
    assert found["modality"]["level"] == "stable" and found["scanner"]["psi"] == 0
    daily = DuckDBQueryRunner(tmp_path / "telemetry").run("daily_distributions").as_dicts()
    assert [(r["studies"], r["site"]) for r in daily] == [(400, "site-a"), (400, "site-a")]
    assert daily[0]["mean_exposure"] > 0.4 > daily[1]["mean_exposure"]
