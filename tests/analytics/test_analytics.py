"""The analytics port: template.yaml's Athena named queries, run by DuckDB over a known lake, and the Athena adapter."""

from __future__ import annotations

import argparse
import json
import math
import re
from datetime import datetime, timedelta, UTC
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from radstream.analytics import (
    AthenaQueryRunner,
    DuckDBQueryRunner,
    add_query_parser,
    load_named_queries,
    placeholders,
    render,
)
from radstream.template import DEFAULT_TEMPLATE, Template
from shared.contracts import ModelRef, TelemetryRecord
from shared.errors import ConfigurationError, PermanentError, StorageUnavailable
from shared.observability import telemetry_record
from shared.storage import LocalObjectStore
from shared.telemetry import LocalLakeSink

QUERIES = [
    "p95_latency_per_stage",
    "triage_latency_by_priority",  # tests/analytics/test_triage_latency.py
    "throughput_per_minute",
    "error_rate",
    "model_comparison",
    "cost_per_1000_studies",
    "latency_per_stage",
    "study_end_to_end",
    "cost_breakdown",
    "model_agreement",
    "model_version_cost",
    "model_performance",
    "model_calibration",
    "model_drift",
    "daily_distributions",
    "box_acceptance",
]  # cost_breakdown and the two before it: the console's (tests/console); the last seven: docs/model-lifecycle.md
# The prices and assumptions of the cost queries' shared price table (us-east-1 list prices, 512 MB functions).
USD_PER_GB_SECOND, LAMBDA_GB, USD_PER_REQUEST, USD_PER_TRANSITION, TRANSITIONS_PER_STUDY = 0.0000166667, 0.5, 0.0000002, 0.000025, 14

NOW = datetime.now(UTC)
# Two minutes of studies, an hour ago (inside every query's default window, whatever the time of day).
BASE = (NOW - timedelta(hours=1)).replace(second=0, microsecond=0)
OLD = NOW - timedelta(days=40)
CLASSIFIER_V1 = ModelRef(name="chest_xray_classifier", version="1", provenance="test")
CLASSIFIER_V2 = ModelRef(name="chest_xray_classifier", version="2", provenance="test")
DETECTOR = ModelRef(name="anomaly_detector", version="1", provenance="test")
ENCODER = ModelRef(name="report_encoder", version="3", provenance="test")


def record(
    stage: str,
    study: str,
    ms: float | None,
    at: datetime,
    status: str = "succeeded",
    model: ModelRef | None = None,
    error: str | None = None,
) -> TelemetryRecord:
    r = telemetry_record(
        stage=stage, study_id=study, execution_id=f"exec-{study}", status=status, duration_ms=ms, model=model, error_type=error
    )
    return r.model_copy(update={"time": at})


def known_records() -> list[TelemetryRecord]:
    """8 studies that succeed, one rejected at validate, one at prepare; and one failure 40 days old."""
    records = []
    for i in range(8):
        study, at = f"ok-{i}", BASE + timedelta(seconds=5 * i) + (timedelta(minutes=1) if i >= 6 else timedelta())
        records += [
            record("validate", study, 10 + i, at),
            record("prepare", study, 100 + 10 * i, at),
            record("inference", study, 200 + 10 * i, at, model=CLASSIFIER_V1 if i < 6 else CLASSIFIER_V2),
            record("inference", study, 300 + 10 * i, at, model=DETECTOR),
            record("inference", study, 50 + i, at, model=ENCODER),
            record("store", study, 20.5, at),
            record("workflow", study, 1000 + 100 * i, at),
        ]
    bad_sidecar, bad_image = BASE + timedelta(seconds=50), BASE + timedelta(minutes=1, seconds=50)
    records += [
        record("validate", "bad-sidecar", 5, bad_sidecar, "failed", error="InvalidStudy"),
        record("workflow", "bad-sidecar", 50, bad_sidecar, "failed", error="InvalidStudy"),
        record("validate", "bad-image", 12, bad_image),
        record("prepare", "bad-image", 30, bad_image, "failed", error="InvalidImage"),
        record("workflow", "bad-image", 200, bad_image, "failed", error="InvalidImage"),
        record("workflow", "long-ago", 999, OLD, "failed", error="StorageUnavailable"),
    ]
    return records


@pytest.fixture(scope="module")
def records() -> list[TelemetryRecord]:
    return known_records()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, records: list[TelemetryRecord]) -> Path:
    data_dir = tmp_path_factory.mktemp("data")
    sink = LocalLakeSink(LocalObjectStore(data_dir), "telemetry")
    sink.send(records[:20])  # several delivery objects per partition, as Firehose writes them
    sink.send(records[20:])
    return data_dir / "telemetry"


@pytest.fixture(scope="module")
def duck(lake: Path) -> DuckDBQueryRunner:
    return DuckDBQueryRunner(lake)


def recent(records: list[TelemetryRecord], days: int = 7) -> list[TelemetryRecord]:
    return [r for r in records if r.time.date() >= NOW.date() - timedelta(days=days)]


def bounds(values: list[float], q: float) -> tuple[float, float]:
    """An approximate percentile lies between the order statistics around the exact one."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    return ordered[math.floor(position)] - 0.05, ordered[math.ceil(position)] + 0.05


# --- the template ---------------------------------------------------------------------------------


def test_template_has_the_named_queries_each_with_its_parameters_declared() -> None:
    queries = load_named_queries()
    assert list(queries) == QUERIES
    names = {"GlueDatabase": "db", "TelemetryTable": "telemetry", "ModelOutputsTable": "model_outputs", "FeedbackTable": "feedback"}
    for query in queries.values():
        sql = render(query, names)
        assert any(f'"db"."{t}"' in sql for t in ("telemetry", "model_outputs", "feedback"))
        assert placeholders(sql) == len(query.parameters), query.name
        assert query.description


def test_glue_table_matches_the_telemetry_contract_and_projects_partitions() -> None:
    template = Template()
    table = template.resources["TelemetryTable"]["Properties"]["TableInput"]
    columns = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
    assert set(columns) == set(TelemetryRecord.model_fields)
    assert columns["duration_ms"] == "double" and columns["bytes_in"] == "bigint" and columns["cold_start"] == "boolean"
    assert [p["Name"] for p in table["PartitionKeys"]] == ["dt", "hour"]
    assert table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
    params = table["Parameters"]
    assert params["projection.enabled"] == "true"
    assert (params["projection.dt.type"], params["projection.dt.format"], params["projection.dt.range"]) == (
        "date",
        "yyyy-MM-dd",
        "2026-01-01,NOW",
    )
    assert (params["projection.hour.type"], params["projection.hour.range"], params["projection.hour.digits"]) == ("integer", "0,23", "2")
    assert params["storage.location.template"] == {"Fn::Sub": "s3://${TelemetryBucket}/telemetry/dt=${!dt}/hour=${!hour}/"}
    workgroup = template.resources["AthenaWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert workgroup["EnforceWorkGroupConfiguration"] is True and workgroup["BytesScannedCutoffPerQuery"] > 0
    assert workgroup["ResultConfiguration"]["OutputLocation"] == {"Fn::Sub": "s3://${TelemetryBucket}/athena-results/"}


# The dedupe block every named query starts from: from its "-- counted:" comment to the ")" closing `counted`.
COUNTED_BLOCK = re.compile(r"^-- counted: .*?^counted AS \(\n.*?^\)(?=,?$)", re.DOTALL | re.MULTILINE)


def test_every_named_query_counts_through_the_same_dedupe_block() -> None:
    """Named queries cannot share SQL, so each carries the block; the copies must not drift, and nothing reads around it."""
    blocks = {}
    # The model tables' queries (model_agreement, ...) read no telemetry: they dedupe their own rows.
    for query in (q for q in load_named_queries().values() if "${TelemetryTable}" in q.sql):
        found = COUNTED_BLOCK.findall(query.sql)
        assert len(found) == 1, f"{query.name}: no '-- counted:' block ending with counted AS (...)"
        blocks[query.name] = found[0]
        rest = query.sql.replace(found[0], "")
        assert "${TelemetryTable}" not in rest, f"{query.name} reads the table outside the counted block"
        assert not re.search(r"\b(FROM|JOIN)\s+(recent|copies|once|finished|latest)\b", rest, re.IGNORECASE), (
            f"{query.name} reads around `counted`"
        )
        assert re.search(r"\bFROM counted\b", rest), query.name
    variants: dict[str, list[str]] = {}
    for name, block in blocks.items():
        variants.setdefault(block, []).append(name)
    assert len(variants) == 1, f"the counted blocks differ between these groups of queries: {sorted(variants.values())}"
    assert "PARTITION BY event_id" in blocks["error_rate"] and "WHERE stage = 'workflow'" in blocks["error_rate"]
    # `once` names the table's columns for the records it deduplicates (Athena has no SELECT * EXCEPT): all of them, in
    # the order of SELECT * (the columns, then the partition keys), so both halves of its UNION ALL are the same rows.
    table = Template().resources["TelemetryTable"]["Properties"]["TableInput"]
    expected = [c["Name"] for c in table["StorageDescriptor"]["Columns"]] + [p["Name"] for p in table["PartitionKeys"]]
    listed = re.search(r"UNION ALL\n\s*SELECT (.*?)\n\s*FROM \(", blocks["error_rate"], re.DOTALL)
    assert listed and [c.strip().strip('"') for c in listed[1].split(",")] == expected


# The price table both cost queries bill from: from its "-- prices:" comment to the ")" closing `assumptions`.
PRICES_BLOCK = re.compile(r"^-- prices: .*?^assumptions AS \(\n.*?^\)(?=,?$)", re.DOTALL | re.MULTILINE)


def test_both_cost_queries_bill_from_one_price_table() -> None:
    """cost_per_1000_studies kept its own price constants once; now both carry the console's dated table, word for word."""
    queries = load_named_queries()
    blocks = {name: PRICES_BLOCK.findall(queries[name].sql) for name in ("cost_per_1000_studies", "cost_breakdown")}
    assert all(len(found) == 1 for found in blocks.values()), blocks
    assert blocks["cost_per_1000_studies"] == blocks["cost_breakdown"]
    assert "as_of" in blocks["cost_breakdown"][0] and "transitions_per_study" in blocks["cost_breakdown"][0]
    rest = queries["cost_per_1000_studies"].sql.replace(blocks["cost_per_1000_studies"][0], "")
    assert not re.search(r"CAST\(0\.\d+ AS double\)", rest), "a price outside the shared table"


def test_the_cost_queries_agree(duck: DuckDBQueryRunner) -> None:
    """The same studies, the same prices: the totals of one query are the other's rows for the same items."""
    [total] = duck.run("cost_per_1000_studies").as_dicts()
    items = {(r["service"], r["item"]): r for r in duck.run("cost_breakdown").as_dicts()}
    assert items[("Lambda", "compute")]["usd"] == pytest.approx(total["lambda_compute_usd"], abs=1e-6)
    assert items[("Lambda", "requests")]["usd"] == pytest.approx(total["lambda_request_usd"], abs=1e-6)
    assert items[("Step Functions", "state transitions")]["usd"] == pytest.approx(total["step_functions_usd"], abs=1e-6)
    assert items[("Lambda", "compute")]["studies"] == total["studies"] > 0


@pytest.mark.parametrize("name", QUERIES)
def test_every_named_query_transpiles_and_runs_on_an_empty_lake(tmp_path: Path, name: str) -> None:
    runner = DuckDBQueryRunner(tmp_path / "telemetry")
    result = runner.run(name)
    assert result.columns
    if name == "cost_per_1000_studies":
        assert result.as_dicts() == [
            {
                "studies": 0,
                "lambda_requests": 0,
                "lambda_gb_seconds": 0.0,
                "lambda_compute_usd": 0.0,
                "lambda_request_usd": 0.0,
                "step_functions_usd": 0.0,
                "total_usd": 0.0,
                "usd_per_1000_studies": None,
            }
        ]
    elif name == "cost_breakdown":  # the price table's rows, with no usage
        assert result.rows and all(row["studies"] == 0 and (row["usd"] == 0) == (row["basis"] == "per study") for row in result.as_dicts())
    else:
        assert result.rows == []


def test_every_template_query_in_the_file_is_read_not_a_copy(tmp_path: Path) -> None:
    """DuckDBQueryRunner runs whatever template it is given: a query added there is runnable with no code."""
    doc = DEFAULT_TEMPLATE.read_text().replace(
        "\n  # --- end analytics ---",
        (
            "\n"
            "  ExtraQuery:\n    Type: AWS::Athena::NamedQuery\n    Properties:\n      Name: stages\n      Database: !Ref GlueDatabase\n"
            '      QueryString: !Sub \'SELECT DISTINCT stage FROM "${GlueDatabase}"."${TelemetryTable}" ORDER BY stage\'\n'
            "  # --- end analytics ---"
        ),
        1,
    )
    path = tmp_path / "template.yaml"
    path.write_text(doc)
    data_dir = tmp_path / "data"
    LocalLakeSink(LocalObjectStore(data_dir), "telemetry").send(known_records()[:7])
    runner = DuckDBQueryRunner(data_dir / "telemetry", template=path)
    assert runner.list_queries() == QUERIES + ["stages"]
    assert runner.run("stages").rows == [("inference",), ("prepare",), ("store",), ("validate",), ("workflow",)]


# --- the numbers, over a known lake --------------------------------------------------------------


def test_p95_latency_per_stage(duck: DuckDBQueryRunner, records: list[TelemetryRecord]) -> None:
    result = duck.run("p95_latency_per_stage")
    assert result.columns == ["stage", "model_name", "records", "p95_ms"]
    groups: dict[tuple, list[float]] = {}
    for r in recent(records):
        if r.status == "succeeded":
            groups.setdefault((r.stage, r.model_name), []).append(r.duration_ms)
    expected_keys = sorted(groups, key=lambda k: (k[0], k[1] is None, k[1] or ""))
    assert [(stage, model) for stage, model, _, _ in result.rows] == expected_keys
    for stage, model, count, p95 in result.rows:
        values = groups[(stage, model)]
        assert count == len(values)
        low, high = bounds(values, 0.95)
        assert low <= p95 <= high, (stage, model, p95, sorted(values))
    by_key = {(s, m): p95 for s, m, _, p95 in result.rows}
    assert by_key[("store", None)] == 20.5
    assert 1600 <= by_key[("workflow", None)] <= 1700  # 1000..1700; the failed studies' records don't count


def test_throughput_per_minute(duck: DuckDBQueryRunner) -> None:
    result = duck.run("throughput_per_minute")
    assert result.columns == ["minute_utc", "studies", "succeeded", "failed"]
    minute = f"{BASE:%Y-%m-%d %H:%M}"
    next_minute = f"{BASE + timedelta(minutes=1):%Y-%m-%d %H:%M}"
    # ok-0..5 and bad-sidecar in the first minute; ok-6, ok-7 and bad-image in the next; long-ago is out of the window.
    assert result.rows == [(minute, 7, 6, 1), (next_minute, 3, 2, 1)]


def test_error_rate(duck: DuckDBQueryRunner) -> None:
    result = duck.run("error_rate")
    assert result.columns == ["stage", "error_type", "total", "failed", "error_rate"]
    assert result.rows == [
        ("inference", None, 24, 0, 0.0),
        ("prepare", "InvalidImage", 9, 1, round(1 / 9, 4)),
        ("store", None, 8, 0, 0.0),
        ("validate", "InvalidStudy", 10, 1, 0.1),
        ("workflow", "InvalidImage", 10, 1, 0.1),
        ("workflow", "InvalidStudy", 10, 1, 0.1),
    ]


def test_error_rate_window_is_a_parameter(duck: DuckDBQueryRunner) -> None:
    workflow = [row for row in duck.run("error_rate", days=60).rows if row[0] == "workflow"]
    assert workflow == [
        ("workflow", "InvalidImage", 11, 1, round(1 / 11, 4)),
        ("workflow", "InvalidStudy", 11, 1, round(1 / 11, 4)),
        ("workflow", "StorageUnavailable", 11, 1, round(1 / 11, 4)),
    ]


def test_model_comparison(duck: DuckDBQueryRunner) -> None:
    result = duck.run("model_comparison")
    assert result.columns == ["model_name", "model_version", "inferences", "failed", "avg_ms", "p50_ms", "p95_ms"]
    expected = {
        ("anomaly_detector", "1"): [300 + 10 * i for i in range(8)],
        ("chest_xray_classifier", "1"): [200 + 10 * i for i in range(6)],
        ("chest_xray_classifier", "2"): [260.0, 270.0],
        ("report_encoder", "3"): [50 + i for i in range(8)],
    }
    assert [(name, version) for name, version, *_ in result.rows] == sorted(expected)
    for name, version, count, failed, avg, p50, p95 in result.rows:
        values = expected[(name, version)]
        assert (count, failed) == (len(values), 0)
        assert avg == round(sum(values) / len(values), 1)
        assert bounds(values, 0.5)[0] <= p50 <= bounds(values, 0.5)[1]
        assert bounds(values, 0.95)[0] <= p95 <= bounds(values, 0.95)[1]


def test_cost_per_1000_studies(duck: DuckDBQueryRunner, records: list[TelemetryRecord]) -> None:
    window = recent(records, days=30)
    studies = sum(r.stage == "workflow" for r in window)
    requests = len(window)  # every stage record is one invocation; each study adds its telemetry task
    gb_seconds = sum(math.ceil(r.duration_ms) for r in window if r.stage != "workflow") / 1000 * LAMBDA_GB
    compute, request_usd = gb_seconds * USD_PER_GB_SECOND, requests * USD_PER_REQUEST
    exported = len({r.study_id for r in window if r.stage == "export"})  # a DICOM study enters one state more
    step_functions = (studies * TRANSITIONS_PER_STUDY + exported) * USD_PER_TRANSITION
    [row] = duck.run("cost_per_1000_studies").as_dicts()
    assert (row["studies"], row["lambda_requests"]) == (10, 61) == (studies, requests)
    assert row["lambda_gb_seconds"] == pytest.approx(gb_seconds, abs=1e-3)
    assert row["lambda_compute_usd"] == pytest.approx(compute, abs=1e-6)
    assert row["lambda_request_usd"] == pytest.approx(request_usd, abs=1e-6)
    assert row["step_functions_usd"] == pytest.approx(step_functions, abs=1e-6)
    assert row["usd_per_1000_studies"] == pytest.approx(1000 * (compute + request_usd + step_functions) / studies, abs=1e-4)
    # 60 days brings in the old failure: one more study.
    assert duck.run("cost_per_1000_studies", days=60).as_dicts()[0]["studies"] == 11


def test_parameters_are_checked(duck: DuckDBQueryRunner) -> None:
    with pytest.raises(ConfigurationError, match="no parameter hours"):
        duck.run("error_rate", hours=3)
    with pytest.raises(ConfigurationError, match="must be an integer"):
        duck.run("error_rate", days="7; DROP TABLE x")
    with pytest.raises(ConfigurationError, match="no named query"):
        duck.run("nope")
    assert duck.run("error_rate", days="7") == duck.run("error_rate")


def test_a_partial_lake_keeps_every_column(tmp_path: Path) -> None:
    """A study rejected at validate (no model fields anywhere): the view's explicit types still carry every column."""
    LocalLakeSink(LocalObjectStore(tmp_path), "telemetry").send(
        [
            record("validate", "s", 7, BASE, "failed", error="InvalidStudy"),
            record("workflow", "s", 9, BASE, "failed", error="InvalidStudy"),
        ]
    )
    runner = DuckDBQueryRunner(tmp_path / "telemetry")
    assert runner.run("model_comparison").rows == []
    assert runner.run("p95_latency_per_stage").rows == []
    assert runner.run("error_rate").rows == [("validate", "InvalidStudy", 1, 1, 1.0), ("workflow", "InvalidStudy", 1, 1, 1.0)]


def test_an_execution_that_never_finished_is_not_counted(tmp_path: Path) -> None:
    """Records without their execution's workflow record (a crash before SendTelemetry finished) count nowhere."""
    LocalLakeSink(LocalObjectStore(tmp_path), "telemetry").send([record("validate", "s", 7, BASE), record("prepare", "s", 70, BASE)])
    runner = DuckDBQueryRunner(tmp_path / "telemetry")
    for name in QUERIES:
        rows = runner.run(name).as_dicts()
        if name == "cost_breakdown":  # the price table, with no usage: only the standing per-day cost remains
            assert rows and all(r["studies"] == 0 and (r["quantity"] == 0 or r["basis"] == "per day") for r in rows), rows
            continue
        assert rows == (
            [] if name != "cost_per_1000_studies" else [rows[0] | {"studies": 0, "lambda_requests": 0, "lambda_gb_seconds": 0.0}]
        ), name


# --- the CLI --------------------------------------------------------------------------------------


def cli(argv: list[str]) -> argparse.Namespace:
    root = argparse.ArgumentParser(prog="radstream")
    add_query_parser(root.add_subparsers(dest="command", required=True))
    return root.parse_args(argv)


def test_cli_lists_and_runs_queries(lake: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEMETRY_BUCKET", raising=False)
    args = cli(["query", "--json"])
    assert args.func(args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [q["name"] for q in listed] == QUERIES and listed[0]["parameters"] == {"days": 7}

    args = cli(["query", "error_rate", "--data-dir", str(lake.parent), "--json", "-p", "days=60"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["columns"][0] == "stage" and len(out["rows"]) == 7

    args = cli(["query", "throughput_per_minute", "--data-dir", str(lake.parent)])
    assert args.func(args) == 0
    assert "minute_utc" in capsys.readouterr().out

    args = cli(["query"])
    assert args.func(args) == 0
    assert "cost_per_1000_studies" in capsys.readouterr().out

    args = cli(["query", "model_comparison", "--sql"])
    assert args.func(args) == 0
    assert "APPROX_QUANTILE" in capsys.readouterr().out


def test_cli_table_shows_the_first_rows_and_says_how_many_more(
    lake: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query of 100,000 rows must not keep a terminal busy for minutes laying out a table nobody reads whole."""
    monkeypatch.delenv("TELEMETRY_BUCKET", raising=False)
    args = cli(["query", "error_rate", "--data-dir", str(lake.parent), "--json", "-p", "days=60"])
    assert args.func(args) == 0
    total = len(json.loads(capsys.readouterr().out)["rows"])
    assert total > 2
    args = cli(["query", "error_rate", "--data-dir", str(lake.parent), "-p", "days=60", "--limit", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"the first 2 of {total} rows" in out and "--limit 0" in out
    args = cli(["query", "error_rate", "--data-dir", str(lake.parent), "-p", "days=60", "--limit", "0"])
    assert args.func(args) == 0
    assert "the first" not in capsys.readouterr().out
    args = cli(["query", "error_rate", "--data-dir", str(lake.parent), "--limit", "-1"])
    with pytest.raises(ConfigurationError, match="--limit"):
        args.func(args)


# --- Athena ---------------------------------------------------------------------------------------


@pytest.fixture
def athena():
    client = boto3.client("athena", region_name="eu-west-1", aws_access_key_id="test", aws_secret_access_key="test")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def runner_for(client, fake: FakeTime, **kwargs) -> AthenaQueryRunner:
    return AthenaQueryRunner(client, "radstream-dev", "radstream_dev", sleep=fake.sleep, clock=fake.clock, **kwargs)


def execution(state: str, **status) -> dict:
    return {"QueryExecution": {"QueryExecutionId": "q-1", "Status": {"State": state, **status}}}


def page(rows: list[list[str | None]], token: str | None = None) -> dict:
    response = {
        "ResultSet": {
            "Rows": [{"Data": [{} if v is None else {"VarCharValue": v} for v in row]} for row in rows],
            "ResultSetMetadata": {
                "ColumnInfo": [
                    {"Name": "stage", "Type": "varchar"},
                    {"Name": "error_type", "Type": "varchar"},
                    {"Name": "total", "Type": "bigint"},
                    {"Name": "failed", "Type": "bigint"},
                    {"Name": "error_rate", "Type": "double"},
                ]
            },
        }
    }
    if token:
        response["NextToken"] = token
    return response


def test_athena_runs_the_named_query_in_the_workgroup_and_pages_results(athena) -> None:
    client, stubber = athena
    fake = FakeTime()
    runner = runner_for(client, fake)
    sql = runner.sql("error_rate")
    assert 'FROM "radstream_dev"."telemetry"' in sql and "${" not in sql
    stubber.add_response(
        "start_query_execution",
        {"QueryExecutionId": "q-1"},
        {
            "QueryString": sql,
            "QueryExecutionContext": {"Database": "radstream_dev"},
            "WorkGroup": "radstream-dev",
            "ExecutionParameters": ["30"],
        },
    )
    for state in ("QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"):
        stubber.add_response("get_query_execution", execution(state), {"QueryExecutionId": "q-1"})
    stubber.add_response(
        "get_query_results",
        page(
            [
                ["stage", "error_type", "total", "failed", "error_rate"],
                ["prepare", "InvalidImage", "9", "1", "0.1111"],
            ],
            token="page-2",
        ),
        {"QueryExecutionId": "q-1", "MaxResults": 1000},
    )
    stubber.add_response(
        "get_query_results",
        page([["store", None, "8", "0", "0.0"]]),
        {
            "QueryExecutionId": "q-1",
            "MaxResults": 1000,
            "NextToken": "page-2",
        },
    )
    result = runner.run("error_rate", days=30)
    assert result.columns == ["stage", "error_type", "total", "failed", "error_rate"]
    assert result.rows == [("prepare", "InvalidImage", 9, 1, 0.1111), ("store", None, 8, 0, 0.0)]
    assert fake.sleeps == [0.25, 0.5, 1.0]  # backoff between polls


@pytest.mark.parametrize(
    ("reason", "athena_error", "expected"),
    [
        (
            "TABLE_NOT_FOUND: line 3:17: Table 'radstream_dev.telemetry' does not exist",
            {"ErrorCategory": 2, "ErrorType": 1006, "Retryable": False},
            PermanentError,
        ),
        ("INTERNAL_ERROR", {"ErrorCategory": 1, "ErrorType": 401, "Retryable": True}, StorageUnavailable),
    ],
)
def test_athena_failed_query_gives_the_reason_and_is_transient_only_when_retryable(athena, reason, athena_error, expected) -> None:
    client, stubber = athena
    stubber.add_response(
        "start_query_execution",
        {"QueryExecutionId": "q-1"},
        {
            "QueryString": ANY,
            "QueryExecutionContext": {"Database": "radstream_dev"},
            "WorkGroup": "radstream-dev",
            "ExecutionParameters": ["7"],
        },
    )
    failed = execution("FAILED", StateChangeReason=reason, AthenaError=athena_error)
    stubber.add_response("get_query_execution", failed, {"QueryExecutionId": "q-1"})
    with pytest.raises(expected, match=reason.split(":")[0]) as caught:
        runner_for(client, FakeTime()).run("p95_latency_per_stage")
    assert isinstance(caught.value, StorageUnavailable) == (expected is StorageUnavailable)


def test_athena_deadline_stops_the_query(athena) -> None:
    client, stubber = athena
    fake = FakeTime()
    stubber.add_response("start_query_execution", {"QueryExecutionId": "q-1"})
    for _ in range(5):  # polls at t = 0, 0.25, 0.75, 1.75, 3 (the last sleep is cut to the deadline)
        stubber.add_response("get_query_execution", execution("RUNNING"))
    stubber.add_response("stop_query_execution", {}, {"QueryExecutionId": "q-1"})
    with pytest.raises(StorageUnavailable, match="still RUNNING after 3 s"):
        runner_for(client, fake, timeout_s=3).run("throughput_per_minute")
    assert fake.sleeps == [0.25, 0.5, 1.0, 1.25]


# --- counted once: re-runs, resumes and records delivered twice ------------------------------------
# The lake of a folder processed, then processed again (a re-run: new executions), with a retried
# SendTelemetry (the same records, the same event_ids, delivered again a minute later), a study whose first
# execution failed on an S3 outage and whose resume succeeded, and a re-run that crashed before its workflow
# record. Every query must count the 4 studies once, from each study's latest finished execution.

RERUN_STUDIES = ["s-0", "s-1", "s-2"]
MODELS = [CLASSIFIER_V1, DETECTOR, ENCODER]


def execution_records(
    study: str, execution: str, at: datetime, scale: float, failed_at: str | None = None, error: str | None = None, finished: bool = True
) -> list[TelemetryRecord]:
    """One execution's batch as SendTelemetry ships it: its stage records, then the workflow record (if it finished)."""

    def one(
        stage: str, ms: float | None, status: str = "succeeded", model: ModelRef | None = None, err: str | None = None
    ) -> TelemetryRecord:
        r = telemetry_record(
            stage=stage, study_id=study, execution_id=execution, status=status, duration_ms=ms, model=model, error_type=err
        )
        return r.model_copy(update={"time": at})

    records = []
    for stage, ms in (("validate", 10), ("prepare", 100), ("inference", 200), ("store", 20)):
        if stage == failed_at:
            records.append(one(stage, None, "failed", err=error))
            break
        if stage == "inference":
            records += [one(stage, scale * (ms + 10 * n), model=model) for n, model in enumerate(MODELS)]
        else:
            records.append(one(stage, scale * ms))
    if finished:
        records.append(one("workflow", scale * 1000, "failed" if failed_at else "succeeded", err=error))
    return records


@pytest.fixture(scope="module")
def rerun_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TelemetryRecord]]:
    """The lake, and the records the queries should count: each study's latest finished execution, each record once."""
    first, second = BASE, BASE + timedelta(minutes=10)
    data_dir = tmp_path_factory.mktemp("reruns")
    sink = LocalLakeSink(LocalObjectStore(data_dir), "telemetry")
    counted: list[TelemetryRecord] = []
    # The folder's first pass: slow (10x), superseded by the re-run.
    sink.send([r for i, s in enumerate(RERUN_STUDIES) for r in execution_records(s, f"first-{s}", first + timedelta(seconds=5 * i), 10)])
    # A study whose first execution failed in store on an S3 outage (no retry left), then `radstream resume` ran it again.
    sink.send(
        execution_records("resumed", "first-resumed", first + timedelta(minutes=2), 10, failed_at="store", error="StorageUnavailable")
    )
    # The re-run of the folder: new executions of the same studies, later.
    for i, s in enumerate(RERUN_STUDIES):
        batch = execution_records(s, f"rerun-{s}", second + timedelta(seconds=5 * i), 1 + i / 10)
        sink.send(batch)
        counted += batch
    # s-0's SendTelemetry was retried: the same batch again, its workflow record (same event_id) stamped a minute later.
    again = execution_records("s-0", "rerun-s-0", second, 1)
    again[-1] = again[-1].model_copy(update={"time": second + timedelta(minutes=1), "duration_ms": 61000.0})
    sink.send(again)
    resumed = execution_records("resumed", "resume-resumed", second + timedelta(minutes=2), 1.5)
    sink.send(resumed)
    counted += resumed
    # A third run of s-1 crashed after validate: no workflow record, so it never finished and is not counted.
    sink.send(execution_records("s-1", "crashed-s-1", second + timedelta(minutes=5), 1, finished=False))
    return data_dir / "telemetry", counted


def no_errors(studies: int) -> list[tuple[str, None, int, int, float]]:
    """error_rate's rows for `studies` studies that all succeeded: every stage once a study, inference once a model (3)."""
    return [
        (stage, None, studies * (3 if stage == "inference" else 1), 0, 0.0)
        for stage in ("inference", "prepare", "store", "validate", "workflow")
    ]


def test_reruns_resumes_and_retried_deliveries_count_each_study_once(rerun_lake: tuple[Path, list[TelemetryRecord]]) -> None:
    lake, counted = rerun_lake
    duck = DuckDBQueryRunner(lake)
    assert len({r.event_id for r in counted}) == len(counted) == 4 * 7

    # Throughput: 4 studies, each in the minute of its latest execution's (first delivered) workflow record.
    minute = lambda m: f"{BASE + timedelta(minutes=m):%Y-%m-%d %H:%M}"  # noqa: E731
    assert duck.run("throughput_per_minute").rows == [(minute(10), 3, 3, 0), (minute(12), 1, 1, 0)]

    # Error rate: the resumed study's StorageUnavailable was superseded by its resume; every stage counts 4 studies.
    assert duck.run("error_rate").rows == no_errors(studies=4)

    # Latency: the latest executions' durations only (the superseded first pass was 10x slower).
    groups: dict[tuple, list[float]] = {}
    for r in counted:
        groups.setdefault((r.stage, r.model_name), []).append(r.duration_ms)
    p95 = duck.run("p95_latency_per_stage").rows
    assert [(stage, model, n) for stage, model, n, _ in p95] == [
        (stage, model, len(groups[(stage, model)])) for stage, model in sorted(groups, key=lambda k: (k[0], k[1] is None, k[1] or ""))
    ]
    assert all(n == 4 for _, _, n, _ in p95)
    for stage, model, _, value in p95:
        low, high = bounds(groups[(stage, model)], 0.95)
        assert low <= value <= high, (stage, model, value)

    models = duck.run("model_comparison").as_dicts()
    assert [(m["model_name"], m["model_version"], m["inferences"], m["failed"]) for m in models] == [
        ("anomaly_detector", "1", 4, 0),
        ("chest_xray_classifier", "1", 4, 0),
        ("report_encoder", "3", 4, 0),
    ]
    for m in models:
        values = groups[("inference", m["model_name"])]
        assert m["avg_ms"] == round(sum(values) / len(values), 1)

    [cost] = duck.run("cost_per_1000_studies").as_dicts()
    gb_seconds = sum(math.ceil(r.duration_ms) for r in counted if r.stage != "workflow") / 1000 * LAMBDA_GB
    assert (cost["studies"], cost["lambda_requests"]) == (4, 28)
    assert cost["lambda_gb_seconds"] == pytest.approx(gb_seconds, abs=1e-3)
    assert cost["step_functions_usd"] == pytest.approx(4 * TRANSITIONS_PER_STUDY * USD_PER_TRANSITION, abs=1e-6)


def test_a_failed_latest_execution_is_what_counts(tmp_path: Path) -> None:
    """Latest, not best: a study that succeeded and then failed on a re-run counts as failed, once."""
    sink = LocalLakeSink(LocalObjectStore(tmp_path), "telemetry")
    sink.send(execution_records("s", "one", BASE, 1))
    sink.send(execution_records("s", "two", BASE + timedelta(minutes=1), 1, failed_at="prepare", error="InvalidImage"))
    duck = DuckDBQueryRunner(tmp_path / "telemetry")
    assert duck.run("throughput_per_minute").rows == [(f"{BASE + timedelta(minutes=1):%Y-%m-%d %H:%M}", 1, 0, 1)]
    assert duck.run("error_rate").rows == [
        ("prepare", "InvalidImage", 1, 1, 1.0),
        ("validate", None, 1, 0, 0.0),
        ("workflow", "InvalidImage", 1, 1, 1.0),
    ]
    assert duck.run("model_comparison").rows == []
    assert duck.run("cost_per_1000_studies").as_dicts()[0]["studies"] == 1


def test_a_redelivered_workflow_record_counts_from_its_first_delivery(tmp_path: Path) -> None:
    """Which execution is a study's latest is decided by its workflow records' first deliveries: execution one finished
    first, its SendTelemetry was retried after execution two finished (the copy restamped later), and three copies of
    one stage record (two byte for byte) arrived. Two is the latest; every record counts once."""
    sink = LocalLakeSink(LocalObjectStore(tmp_path), "telemetry")
    one = execution_records("s", "one", BASE, 1)
    two = execution_records("s", "two", BASE + timedelta(minutes=1), 2)
    sink.send(one)
    sink.send(two)
    sink.send(one[:-1] + [one[-1].model_copy(update={"time": BASE + timedelta(minutes=2), "duration_ms": 120000.0})])
    sink.send([two[0], two[0]])
    duck = DuckDBQueryRunner(tmp_path / "telemetry")
    assert duck.run("throughput_per_minute").rows == [(f"{BASE + timedelta(minutes=1):%Y-%m-%d %H:%M}", 1, 1, 0)]
    assert [(r["execution_id"], r["end_to_end_ms"]) for r in duck.run("study_end_to_end").as_dicts()] == [("two", 2000.0)]
    assert duck.run("error_rate").rows == no_errors(studies=1)


def test_the_billed_transitions_are_the_states_a_study_enters(tmp_path: Path) -> None:
    """Step Functions bills each state a study enters. A sidecar and a DICOM study run through template.yaml's
    definition (the local runtime executes it): the states they enter are what both cost queries bill for them."""
    from radstream.runtime import LocalRuntime
    from shared.settings import Settings
    from synthetic.samples import write_demo_studies

    entered: dict[str, int] = {}
    with LocalRuntime(Settings(data_dir=tmp_path / "data")) as runtime:
        for folder in write_demo_studies(tmp_path / "studies", 1, size=256, invalid=False):
            study_id = runtime.study_id(folder)
            (execution_input,) = [i for e in runtime.upload(folder, study_id) for i in runtime.route(e)]
            execution = runtime.start(execution_input)
            assert execution.status == "SUCCEEDED", folder.name
            entered[folder.name] = sum(e.type.endswith("StateEntered") for e in execution.history)
    assert set(entered) == {"demo-001", "demo-dicom"}
    for name in ("cost_per_1000_studies", "cost_breakdown"):
        sql = load_named_queries()[name].sql
        per_study = int(re.search(r"(\d+) AS transitions_per_study", sql)[1])  # type: ignore[index]
        per_export = int(re.search(r"(\d+) AS export_transitions", sql)[1])  # type: ignore[index]
        assert (per_study, per_study + per_export) == (entered["demo-001"], entered["demo-dicom"]), name
    duck = DuckDBQueryRunner(tmp_path / "data" / "telemetry")
    items = {(r["service"], r["item"]): r for r in duck.run("cost_breakdown", days=1).as_dicts()}
    assert items[("Step Functions", "state transitions")]["quantity"] == sum(entered.values())
    [total] = duck.run("cost_per_1000_studies", days=1).as_dicts()
    assert total["step_functions_usd"] == pytest.approx(sum(entered.values()) * 0.000025, abs=1e-9)
