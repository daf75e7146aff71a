"""`sam local invoke -e events/...` fixtures: each parses into its stage's request model, and the S3 event
matches the StudyUploaded rule read from template.yaml (never a copy of its pattern)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radstream.eventpattern import apply_input_transformer, matches
from radstream.template import Template
from services.prepare.domain import PrepareRequest
from services.store.domain import FailureRequest, StoreRequest
from services.telemetry.domain import TelemetryRequest
from services.triton.domain import InferenceRequest
from services.validate.domain import ValidateRequest
from shared.contracts import TelemetryRecord

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
MODELS = {
    "validate": ValidateRequest,
    "prepare": PrepareRequest,
    "inference": InferenceRequest,
    "store": StoreRequest,
    "record-failure": FailureRequest,
    "telemetry": TelemetryRequest,
}
FIXTURES = sorted((folder, path) for folder in MODELS for path in (EVENTS / folder).glob("*.json"))


def test_every_service_has_a_fixture():
    assert {folder for folder, _ in FIXTURES} == set(MODELS)


@pytest.mark.parametrize(("folder", "path"), FIXTURES, ids=[f"{f}/{p.name}" for f, p in FIXTURES])
def test_fixture_parses_into_the_request_model(folder, path):
    request = MODELS[folder].model_validate(json.loads(path.read_text()))
    assert request.execution_id.startswith("arn:aws:states:")


def test_telemetry_fixture_records_are_contract_records():
    for path in (EVENTS / "telemetry").glob("*.json"):
        records = json.loads(path.read_text())["records"]
        flat = [r for item in records for r in (item if isinstance(item, list) else [item])]
        assert all(TelemetryRecord.model_validate(r) for r in flat)


def test_s3_event_matches_the_template_rule_and_transforms_into_validate_input():
    event = json.loads((EVENTS / "eventbridge" / "s3-object-created.json").read_text())
    bucket = event["detail"]["bucket"]["name"]
    (rule,) = Template(ROOT / "template.yaml").event_rules(
        {"IMAGES_BUCKET": bucket, "RESULTS_BUCKET": "r", "TELEMETRY_BUCKET": "t", "ARTIFACTS_BUCKET": "a"}
    )
    assert matches(rule.pattern, event)
    execution_input = apply_input_transformer(rule.input_paths_map, rule.input_template, event)
    assert ValidateRequest.model_validate(execution_input).key == "incoming/demo-001/study.json"

    image_upload = json.loads(json.dumps(event))
    image_upload["detail"]["object"]["key"] = "incoming/demo-001/image.png"
    assert not matches(rule.pattern, image_upload), "the image's own upload must not start a second execution"
    other_bucket = json.loads(json.dumps(event))
    other_bucket["detail"]["bucket"]["name"] = "someone-elses-bucket"
    assert not matches(rule.pattern, other_bucket)


def test_local_invoke_env_names_every_setting_the_functions_read():
    env = json.loads((EVENTS / "env.json").read_text())["Parameters"]
    assert env["RADSTREAM_BACKEND"] == "aws"
    assert {"IMAGES_BUCKET", "RESULTS_BUCKET", "TELEMETRY_BUCKET", "ARTIFACTS_BUCKET", "TELEMETRY_STREAM_NAME"} <= set(env)
