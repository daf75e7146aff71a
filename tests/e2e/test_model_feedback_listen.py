"""Final reports arriving live: an MLLP client (the `hl7` package's MLLPClient) sends ORU^R01 built with hl7apy to
`radstream models listen`'s MLLP listener, an HTTP client POSTs fhir.resources-built DiagnosticReports (and a
transaction Bundle) to its FHIR endpoint, both on free loopback ports with deadlines; the verdicts land in the lake
through the file import's code and model_performance counts them. Repeats are recorded once; a message that cannot
be understood gets AE / 400 / 422 with the reason; a store that cannot take it now gets AR / 503 and the retry lands."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.client import MLLPClient
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from radstream.analytics import DuckDBQueryRunner
from radstream.feedback_listen import FeedbackReceiver, FhirServer, MllpListener
from shared.errors import StorageUnavailable
from shared.storage import LocalObjectStore, StoredObject
from tests.e2e.test_model_feedback import CELLS, put_study

DEADLINE_S = 30
EDEMA, EFFUSION = "19242006", "60046008"  # SNOMED CT: pulmonary edema, pleural effusion (services/export/codes.py)


class FlakyStore(LocalObjectStore):
    """The lake as a disk that refuses the next `failures` writes under `prefix` (full, read-only): an outage, not bad input."""

    failures = 0
    prefix = ""

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
        if self.failures and key.startswith(self.prefix):
            self.failures -= 1
            raise StorageUnavailable(f"writing s3://{bucket}/{key}: disk full")
        return super().put_bytes(bucket, key, data, content_type=content_type)


@pytest.fixture
def lake(tmp_path) -> Path:
    """The ten Edema studies of test_model_feedback (model positive s0-s3, s8, s9), no verdicts yet."""
    data = tmp_path / "data"
    now = datetime.now(UTC)
    for i, (positive, _) in enumerate(CELLS):
        put_study(LocalObjectStore(data), i, positive, now)
    return data


@pytest.fixture
def store(lake) -> FlakyStore:
    return FlakyStore(lake)


def oru(study_id: str, edema: str, control_id: str, status: str = "F") -> str:
    """An ORU^R01 final report built and validated strictly by hl7apy: OBR-3 the study, OBR-25 the status, OBR-32 the
    interpreter; a CWE OBX on Edema (SNOMED CT; Present 52101004 / Absent 272519000). PID names a patient who must go
    no further than the message."""
    m = Message("ORU_R01", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    m.msh.msh_3 = "RIS"
    m.msh.msh_4 = "HOSP"
    m.msh.msh_5 = "RADSTREAM"
    m.msh.msh_7 = "20261208010000"
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = control_id
    m.msh.msh_11 = "P"
    m.msh.msh_12 = "2.5.1"
    result = m.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_3 = "MRN-88888888^^^HOSP^MR"
    pid.pid_5 = "DOE^JANE"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_3 = f"{study_id}^RADSTREAM"
    order.obr.obr_4 = "18748-4^Diagnostic Imaging Report^LN"
    order.obr.obr_25 = status
    order.obr.obr_32 = "12345&SMITH&JANE"
    obx = order.add_group("ORU_R01_OBSERVATION").obx
    obx.obx_1 = "1"
    obx.obx_2 = "CWE"
    obx.obx_3 = f"{EDEMA}^Pulmonary edema^SCT"
    obx.obx_5 = {"present": "52101004^Present^SCT", "absent": "272519000^Absent^SCT"}[edema]
    obx.obx_11 = "F"
    m.validate()
    return str(m.to_er7())


def send(listener: Any, message: str) -> hl7.Message:
    with MLLPClient(listener.host, listener.port) as client:
        client.socket.settimeout(DEADLINE_S)
        return hl7.parse(client.send_message(message).decode().strip("\x0b\x1c\r"))


def ack_code(ack: hl7.Message) -> str:
    return str(ack.segment("MSA")(1))


def feedback_rows(lake: Path, source: str) -> list[dict[str, Any]]:
    objects = sorted((lake / "telemetry" / "feedback" / f"source={source}").rglob("*.ndjson.gz"))
    return [json.loads(line) for f in objects for line in gzip.decompress(f.read_bytes()).splitlines()]


def performance(lake: Path) -> dict[str, Any]:
    rows = DuckDBQueryRunner(lake / "telemetry").run("model_performance").as_dicts()
    (overall,) = [r for r in rows if r["label"] == "Edema" and r["site"] == "all" and r["scanner"] == "all"]
    return overall


@pytest.fixture
def mllp(store):
    listener = MllpListener(FeedbackReceiver(store), "127.0.0.1", 0)
    yield listener
    listener.close()


def test_oru_over_mllp_is_acknowledged_after_the_write_and_counted_once(mllp, lake):
    """s0 (model: Edema) read present: TP. s5 (model: none) read present: FN. s7 (none) read absent: TN."""
    for i, (study_id, edema) in enumerate((("s0", "present"), ("s5", "present"), ("s7", "absent"))):
        ack = send(mllp, oru(study_id, edema, f"MSG-{i}"))
        assert (ack_code(ack), str(ack.segment("MSA")(2))) == ("AA", f"MSG-{i}")
        assert len(feedback_rows(lake, "hl7")) == i + 1  # on disk when AA came back
    ack = send(mllp, oru("s0", "present", "MSG-0"))  # the RIS resends: acknowledged, not recorded again
    assert ack_code(ack) == "AA" and len(feedback_rows(lake, "hl7")) == 3
    rows = {r["study_id"]: r for r in feedback_rows(lake, "hl7")}
    assert {k: (r["verdict"], r["present"]) for k, r in rows.items()} == {
        "s0": ("agree", True),
        "s5": ("disagree", True),
        "s7": ("agree", False),
    }
    raw = json.dumps(list(rows.values()))
    assert "SMITH" not in raw and "DOE" not in raw and "MRN" not in raw
    p = performance(lake)
    assert (p["tp"], p["fn"], p["tn"], p["fp"]) == (1, 1, 1, 0)


def test_mllp_answers_ae_with_the_reason_for_what_it_cannot_understand(mllp, lake):
    ack = send(mllp, oru("s0", "present", "MSG-P", status="P"))
    assert ack_code(ack) == "AE" and "only a final report" in str(ack.segment("MSA")(3))
    assert "only a final report" in str(ack.segment("ERR")(8)) and str(ack.segment("ERR")(4)) == "E"
    ack = send(mllp, oru("nope", "present", "MSG-X"))
    assert ack_code(ack) == "AE" and "no result" in str(ack.segment("MSA")(3))
    ack = send(mllp, "this is not HL7")
    assert ack_code(ack) == "AE" and "not an HL7 v2 message" in str(ack.segment("MSA")(3))
    assert not (lake / "telemetry" / "feedback").exists()


def test_mllp_answers_ar_when_the_lake_cannot_take_it_and_the_retry_lands_once(mllp, store, lake):
    store.failures = 1
    ack = send(mllp, oru("s0", "present", "MSG-R"))
    assert ack_code(ack) == "AR" and "send again" in str(ack.segment("MSA")(3))
    assert feedback_rows(lake, "hl7") == []
    store.failures, store.prefix = 1, "feedback/"  # the receipt is written, the feedback object is not
    assert ack_code(send(mllp, oru("s0", "present", "MSG-R"))) == "AR"
    assert feedback_rows(lake, "hl7") == [] and list((lake / "telemetry" / "feedback_receipts").rglob("*.json"))
    assert ack_code(send(mllp, oru("s0", "present", "MSG-R"))) == "AA"  # the retry writes exactly the receipt's object
    assert ack_code(send(mllp, oru("s0", "present", "MSG-R"))) == "AA"
    assert [(r["study_id"], r["present"]) for r in feedback_rows(lake, "hl7")] == [("s0", True)]


# --- FHIR ---
@pytest.fixture
def fhir(store):
    server = FhirServer(FeedbackReceiver(store), "127.0.0.1", 0)
    yield server
    server.close()


def diagnostic_report(study_id: str, codes: list[str], status: str = "final") -> dict[str, Any]:
    from fhir.resources.diagnosticreport import DiagnosticReport

    report = DiagnosticReport.model_validate(
        {
            "resourceType": "DiagnosticReport",
            "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
            "identifier": [{"system": "urn:radstream:study-id", "value": study_id}],
            "resultsInterpreter": [{"reference": "Practitioner/1", "display": "Dr Jane Smith"}],
            "conclusionCode": [{"coding": [{"system": "http://snomed.info/sct", "code": c}]} for c in codes],
        }
    )
    return json.loads(report.model_dump_json())


def post(url: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/fhir+json"})
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_a_posted_diagnostic_report_is_created_once_and_counted(fhir, lake):
    status, outcome, headers = post(f"{fhir.base}/DiagnosticReport", json.dumps(diagnostic_report("s0", [EDEMA])).encode())
    assert status == 201 and headers["Location"].startswith(f"{fhir.base}/DiagnosticReport/")
    assert outcome["resourceType"] == "OperationOutcome" and len(feedback_rows(lake, "fhir")) == 1
    again = post(f"{fhir.base}/DiagnosticReport", json.dumps(diagnostic_report("s0", [EDEMA])).encode())
    assert again[0] == 200 and again[2]["Location"] == headers["Location"] and len(feedback_rows(lake, "fhir")) == 1
    # A transaction Bundle holding s8's report (model: Edema; the report concludes only an effusion): FP.
    from fhir.resources.bundle import Bundle

    bundle = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": diagnostic_report("s8", [EFFUSION]), "request": {"method": "POST", "url": "DiagnosticReport"}},
            ],
        }
    )
    status, response, _ = post(fhir.base, bundle.model_dump_json().encode())
    assert status == 200 and response["type"] == "transaction-response"
    assert response["entry"][0]["response"]["status"] == "201 Created"
    rows = {r["study_id"]: (r["verdict"], r["present"]) for r in feedback_rows(lake, "fhir")}
    assert rows == {"s0": ("agree", True), "s8": ("disagree", False)}
    assert "Smith" not in json.dumps(feedback_rows(lake, "fhir"))
    p = performance(lake)
    assert (p["tp"], p["fp"], p["fn"], p["tn"]) == (1, 1, 0, 0)


def test_invalid_reports_get_an_operation_outcome(fhir, store, lake):
    cases = [
        (b"{not json", 400, "not JSON"),
        (json.dumps({"resourceType": "DiagnosticReport", "status": "final"}).encode(), 400, "not a FHIR DiagnosticReport"),
        (json.dumps(diagnostic_report("s0", [EDEMA], status="preliminary")).encode(), 422, "only a final report"),
        (json.dumps({**diagnostic_report("s0", [EDEMA]), "identifier": []}).encode(), 422, "urn:radstream:study-id"),
    ]
    for body, code, message in cases:
        status, outcome, _ = post(f"{fhir.base}/DiagnosticReport", body)
        assert (status, outcome["resourceType"]) == (code, "OperationOutcome") and message in outcome["issue"][0]["diagnostics"]
    store.failures = 1
    status, outcome, headers = post(f"{fhir.base}/DiagnosticReport", json.dumps(diagnostic_report("s0", [EDEMA])).encode())
    assert status == 503 and outcome["issue"][0]["code"] == "transient" and headers["Retry-After"]
    assert not (lake / "telemetry" / "feedback").exists()
    assert post(f"{fhir.base}/DiagnosticReport", json.dumps(diagnostic_report("s0", [EDEMA])).encode())[0] == 201
    assert len(feedback_rows(lake, "fhir")) == 1


def test_the_listen_command_serves_both_until_stopped(lake):
    """`radstream models listen` as a user runs it: a process on free ports (port 0, the bound ports printed), one ORU
    over MLLP and one DiagnosticReport over HTTP, then SIGINT stops it cleanly."""
    import re
    import signal
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radstream.cli",
            "models",
            "listen",
            "--mllp",
            "127.0.0.1:0",
            "--fhir",
            "127.0.0.1:0",
            "--data-dir",
            str(lake),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines, deadline = [], time.monotonic() + DEADLINE_S
        while len(lines) < 3 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        mllp_port = int(re.search(r"MLLP: .* on 127\.0\.0\.1:(\d+)", text).group(1))
        base = re.search(r"POST DiagnosticReport to (http://127\.0\.0\.1:\d+)/DiagnosticReport", text).group(1)
        assert ack_code(send(SimpleNamespace(host="127.0.0.1", port=mllp_port), oru("s0", "present", "MSG-CLI"))) == "AA"
        assert post(f"{base}/DiagnosticReport", json.dumps(diagnostic_report("s5", [EDEMA])).encode())[0] == 201
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=DEADLINE_S) == 0, process.stderr.read()
    assert {r["study_id"] for r in feedback_rows(lake, "hl7")} == {"s0"}
    assert {r["study_id"] for r in feedback_rows(lake, "fhir")} == {"s5"}
