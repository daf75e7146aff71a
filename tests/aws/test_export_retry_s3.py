"""`radstream export --retry` against a stack's results bucket (S3, here the emulator): the dead letter's FHIR bundle
is sent again and the letter deleted from S3."""

from __future__ import annotations

import json
from datetime import datetime, UTC

from radstream.cli import main
from services.export.deliver import DeadLetter, dead_letter_key
from synthetic.peers import Endpoint
from shared.contracts import ObjectRef
from shared.messages import ExportedResult
from shared.storage import S3ObjectStore


def test_export_retry_replays_a_dead_letter_in_s3(emulator, bucket, monkeypatch, tmp_path, capsys):
    store = S3ObjectStore(emulator.client("s3"))
    bundle = json.dumps({"resourceType": "Bundle", "type": "collection"}).encode()
    store.put_bytes(bucket, "results/s3-study/report.fhir.json", bundle)
    letter = DeadLetter(
        study_id="s3-study",
        execution_id="arn:aws:states:eu-west-1:000000000000:execution:wf:run-1",
        failed_at=datetime.now(UTC),
        error_type="DeliveryUnavailable",
        message="FHIR cannot be reached",
        destinations=["fhir:http://old"],
        exported=ExportedResult(study_id="s3-study", fhir=ObjectRef(bucket=bucket, key="results/s3-study/report.fhir.json")),
    )
    key = dead_letter_key(letter.study_id, letter.execution_id)
    assert key == "export-failed/s3-study/run-1.json"
    store.put_bytes(bucket, key, letter.model_dump_json().encode())
    monkeypatch.setenv("RADSTREAM_BACKEND", "aws")
    monkeypatch.setenv("RESULTS_BUCKET", bucket)
    endpoint = Endpoint(status=201)
    try:
        assert main(["export", "--data-dir", str(tmp_path)]) == 0
        assert f"{key}: DeliveryUnavailable" in capsys.readouterr().out
        assert main(["export", "--retry", "--data-dir", str(tmp_path), "--fhir-url", endpoint.url]) == 0
    finally:
        endpoint.close()
    assert "1 delivered, 0 still failing" in capsys.readouterr().out
    assert [body for _, body in endpoint.received] == [bundle]
    assert store.list_keys(bucket, "export-failed/") == []
