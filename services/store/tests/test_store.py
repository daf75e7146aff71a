"""Store service: the result contract, idempotent writes, and failure records that a person can act on."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, UTC

import jsonschema
import numpy as np
import pydicom
import pytest

from services.store.domain import failed_stage, record_failure, store_result
from shared.messages import FailureRequest, StoreRequest
from shared.contracts import schema_path
from shared.errors import InvalidImage, PermanentError
from shared.events import STUDY_FAILED, LocalEventLog
from synthetic.states import state, store_event, stored_result, with_dicom_upload


def test_result_matches_its_schema_and_is_labelled(store):
    event = store_event(state())
    out = store_result(StoreRequest.model_validate(event), event, store, "results")
    result = json.loads(store.get_bytes("results", out.result.key))
    jsonschema.validate(result, json.loads(schema_path("result").read_text()))
    assert result["label"] == "not for clinical use"
    assert result["report"]["label"] == "AI-generated draft, not for clinical use"
    assert result["findings"][0] == {
        "label": "Edema",
        "probability": 0.8,
        "threshold": 0.5,
        "positive": True,
        "high_specificity_threshold": None,
    }
    assert result["detections"][0]["box"] == [10, 20, 30, 40]
    assert result["input"] == {
        "image": {"bucket": "images", "key": "incoming/s1/image.png"},
        "sha256": "a" * 64,
        "size_bytes": 1234,
        "width": 1000,
        "height": 800,
        "intensity_rule": "png16-sbit12-percentile",
        "quality_flags": [],
    }
    assert result["timings_ms"] == {
        "study": 3.5,
        "tensors": 20.0,
        "inference.chest_xray_classifier": 9,
        "inference.anomaly_detector": 11,
        "inference.report_encoder": 7,
    }
    assert set(result["models"]) == {"chest_xray_classifier", "anomaly_detector", "report_encoder"}
    assert out.positive_findings == ["Edema"]
    assert (result["modality"], result["view_position"], result["identifiers"]) == ("DX", "PA", None)
    report = store.get_bytes("results", "results/s1/report.txt").decode()
    assert "AI-GENERATED DRAFT, NOT FOR CLINICAL USE" in report and "Suggested findings: Edema." in report


def test_the_result_is_the_one_the_export_tests_start_from(store):
    """synthetic.states.stored_result is what the export service's tests read as result.json: it must stay what we write."""
    event = store_event(state())
    out = store_result(StoreRequest.model_validate(event), event, store, "results")
    written = json.loads(store.get_bytes("results", out.result.key))
    expected = stored_result(state())
    assert written.pop("completed_at") and expected.pop("completed_at")
    assert written == expected


def test_quality_flags_reach_the_result_and_the_report_and_change_no_finding(store):
    plain, flagged = store_event(state()), store_event(state())
    flagged["tensors"]["original"]["quality_flags"] = ["polarity_suspicious", "low_contrast"]
    results = {}
    for name, event in (("plain", plain), ("flagged", flagged)):
        out = store_result(StoreRequest.model_validate(event), event, store, f"results-{name}")
        results[name] = json.loads(store.get_bytes(f"results-{name}", out.result.key))
        jsonschema.validate(results[name], json.loads(schema_path("result").read_text()))
    assert results["flagged"]["input"]["quality_flags"] == ["polarity_suspicious", "low_contrast"]
    for key in ("findings", "detections"):
        assert results["flagged"][key] == results["plain"][key]
    assert results["flagged"]["report"]["impression"] == results["plain"]["report"]["impression"]
    report = store.get_bytes("results-flagged", "results/s1/report.txt").decode()
    assert "Input quality flags (findings unchanged):" in report
    assert "- polarity_suspicious: the picture looks inverted" in report and "- low_contrast:" in report
    assert "quality flags" not in store.get_bytes("results-plain", "results/s1/report.txt").decode()
    flagged["tensors"]["original"]["quality_flags"] = ["blurry"]  # not a flag of the contract
    with pytest.raises(ValueError, match="quality_flags"):
        StoreRequest.model_validate(flagged)


def test_impression_agrees_with_the_findings_and_the_boxes(store):
    event = store_event(state())
    out = store_result(StoreRequest.model_validate(event), event, store, "results")
    result = json.loads(store.get_bytes("results", out.result.key))
    assert [s["text"] for s in result["report"]["impression"]] == [
        "Bilateral perihilar haziness consistent with pulmonary edema.",
        "Nodule or mass in the right lung.",
        "Heart size is normal.",
    ]
    assert result["report"]["impression"][0] == {"text": "Bilateral perihilar haziness consistent with pulmonary edema.", "similarity": 0.8}


def test_without_any_positive_the_normal_sentence_is_allowed(store):
    event = store_event(state())
    event["inference"][0]["findings"][0]["positive"] = False
    event["inference"][1]["detections"] = []
    out = store_result(StoreRequest.model_validate(event), event, store, "results")
    impression = [s["text"] for s in json.loads(store.get_bytes("results", out.result.key))["report"]["impression"]]
    assert impression == ["No acute cardiopulmonary abnormality.", "No pulmonary edema.", "No pulmonary nodule or mass."]


def test_end_to_end_time_runs_from_the_execution_start(store):
    event = store_event(state()) | {"started_at": (datetime.now(UTC) - timedelta(seconds=2)).isoformat()}
    out = store_result(StoreRequest.model_validate(event), event, store, "results")
    result = json.loads(store.get_bytes("results", out.result.key))
    assert 2000 <= result["end_to_end_ms"] < 60_000


def test_dicom_identifiers_are_read_from_the_upload_not_the_state(store):
    from synthetic.samples import dicom_bytes

    data = dicom_bytes(np.full((64, 64), 2000), patient_name="ROE^RICHARD", accession_number="ACC0042", birth_date="19580412")
    event = store_event(with_dicom_upload(state(), store, data))
    out = store_result(StoreRequest.model_validate(event), event, store, "results")
    result = json.loads(store.get_bytes("results", out.result.key))
    ds = pydicom.dcmread(io.BytesIO(data))
    assert result["identifiers"] == {
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
        "AccessionNumber": ds.AccessionNumber,
    }
    written = b"".join(store.get_bytes("results", k) for k in store.list_keys("results"))
    assert b"ROE^RICHARD" not in written and b"MRN-" not in written
    assert ds.StudyInstanceUID.encode() not in store.get_bytes("results", "results/s1/report.txt")
    assert ds.AccessionNumber not in out.model_dump_json()


def test_malformed_identifiers_are_kept_as_stored_and_never_quoted_in_logs(store, caplog, recwarn):
    from pydicom import config

    from synthetic.samples import dicom_bytes

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.full((64, 64), 2000), accession_number="ACC0042")))
    buffer = io.BytesIO()
    previous, config.settings.writing_validation_mode = config.settings.writing_validation_mode, config.IGNORE
    try:
        ds.StudyInstanceUID = "1.2.SECRETUID"  # not a valid UI value: reading it as pydicom values would warn, quoting it
        ds.save_as(buffer)
    finally:
        config.settings.writing_validation_mode = previous
    data = buffer.getvalue()
    event = store_event(with_dicom_upload(state(), store, data))
    recwarn.clear()
    caplog.clear()
    with caplog.at_level("DEBUG"):
        out = store_result(StoreRequest.model_validate(event), event, store, "results")
    assert json.loads(store.get_bytes("results", out.result.key))["identifiers"]["StudyInstanceUID"] == "1.2.SECRETUID"
    from shared.observability import logger

    assert "SECRETUID" not in "\n".join(logger.registered_formatter.format(r) for r in caplog.records)  # messages and fields
    assert not [w for w in recwarn if "SECRETUID" in str(w.message)]


def test_a_dicom_changed_after_validation_is_refused(store):
    from synthetic.samples import dicom_bytes

    data = dicom_bytes(np.full((64, 64), 2000), patient_name="ROE^RICHARD", accession_number="ACC0042", birth_date="19580412")
    store.put_bytes("images", "incoming/s1/study.dcm", data)
    event = store_event(state())
    event["study"]["image"] |= {"key": "incoming/s1/study.dcm", "format": "dicom", "sha256": "b" * 64, "size_bytes": len(data)}
    with pytest.raises(InvalidImage, match="changed in the images bucket") as err:
        store_result(StoreRequest.model_validate(event), event, store, "results")
    assert "ROE" not in str(err.value)


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
    for key in ("study", "tensors", "inference")[("study", "tensors", "inference").index(drop) :]:
        s.pop(key)
    assert failed_stage(s) == stage


def test_failure_record_keeps_our_message_and_points_at_the_input(store):
    s = state()
    del s["inference"]
    s["error"] = {
        "Error": "InferenceUnavailable",
        "Cause": json.dumps({"errorMessage": "study s1: triton at http://x:8000 is not reachable", "errorType": "InferenceUnavailable"}),
    }
    events = LocalEventLog(store.root)
    out = record_failure(
        FailureRequest(bucket="images", key="incoming/s1/study.json", state=s, execution_id="e1"), store, "results", events
    )
    record = json.loads(store.get_bytes("results", "failed/s1/error.json"))
    jsonschema.validate(record, json.loads(schema_path("failure").read_text()))
    assert record["stage"] == "inference" and record["error_type"] == "InferenceUnavailable"
    assert record["message"] == "study s1: triton at http://x:8000 is not reachable"
    assert record["input"] == {"bucket": "images", "key": "incoming/s1/study.json"}
    # Telemetry: the two stages that ran, then the failed one.
    assert [(r["stage"], r["status"]) for r in out.records] == [
        ("validate", "succeeded"),
        ("prepare", "succeeded"),
        ("inference", "failed"),
    ]
    (event,) = events.read()
    assert event["detail-type"] == STUDY_FAILED and event["source"] == "radstream"
    assert event["detail"]["study_id"] == "s1" and event["detail"]["error_type"] == "InferenceUnavailable"
    assert event["detail"]["failure"] == {"bucket": "results", "key": "failed/s1/error.json"}


def test_unexpected_errors_do_not_leak_their_text(store):
    s = {
        "bucket": "images",
        "key": "incoming/s9/study.json",
        "error": {"Error": "KeyError", "Cause": json.dumps({"errorMessage": "'DOE^JANE'"})},
    }
    events = LocalEventLog(store.root)
    record_failure(FailureRequest(bucket="images", key="incoming/s9/study.json", state=s, execution_id="e7"), store, "results", events)
    assert "DOE^JANE" not in events.path.read_text()
    record = json.loads(store.get_bytes("results", "failed/s9/error.json"))
    assert record["study_id"] == "s9" and record["stage"] == "validate"
    assert "DOE^JANE" not in json.dumps(record)
    assert record["message"] == "unexpected KeyError in the validate stage; see the logs of execution e7"


def test_a_failed_rerun_supersedes_the_earlier_result_and_loses_nothing(store):
    """One study, one record: the latest run's failure is what the study says; the earlier result is kept aside, named."""
    event = store_event(state())
    store_result(StoreRequest.model_validate(event), event, store, "results")
    before = store.get_bytes("results", "results/s1/result.json")
    failed = state() | {
        "error": {"Error": "InvalidImage", "Cause": json.dumps({"errorMessage": "study s1: image decodes to a constant value"})}
    }
    del failed["tensors"], failed["inference"]
    request = FailureRequest(
        bucket="images", key="incoming/s1/study.json", state=failed, execution_id="arn:aws:states:local:0:execution:sm:s1-rerun"
    )
    record_failure(request, store, "results", LocalEventLog(store.root))
    assert store.head("results", "results/s1/result.json") is None and store.head("results", "results/s1/report.txt") is None
    record = json.loads(store.get_bytes("results", "failed/s1/error.json"))
    assert record["superseded_result"] == {"bucket": "results", "key": "superseded/s1/s1-rerun/result.json"}
    assert store.get_bytes("results", "superseded/s1/s1-rerun/result.json") == before
    assert store.head("results", "superseded/s1/s1-rerun/report.txt") is not None
