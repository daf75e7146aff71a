"""The lake's model tables beside telemetry: what each model version said about each study, in rows the named queries read.

Layout, in the telemetry bucket (Glue tables in template.yaml, DuckDB locally; docs/model-lifecycle.md):

    model_outputs/role=live|shadow/dt=YYYY-MM-DD/<study_id>-<execution digest>.ndjson.gz

gzip NDJSON, one object per study and writer (the store stage for live, the Shadow branch for shadow), named by study
and execution so a retried write replaces its own object with the same rows. A re-run is a new execution: the queries
keep each study's latest rows per model version.

A row is one label of one model version on one study: the classifier's probability and decision, or the detector's
highest box score for the label. No image data and no patient data: the pseudonymous study id only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from shared.messages import ModelOutput, OriginalImage, ValidatedStudy
from shared.storage import ObjectStore, StoredObject

MODEL_OUTPUTS = "model_outputs"
# Not `.json.gz`: the telemetry table's objects keep that ending to themselves (tools and tests glob it under the bucket).
# Athena picks the gzip codec by the `.gz` ending either way.
SUFFIX = ".ndjson.gz"
Role = Literal["live", "shadow"]


# What the live rows carry about the study's input (the store stage knows it; a shadow row's study has it on its live
# rows): per-site and per-scanner metrics and the drift queries read them. None of it identifies a patient.
INPUT_COLUMNS = ("site", "scanner", "modality", "view_position", "width", "height", "bit_depth", "exposure")


def study_inputs(study: ValidatedStudy, original: OriginalImage) -> dict[str, Any]:
    return {
        "site": study.site,
        "scanner": study.scanner,
        "modality": study.modality,
        "view_position": study.view_position,
        "width": original.width,
        "height": original.height,
        "bit_depth": original.bit_depth,
        "exposure": original.exposure,
    }


def model_output_rows(
    output: ModelOutput,
    *,
    role: Role,
    execution_id: str,
    time: datetime,
    latency_ms: float | None,
    inputs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per label the model decides on (none for an encoder: it decides on no label)."""
    if output.model is None or output.kind == "encoder":
        return []
    base = {
        **{c: (inputs or {}).get(c) for c in INPUT_COLUMNS},
        "time": time.isoformat(),
        "study_id": output.study_id,
        "execution_id": execution_id,
        "model_name": output.model.name,
        "model_version": output.model.version,
        "kind": output.kind,
        "latency_ms": latency_ms,
    }
    rows = []
    if output.kind == "classifier":
        for f in output.findings or []:
            rows.append({**base, "label": f.label, "probability": f.probability, "threshold": f.threshold, "positive": f.positive})
    else:
        best: dict[str, float] = {}
        for d in output.detections or []:
            best[d.label] = max(best.get(d.label, 0.0), d.score)
        for label in output.labels or sorted(best):
            score = best.get(label)
            rows.append({**base, "label": label, "probability": score, "threshold": None, "positive": score is not None})
    return rows


def lake_key(table: str, role: str, time: datetime, study_id: str, execution_id: str, suffix: str = "") -> str:
    digest = hashlib.sha256(execution_id.encode()).hexdigest()[:12]
    return f"{table}/role={role}/dt={time.strftime('%Y-%m-%d')}/{study_id}-{digest}{suffix}{SUFFIX}"


def ndjson_gz(rows: Iterable[dict[str, Any]]) -> bytes:
    body = "".join(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n" for row in rows).encode()
    return gzip.compress(body, mtime=0)


def put_rows(
    store: ObjectStore,
    bucket: str,
    table: str,
    role: str,
    time: datetime,
    study_id: str,
    execution_id: str,
    rows: list[dict[str, Any]],
    suffix: str = "",
) -> StoredObject | None:
    if not rows:
        return None
    key = lake_key(table, role, time, study_id, execution_id, suffix)
    return store.put_bytes(bucket, key, ndjson_gz(rows), content_type="application/x-ndjson")
