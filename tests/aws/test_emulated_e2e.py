"""One study through the emulated AWS: S3 upload -> EventBridge (the rule from template.yaml) -> the workflow
with the AWS adapters -> result.json in the results bucket and telemetry in the Kinesis stream.

moto stands in for S3, EventBridge, SQS and Kinesis; the rule's target is an SQS queue (moto delivers matched
events to SQS targets), from which the test takes the event to the workflow, as Step Functions would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthetic.images import gradient_png
from synthetic.samples import make_sidecar
from radstream.eventpattern import apply_input_transformer
from radstream.runtime import LocalRuntime
from radstream.template import Template
from shared.settings import DEFAULT_MODEL_REPOSITORY, Settings

from .conftest import REGION

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("chest_xray_classifier", "anomaly_detector", "report_encoder")
ACCOUNT = "123456789012"


def models_missing() -> list[str]:
    return [m for m in MODELS if not list((DEFAULT_MODEL_REPOSITORY / m).glob("*/model.onnx"))]


@pytest.fixture
def deployment(emulator, tmp_path):
    """The stack's buckets, stream and rule, created in the emulator with the template's names and pattern."""
    settings = Settings(
        backend="aws",
        data_dir=tmp_path / "data",
        telemetry_stream="radstream-telemetry-test",
        images_bucket=f"radstream-images-{ACCOUNT}",
        results_bucket=f"radstream-results-{ACCOUNT}",
        telemetry_bucket=f"radstream-telemetry-{ACCOUNT}",
        artifacts_bucket=f"radstream-artifacts-{ACCOUNT}",
    )
    s3, kinesis, events, sqs = (emulator.client(s) for s in ("s3", "kinesis", "events", "sqs"))
    for bucket in (settings.images_bucket, settings.results_bucket, settings.telemetry_bucket, settings.artifacts_bucket):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_notification_configuration(Bucket=settings.images_bucket, NotificationConfiguration={"EventBridgeConfiguration": {}})
    kinesis.create_stream(StreamName=settings.telemetry_stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=settings.telemetry_stream, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})

    (rule,) = Template(ROOT / "template.yaml").event_rules(settings.to_env())
    queue_url = sqs.create_queue(QueueName="workflow-starts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=rule.name, EventPattern=json.dumps(rule.pattern))
    events.put_targets(Rule=rule.name, Targets=[{"Id": "workflow", "Arn": queue_arn}])
    return settings, rule, queue_url


def upload(emulator, settings: Settings, study_id: str, sidecar: dict, image: bytes) -> None:
    s3 = emulator.client("s3")
    s3.put_object(Bucket=settings.images_bucket, Key=f"incoming/{study_id}/image.png", Body=image)
    s3.put_object(Bucket=settings.images_bucket, Key=f"incoming/{study_id}/study.json", Body=json.dumps(sidecar).encode())


def routed_events(emulator, queue_url: str) -> list[dict]:
    sqs, found = emulator.client("sqs"), []
    for _ in range(5):  # bounded: moto delivers synchronously, so the first receive normally has them all
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not messages and found:
            break
        found += [json.loads(m["Body"]) for m in messages]
    return found


def telemetry(emulator, stream: str) -> list[dict]:
    kinesis = emulator.client("kinesis")
    shard = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    return [json.loads(r["Data"]) for r in kinesis.get_records(ShardIterator=iterator)["Records"]]


def run_workflow(settings: Settings, rule, event: dict):
    execution_input = apply_input_transformer(rule.input_paths_map, rule.input_template, event)
    runtime = LocalRuntime(settings, ROOT / "template.yaml")
    try:
        return runtime.start(execution_input)
    finally:
        runtime.close()


@pytest.mark.skipif(
    bool(models_missing()),
    reason=f"the reference ONNX models are not in services/triton/model_repository yet (missing: {', '.join(models_missing())})",
)
def test_a_study_flows_from_upload_to_result_and_telemetry(emulator, deployment):
    settings, rule, queue_url = deployment
    image = gradient_png(512, 512)
    upload(emulator, settings, "e2e-001", make_sidecar("e2e-001", data=image), image)

    (event,) = routed_events(emulator, queue_url)  # the image's upload does not match; the sidecar's does
    assert event["detail"]["object"]["key"] == "incoming/e2e-001/study.json"
    execution = run_workflow(settings, rule, event)

    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    result = json.loads(emulator.client("s3").get_object(Bucket=settings.results_bucket, Key="results/e2e-001/result.json")["Body"].read())
    assert result["study_id"] == "e2e-001" and result["label"] == "not for clinical use"
    assert {f["label"] for f in result["findings"]} == {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}
    records = telemetry(emulator, settings.telemetry_stream)
    assert {r["stage"] for r in records} >= {"validate", "prepare", "inference", "store", "workflow"}
    assert {r["study_id"] for r in records} == {"e2e-001"}
    tensors = emulator.client("s3").list_objects_v2(Bucket=settings.artifacts_bucket, Prefix="tensors/e2e-001/")
    assert tensors["KeyCount"] == 3


def test_an_invalid_study_ends_with_a_failure_record_and_telemetry(emulator, deployment):
    """The failure path needs no model: a sidecar that breaks the contract is refused and recorded."""
    settings, rule, queue_url = deployment
    image = gradient_png()
    upload(emulator, settings, "e2e-bad", make_sidecar("e2e-bad", data=image, modality="MR"), image)

    (event,) = routed_events(emulator, queue_url)
    execution = run_workflow(settings, rule, event)

    assert execution.status == "FAILED"
    record = json.loads(emulator.client("s3").get_object(Bucket=settings.results_bucket, Key="failed/e2e-bad/error.json")["Body"].read())
    assert (record["stage"], record["error_type"]) == ("validate", "InvalidStudy")
    assert record["input"] == {"bucket": settings.images_bucket, "key": "incoming/e2e-bad/study.json"}
    records = telemetry(emulator, settings.telemetry_stream)
    assert any(r["stage"] == "validate" and r["status"] == "failed" for r in records)
    assert emulator.client("s3").head_object(Bucket=settings.images_bucket, Key="incoming/e2e-bad/image.png")  # the input is kept


@pytest.mark.skipif(
    bool(models_missing()),
    reason=f"the reference ONNX models are not in services/triton/model_repository yet (missing: {', '.join(models_missing())})",
)
def test_a_c_store_to_the_gateway_starts_the_workflow_and_exports_the_sr(emulator, deployment, tmp_path):
    """The AWS path of issue 10: the gateway PUTs to S3, the template's rule matches the .dcm, the workflow (AWS
    adapters) stores the result and, for this DICOM study, the SR and FHIR bundle next to it."""
    import io
    import shutil
    import subprocess

    import pydicom

    from services.gateway.server import Gateway
    from synthetic.instances import cr_instance

    settings, rule, queue_url = deployment
    settings = settings.model_copy(
        update={"gateway_dimse_port": 0, "gateway_http_port": 0, "gateway_pseudonym_key": "e2e-key-0123456789abcdef"}
    )
    data = cr_instance("jpeg-ls-lossless")
    (tmp_path / "cr.dcm").write_bytes(data)
    storescu = shutil.which("storescu")
    assert storescu, "storescu (Debian package dcmtk) is not installed: `make dcmtk`"
    with Gateway(settings) as gateway:
        sent = subprocess.run(
            [storescu, "-xt", "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dimse.port), str(tmp_path / "cr.dcm")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert sent.returncode == 0, sent.stderr

    (event,) = routed_events(emulator, queue_url)
    key = event["detail"]["object"]["key"]
    assert key.startswith("incoming/") and key.endswith(".dcm")
    execution = run_workflow(settings, rule, event)
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    study_id = key.split("/")[1]
    s3 = emulator.client("s3")
    sr = pydicom.dcmread(io.BytesIO(s3.get_object(Bucket=settings.results_bucket, Key=f"results/{study_id}/report.sr.dcm")["Body"].read()))
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert (sr.StudyInstanceUID, sr.Modality) == (source.StudyInstanceUID, "SR")
    fhir = json.loads(s3.get_object(Bucket=settings.results_bucket, Key=f"results/{study_id}/report.fhir.json")["Body"].read())
    assert fhir["entry"][0]["resource"]["resourceType"] == "DiagnosticReport"
    assert "export" in {r["stage"] for r in telemetry(emulator, settings.telemetry_stream)}
