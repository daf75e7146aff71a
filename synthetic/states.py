"""The workflow's state as StoreResults (and ExportResults after it) receives it: one study, its tensors, three models' outputs."""

from __future__ import annotations

import hashlib

from shared.contracts import Stage
from shared.observability import telemetry_record
from shared.storage import ObjectStore

MODEL = {"name": "m", "version": "1", "provenance": "reference model trained on synthetic phantoms"}


def telemetry(stage: Stage, ms: float, model: str | None = None) -> dict:
    return telemetry_record(stage=stage, study_id="s1", execution_id="e1", status="succeeded", duration_ms=ms).model_dump(mode="json") | {
        "model_name": model
    }


def state() -> dict:
    """Study s1 (execution e1): an 8-bit PNG, Edema positive, one nodule box, ten report candidates."""
    image = {"bucket": "images", "key": "incoming/s1/image.png", "format": "png", "sha256": "a" * 64, "size_bytes": 1234}
    return {
        "bucket": "images",
        "key": "incoming/s1/study.json",
        "study": {
            "study_id": "s1",
            "image": image,
            "metadata": {"bucket": "images", "key": "incoming/s1/study.json"},
            "view_position": "PA",
            "modality": "DX",
            "priority": "routine",
            "telemetry": telemetry("validate", 3.5),
        },
        "tensors": {
            "study_id": "s1",
            "original": {
                "width": 1000,
                "height": 800,
                "bit_depth": 8,
                "photometric": "MONOCHROME2",
                "intensity_rule": "png16-sbit12-percentile",
            },
            "tensors": {},
            "telemetry": telemetry("prepare", 20.0),
        },
        "inference": [
            {
                "study_id": "s1",
                "kind": "classifier",
                "model": MODEL | {"name": "chest_xray_classifier"},
                "telemetry": telemetry("inference", 9, "chest_xray_classifier"),
                "findings": [
                    {"label": "Edema", "probability": 0.8, "threshold": 0.5, "positive": True},
                    {"label": "Cardiomegaly", "probability": 0.1, "threshold": 0.5, "positive": False},
                ],
            },
            {
                "study_id": "s1",
                "kind": "detector",
                "model": MODEL | {"name": "anomaly_detector"},
                "telemetry": telemetry("inference", 11, "anomaly_detector"),
                "labels": ["nodule_mass", "focal_opacity"],
                "detections": [{"label": "nodule_mass", "score": 0.7, "box": [10, 20, 30, 40]}],
            },
            {
                "study_id": "s1",
                "kind": "encoder",
                "model": MODEL | {"name": "report_encoder"},
                "telemetry": telemetry("inference", 7, "report_encoder"),
                "candidates": [sentence(*c) for c in CANDIDATES],
            },
        ],
    }


# Ranked as an encoder might rank them for a study with edema and a nodule, and no cardiomegaly.
CANDIDATES = [
    ("No acute cardiopulmonary abnormality.", 0.9, [], ["Cardiomegaly", "Edema", "nodule_mass", "focal_opacity"]),  # denies the edema
    ("No pulmonary edema.", 0.85, [], ["Edema"]),  # denies the edema
    ("Bilateral perihilar haziness consistent with pulmonary edema.", 0.8, ["Edema"], []),
    ("Heart size is enlarged.", 0.75, ["Cardiomegaly"], []),  # asserts a negative
    ("No pulmonary nodule or mass.", 0.7, [], ["nodule_mass"]),  # denies the boxed nodule
    ("Nodule or mass in the right lung.", 0.65, ["nodule_mass"], []),
    ("Nodule or mass in the left lung.", 0.6, ["nodule_mass"], []),  # a second nodule sentence
    ("No pneumothorax.", 0.55, [], ["Pneumothorax"]),  # no model decides on it
    ("Heart size is normal.", 0.5, [], ["Cardiomegaly"]),
    ("Focal opacity in the left lung.", 0.45, ["focal_opacity"], []),  # no such box
]


def sentence(text: str, similarity: float, asserts: list[str], negates: list[str]) -> dict:
    return {"text": text, "similarity": similarity, "asserts": asserts, "negates": negates}


def store_event(s: dict) -> dict:
    return {"study": s["study"], "tensors": s["tensors"], "inference": s["inference"], "execution_id": "e1"}


def with_dicom_upload(s: dict, store: ObjectStore, data: bytes) -> dict:
    """`s` (state()) with `data` as its DICOM upload, put in the images bucket where validate found it."""
    store.put_bytes("images", "incoming/s1/study.dcm", data)
    s["study"]["image"] |= {
        "key": "incoming/s1/study.dcm",
        "format": "dicom",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
    }
    return s


def stored_result(s: dict, execution_id: str = "e1") -> dict:
    """result.json as StoreResults writes it for `s` (state(), its image possibly replaced): what ExportResults reads.

    services/store/tests/test_store.py holds StoreResults to this document, so the export tests that start from it
    start from what the store service writes, without importing that service."""
    image, original = s["study"]["image"], s["tensors"]["original"]
    model = {name: MODEL | {"name": name} for name in ("chest_xray_classifier", "anomaly_detector", "report_encoder")}
    return {
        "schema_version": "1",
        "study_id": "s1",
        "status": "succeeded",
        "label": "not for clinical use",
        "input": {
            "image": {"bucket": image["bucket"], "key": image["key"]},
            "sha256": image["sha256"],
            "size_bytes": image["size_bytes"],
            "width": original["width"],
            "height": original["height"],
            "intensity_rule": original["intensity_rule"],
            "quality_flags": [],
        },
        "identifiers": None,
        "modality": "DX",
        "view_position": "PA",
        "priority": "routine",
        "execution_id": execution_id,
        "completed_at": "2026-03-01T10:21:00Z",
        "end_to_end_ms": None,
        "models": model,
        "findings": [
            {"label": "Edema", "probability": 0.8, "threshold": 0.5, "positive": True, "high_specificity_threshold": None},
            {"label": "Cardiomegaly", "probability": 0.1, "threshold": 0.5, "positive": False, "high_specificity_threshold": None},
        ],
        "detections": [{"label": "nodule_mass", "score": 0.7, "box": [10.0, 20.0, 30.0, 40.0]}],
        "report": {
            "label": "AI-generated draft, not for clinical use",
            "findings_text": "Suggested findings: Edema.",
            "impression": [
                {"text": "Bilateral perihilar haziness consistent with pulmonary edema.", "similarity": 0.8},
                {"text": "Nodule or mass in the right lung.", "similarity": 0.65},
                {"text": "Heart size is normal.", "similarity": 0.5},
            ],
            "embedding_model": model["report_encoder"],
        },
        "timings_ms": {
            "study": 3.5,
            "tensors": 20.0,
            "inference.chest_xray_classifier": 9.0,
            "inference.anomaly_detector": 11.0,
            "inference.report_encoder": 7.0,
        },
        "critical_findings": None,  # as StoreResults writes it: the notify stage fills it
    }
