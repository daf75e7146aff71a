"""Store service: the result contract, idempotent writes, and failure records that a person can act on."""
from __future__ import annotations

import json

import jsonschema
import pytest

from services.store.domain import failed_stage, record_failure, store_result
from shared.messages import FailureRequest, StoreRequest
from shared.contracts import schema_path
from shared.errors import PermanentError
from shared.events import STUDY_FAILED, LocalEventLog
from shared.observability import telemetry_record

MODEL = {"name": "m", "version": "1", "provenance": "reference model trained on synthetic phantoms"}


def telemetry(stage: str, ms: float, model: str | None = None) -> dict:
    return telemetry_record(stage=stage, study_id="s1", execution_id="e1", status="succeeded", duration_ms=ms).model_dump(mode="json") | {"model_name": model}


def state() -> dict:
    image = {"bucket": "images", "key": "incoming/s1/image.png", "format": "png", "sha256": "a" * 64, "size_bytes": 1234}
    return {
        "bucket": "images", "key": "incoming/s1/study.json",
        "study": {"study_id": "s1", "image": image, "metadata": {"bucket": "images", "key": "incoming/s1/study.json"},
                  "view_position": "PA", "modality": "DX", "priority": "routine", "telemetry": telemetry("validate", 3.5)},
        "tensors": {"study_id": "s1", "original": {"width": 1000, "height": 800, "bit_depth": 8, "photometric": "MONOCHROME2",
                                 "intensity_rule": "png16-sbit-12bit"},
                    "tensors": {}, "telemetry": telemetry("prepare", 20.0)},
        "inference": [
            {"study_id": "s1", "kind": "classifier", "model": MODEL | {"name": "chest_xray_classifier"}, "telemetry": telemetry("inference", 9, "chest_xray_classifier"),
             "findings": [{"label": "Edema", "probability": 0.8, "threshold": 0.5, "positive": True},
                          {"label": "Cardiomegaly", "probability": 0.1, "threshold": 0.5, "positive": False}]},
            {"study_id": "s1", "kind": "detector", "model": MODEL | {"name": "anomaly_detector"}, "telemetry": telemetry("inference", 11, "anomaly_detector"),
             "detections": [{"label": "nodule_mass", "score": 0.7, "box": [10, 20, 30, 40]}]},
            {"study_id": "s1", "kind": "encoder", "model": MODEL | {"name": "report_encoder"}, "telemetry": telemetry("inference", 7, "report_encoder"),
             "impression": [{"text": "Bilateral perihilar haziness consistent with pulmonary edema.", "similarity": 0.8}]},
        ],
    }


def store_event(s: dict) -> dict:
    return {"study": s["study"], "tensors": s["tensors"], "inference": s["inference"], "execution_id": "e1"}


def test_result_matches_its_schema_and_is_labelled(store):
    event = store_event(state())
    out = store_result(StoreRequest.model_validate(event), event, store, "results")
    result = json.loads(store.get_bytes("results", out.result.key))
    jsonschema.validate(result, json.loads(schema_path("result").read_text()))
    assert result["label"] == "not for clinical use"
    assert result["report"]["label"] == "AI-generated draft, not for clinical use"
    assert result["findings"][0] == {"label": "Edema", "probability": 0.8, "threshold": 0.5, "positive": True}
    assert result["detections"][0]["box"] == [10, 20, 30, 40]
    assert result["input"] == {"image": {"bucket": "images", "key": "incoming/s1/image.png"}, "sha256": "a" * 64, "size_bytes": 1234, "width": 1000, "height": 800, "intensity_rule": "png16-sbit-12bit"}
    assert result["timings_ms"] == {"study": 3.5, "tensors": 20.0, "inference.chest_xray_classifier": 9, "inference.anomaly_detector": 11, "inference.report_encoder": 7}
    assert set(result["models"]) == {"chest_xray_classifier", "anomaly_detector", "report_encoder"}
    assert out.positive_findings == ["Edema"]
    report = store.get_bytes("results", "results/s1/report.txt").decode()
    assert "AI-GENERATED DRAFT, NOT FOR CLINICAL USE" in report and "Suggested findings: Edema." in report


def test_writing_twice_leaves_one_result(store):
    event = store_event(state())
    for _ in range(2):
        store_result(StoreRequest.model_validate(event), event, store, "results")
    assert store.list_keys("results") == ["results/s1/report.txt", "results/s1/result.json"]


def test_a_missing_model_output_is_refused(store):
    event = store_event(state())
    event["inference"] = event["inference"][:2]
    with pytest.raises(PermanentError, match="model outputs missing for: encoder"):
        store_result(StoreRequest.model_validate(event), event, store, "results")


@pytest.mark.parametrize(("drop", "stage"), [("study", "validate"), ("tensors", "prepare"), ("inference", "inference")])
def test_failed_stage_is_the_first_missing_output(drop, stage):
    s = state()
    for key in ("study", "tensors", "inference")[("study", "tensors", "inference").index(drop):]:
        s.pop(key)
    assert failed_stage(s) == stage


def test_failure_record_keeps_our_message_and_points_at_the_input(store):
    s = state()
    del s["inference"]
    s["error"] = {"Error": "InferenceUnavailable", "Cause": json.dumps({"errorMessage": "study s1: triton at http://x:8000 is not reachable", "errorType": "InferenceUnavailable"})}
    events = LocalEventLog(store.root)
    out = record_failure(FailureRequest(bucket="images", key="incoming/s1/study.json", state=s, execution_id="e1"), store, "results", events)
    record = json.loads(store.get_bytes("results", "failed/s1/error.json"))
    jsonschema.validate(record, json.loads(schema_path("failure").read_text()))
    assert record["stage"] == "inference" and record["error_type"] == "InferenceUnavailable"
    assert record["message"] == "study s1: triton at http://x:8000 is not reachable"
    assert record["input"] == {"bucket": "images", "key": "incoming/s1/study.json"}
    # Telemetry: the two stages that ran, then the failed one.
    assert [(r["stage"], r["status"]) for r in out.records] == [("validate", "succeeded"), ("prepare", "succeeded"), ("inference", "failed")]
    (event,) = events.read()
    assert event["detail-type"] == STUDY_FAILED and event["source"] == "radstream"
    assert event["detail"]["study_id"] == "s1" and event["detail"]["error_type"] == "InferenceUnavailable"
    assert event["detail"]["failure"] == {"bucket": "results", "key": "failed/s1/error.json"}


def test_unexpected_errors_do_not_leak_their_text(store):
    s = {"bucket": "images", "key": "incoming/s9/study.json", "error": {"Error": "KeyError", "Cause": json.dumps({"errorMessage": "'DOE^JANE'"})}}
    events = LocalEventLog(store.root)
    record_failure(FailureRequest(bucket="images", key="incoming/s9/study.json", state=s, execution_id="e7"), store, "results", events)
    assert "DOE^JANE" not in events.path.read_text()
    record = json.loads(store.get_bytes("results", "failed/s9/error.json"))
    assert record["study_id"] == "s9" and record["stage"] == "validate"
    assert "DOE^JANE" not in json.dumps(record)
    assert record["message"] == "unexpected KeyError in the validate stage; see the logs of execution e7"
