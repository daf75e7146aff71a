"""The daily drift check (services/telemetry/drift.py): the exact Athena calls it makes (botocore Stubber) for the
model_drift named query by id, and the ModelDriftPSI documents it writes, per feature and under `service` alone."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from services.telemetry.drift import Dependencies, check_drift, lambda_handler
from shared.athena import AthenaExecutor
from shared.errors import ConfigurationError

SQL = "-- parameters: days=1, baseline_days=28\nSELECT ..."
COLUMNS = ["model_name", "model_version", "feature", "baseline_studies", "recent_studies", "psi", "level"]
TYPES = ["varchar", "varchar", "varchar", "bigint", "bigint", "double", "varchar"]
ROWS = [
    ["chest_xray_classifier", "1", "exposure", "400", "400", "0.9123", "shifted"],
    ["chest_xray_classifier", "1", "scanner", "400", "400", "0.0", "stable"],
]


class Captured:
    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []

    def write(self, documents: Any) -> None:
        self.documents.extend(documents)


def athena_stubbed() -> tuple[Any, Stubber]:
    client = boto3.client("athena", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_response(
        "get_named_query", {"NamedQuery": {"Name": "model_drift", "Database": "db", "QueryString": SQL}}, {"NamedQueryId": "q-1"}
    )
    stub.add_response(
        "start_query_execution",
        {"QueryExecutionId": "x-1"},
        {"QueryString": SQL, "QueryExecutionContext": {"Database": "db"}, "WorkGroup": "wg", "ExecutionParameters": ["1", "28"]},
    )
    stub.add_response("get_query_execution", {"QueryExecution": {"Status": {"State": "SUCCEEDED"}}}, {"QueryExecutionId": "x-1"})
    stub.add_response(
        "get_query_results",
        {
            "ResultSet": {
                "ResultSetMetadata": {"ColumnInfo": [{"Name": n, "Type": t} for n, t in zip(COLUMNS, TYPES, strict=True)]},
                "Rows": [{"Data": [{"VarCharValue": v} for v in row]} for row in [COLUMNS, *ROWS]],
            }
        },
        {"QueryExecutionId": "x-1", "MaxResults": 1000},
    )
    return client, stub


def test_the_drift_check_runs_the_named_query_and_writes_each_features_psi():
    client, stub = athena_stubbed()
    emf = Captured()
    with stub:
        found = check_drift(Dependencies(AthenaExecutor(client, "wg", "db", sleep=lambda s: None), "q-1", emf))
        stub.assert_no_pending_responses()
    assert found == {"features": 2, "shifted": ["chest_xray_classifier@1 exposure"]}
    by_dimensions = {tuple(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]): d for d in emf.documents}
    assert set(by_dimensions) == {("model", "model_version", "feature", "service"), ("service",)}
    per_feature = [d for d in emf.documents if "model" in d]
    assert [(d["feature"], d["ModelDriftPSI"]) for d in per_feature] == [("exposure", [0.9123]), ("scanner", [0.0])]
    overall = [d["ModelDriftPSI"][0] for d in emf.documents if "model" not in d]
    assert max(overall) == 0.9123 and all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "RadStream" for d in emf.documents)


def test_the_drift_check_refuses_to_start_without_its_settings(monkeypatch):
    for name in ("DRIFT_QUERY_ID", "ATHENA_WORKGROUP", "GLUE_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="DRIFT_QUERY_ID"):
        lambda_handler({}, None)
