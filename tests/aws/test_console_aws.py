"""The console against a deployed stack's shape: results read from S3 through the object-store port, the named queries
through Athena (AthenaQueryRunner), both over HTTP to the emulator; pages carry no credentials."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, UTC

import cv2
import numpy as np

from shared.pixels import percentile_window
from radstream.console.data import aws_data
from radstream.console.server import ConsoleServer
from synthetic.phantoms import generate_phantom, to_uint8
from shared.settings import Settings

from .conftest import queue_athena_rows

REGION = "eu-west-1"


def test_console_reads_s3_and_athena(emulator) -> None:
    s3 = emulator.client("s3")
    for name in ("radstream-images-test", "radstream-results-test"):
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    emulator.client("athena").create_work_group(
        Name="radstream-dev", Configuration={"ResultConfiguration": {"OutputLocation": "s3://radstream-results-test/athena/"}}
    )
    image = to_uint8(generate_phantom(np.random.default_rng(3), size=320).image)
    s3.put_object(Bucket="radstream-images-test", Key="incoming/s-1/image.png", Body=cv2.imencode(".png", image)[1].tobytes())
    model = {"name": "anomaly_detector", "version": "1", "provenance": "reference model"}
    result = {
        "schema_version": "1",
        "study_id": "s-1",
        "status": "succeeded",
        "label": "not for clinical use",
        "input": {
            "image": {"bucket": "radstream-images-test", "key": "incoming/s-1/image.png"},
            "sha256": "ab" * 32,
            "size_bytes": 1,
            "width": 320,
            "height": 320,
        },
        "execution_id": "arn:aws:states:eu-west-1:123456789012:execution:wf:s-1",
        "completed_at": "2099-01-01T10:00:00Z",
        "models": {"anomaly_detector": model},
        "findings": [{"label": "Edema", "probability": 0.7, "threshold": 0.5, "positive": True}],
        "detections": [{"label": "nodule_mass", "score": 0.8, "box": [10.0, 20.0, 60.0, 90.0]}],
        "report": {
            "label": "AI-generated draft, not for clinical use",
            "findings_text": "Suggested findings: Edema.",
            "impression": [],
            "embedding_model": model,
        },
        "timings_ms": {},
    }
    failure = {
        "schema_version": "1",
        "study_id": "s-2",
        "status": "failed",
        "stage": "validate",
        "error_type": "InvalidStudy",
        "message": "study s-2: sidecar breaks schema v1",
        "input": {"bucket": "radstream-images-test", "key": "incoming/s-2/study.json"},
        "execution_id": "x",
        "failed_at": "2099-01-01T09:00:00Z",
    }
    s3.put_object(Bucket="radstream-results-test", Key="results/s-1/result.json", Body=json.dumps(result).encode())
    s3.put_object(Bucket="radstream-results-test", Key="results/s-1/report.txt", Body=b"AI-GENERATED DRAFT, NOT FOR CLINICAL USE\n")
    s3.put_object(Bucket="radstream-results-test", Key="failed/s-2/error.json", Body=json.dumps(failure).encode())
    queue_athena_rows(
        emulator,
        [
            ("study_id", "varchar"),
            ("execution_id", "varchar"),
            ("status", "varchar"),
            ("error_type", "varchar"),
            ("end_to_end_ms", "double"),
            ("finished_utc", "varchar"),
        ],
        [["s-1", "x", "succeeded", "", "123.4", "2099-01-01 10:00:00"]],
    )

    data = aws_data(Settings(backend="aws", results_bucket="radstream-results-test"), workgroup="radstream-dev", database="radstream_dev")
    data.queries.runner.poll_initial_s = 0.01
    data.clock = lambda: datetime(2099, 1, 2, tzinfo=UTC)  # the records are dated 2099-01-01: inside the window
    data.warm()
    server = ConsoleServer(data)
    server.start_in_thread()
    try:
        studies = urllib.request.urlopen(server.url + "studies", timeout=30).read().decode()
        assert 'data-study="s-1"' in studies and 'data-study="s-2"' in studies
        assert "123 ms" in studies and "InvalidStudy" in studies and "AWS: S3 + Athena" in studies
        study = urllib.request.urlopen(server.url + "study/s-1", timeout=30).read().decode()
        assert 'x="10.0" y="20.0" width="50.0" height="70.0"' in study and "X-Ray" in study
        png = urllib.request.urlopen(server.url + "study/s-1/image.png", timeout=30).read()
        # The picture the models saw, read from S3: the stored 8-bit values under the percentile rule (docs/models.md).
        shown = np.round(percentile_window(image) * 255.0).astype(np.uint8)
        assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE), shown)
        for page in (studies, study):
            assert "testing" not in page and "AWS_SECRET" not in page and "Not for clinical use" in page
    finally:
        server.shutdown()
        server.server_close()
