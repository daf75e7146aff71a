"""template.yaml, offline: cfn-lint, the SAM transform, checkov, least-privilege IAM, and what the local
runtime and the services rely on (images, handlers, the lake layout)."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import pytest

from radstream.template import Template, load_yaml
from shared.contracts import TelemetryRecord
from shared.telemetry import partition_prefix

from .conftest import ROOT, TEMPLATE, assert_cloudformation_skips_say_why, checkov_passes

DOC = load_yaml(TEMPLATE)
RESOURCES: dict[str, dict[str, Any]] = DOC["Resources"]
FUNCTIONS = {name: r for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}


def test_cfn_lint_finds_no_errors():
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["eu-west-1", "us-east-1"]))
    errors = [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches if m.rule.severity == "error"]
    assert not errors, "\n".join(errors)


@pytest.fixture(scope="module")
def transformed(infra_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sam") / "template.json"
    result = subprocess.run(
        [str(infra_python), str(Path(__file__).with_name("sam_translate.py")), str(TEMPLATE), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_sam_transform_produces_the_workflow_rules_and_roles(transformed):
    types = [r["Type"] for r in transformed["Resources"].values()]
    assert types.count("AWS::Lambda::Function") == len(FUNCTIONS)
    assert types.count("AWS::StepFunctions::StateMachine") == 2  # the routine and the urgent lane (docs/triage.md)
    for name in ("StudyWorkflow", "UrgentStudyWorkflow"):
        machine = transformed["Resources"][name]["Properties"]
        # `sam package`'s upload of the one definition file, for both.
        assert machine["DefinitionS3Location"]["Key"] == "statemachine/study.asl.yaml", name
    (target,) = transformed["Resources"]["StudyWorkflowStudyUploaded"]["Properties"]["Targets"]
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["StudyEventsDeadLetterQueue", "Arn"]}}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    assert "InputTransformer" in target


def statements(doc: Any) -> list[dict[str, Any]]:
    """Every IAM statement anywhere in a template: roles, inline and managed policies, key, bucket, queue and topic policies."""
    found = []
    if isinstance(doc, dict):
        if "Statement" in doc and ("Version" in doc or isinstance(doc["Statement"], list)):
            found.extend(s for s in (doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]) if isinstance(s, dict))
        for value in doc.values():
            found.extend(statements(value))
    elif isinstance(doc, list):
        for value in doc:
            found.extend(statements(value))
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_no_statement_allows_every_action(transformed):
    for doc in (DOC, transformed):
        allowed = [s for s in statements(doc) if s.get("Effect") == "Allow"]
        assert allowed
        wide = [s for s in allowed if "*" in as_list(s.get("Action", [])) or s.get("NotAction")]
        assert not wide, wide


def test_every_resource_star_says_why():
    """Resource "*" only where AWS demands it, and a YAML comment on or above it says why."""
    lines = TEMPLATE.read_text().splitlines()
    for number, line in enumerate(lines):
        if not re.search(r"""Resource:\s*["']\*["']""", line):
            continue
        indent = len(line) - len(line.lstrip())
        span = [line]
        for above in reversed(lines[max(0, number - 15) : number]):
            span.append(above)
            stripped = above.lstrip()
            if stripped.startswith("- ") and len(above) - len(stripped) < indent:
                break
        span.append(lines[number - len(span)] if number - len(span) >= 0 else "")
        assert any("#" in s for s in span), f'template.yaml:{number + 1}: Resource "*" without a comment saying why'


def test_functions_use_scoped_statements_and_the_data_key():
    for name, function in FUNCTIONS.items():
        policies = function["Properties"]["Policies"]
        assert not [p for p in policies if isinstance(p, str)], f"{name}: a managed policy by name is too broad"
        for policy in policies:
            template_name = next(iter(policy))
            assert template_name in ("Statement", "LambdaInvokePolicy"), f"{name}: {template_name} grants more than the stage uses"
        actions = {
            a for s in statements({"Statement": [s for p in policies for s in p.get("Statement", [])]}) for a in as_list(s["Action"])
        }
        assert {"kms:Decrypt", "kms:GenerateDataKey"} <= actions, name


def test_checkov_passes_and_every_skip_is_justified(infra_python: Path, tmp_path: Path):
    checkov_passes(infra_python, tmp_path, "-f", str(TEMPLATE), "--framework", "cloudformation", timeout=300, more_than=50)
    assert_cloudformation_skips_say_why(RESOURCES, longer_than=20)


def test_every_function_image_and_handler_exists():
    for name, function in FUNCTIONS.items():
        props, metadata = function["Properties"], function["Metadata"]
        assert props["PackageType"] == "Image" and metadata["DockerContext"] == "."
        dockerfile = ROOT / metadata["Dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert (
            dockerfile.read_text().startswith(("#", "FROM public.ecr.aws/lambda/python:3.11"))
            and "FROM public.ecr.aws/lambda/python:3.11" in dockerfile.read_text()
        )
        (handler,) = props["ImageConfig"]["Command"]
        module, _, attribute = handler.rpartition(".")
        source = ROOT / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{name}: {source} missing"
        assert re.search(rf"^{attribute}\s*=|^def {attribute}\(", source.read_text(), re.M), f"{name}: {handler} not defined"
        assert f"COPY services/{module.split('.')[1]}/" in dockerfile.read_text(), f"{name}: the image does not hold {module}"


def test_functions_run_with_the_deployment_settings():
    globals_ = DOC["Globals"]["Function"]
    assert (globals_["MemorySize"], globals_["Timeout"], globals_["Tracing"]) == (512, 60, "Active")
    assert globals_["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    vpc = FUNCTIONS["InferenceFunction"]["Properties"]["VpcConfig"]
    # The platform stack's private subnets (infra/platform.yaml exports them), or an existing VPC's.
    condition, imported, existing = vpc["SubnetIds"]["Fn::If"]
    assert condition == "UsePlatformStack" and existing == {"Ref": "PrivateSubnetIds"}
    assert imported == {"Fn::Split": [",", {"Fn::ImportValue": {"Fn::Sub": "${PlatformStackName}-PrivateSubnetIds"}}]}
    assert RESOURCES[vpc["SecurityGroupIds"][0]["Ref"]]["Type"] == "AWS::EC2::SecurityGroup"


def test_workflow_logs_errors_without_execution_data():
    _, machine = Template(TEMPLATE).state_machine
    props = machine["Properties"]
    assert props["Type"] == "STANDARD" and props["Tracing"] == {"Enabled": True}
    assert props["Logging"]["IncludeExecutionData"] is False and props["Logging"]["Level"] in ("ERROR", "ALL")


def test_definition_has_no_yaml_aliases():
    """CloudFormation does not accept YAML anchors and aliases: the definition spells every Retry and Catch out."""
    assert not re.search(r"(?m):\s*[&*][A-Za-z_]+\s*$", TEMPLATE.read_text())


def test_buckets_are_encrypted_versioned_private_logged_and_tls_only():
    buckets = {name: r["Properties"] for name, r in RESOURCES.items() if r["Type"] == "AWS::S3::Bucket"}
    assert {"ImagesBucket", "ResultsBucket", "TelemetryBucket", "ArtifactsBucket"} <= set(buckets)
    policies = {
        r["Properties"]["Bucket"]["Ref"]: r["Properties"]["PolicyDocument"]
        for r in RESOURCES.values()
        if r["Type"] == "AWS::S3::BucketPolicy"
    }
    for name, props in buckets.items():
        assert props["VersioningConfiguration"]["Status"] == "Enabled", name
        assert all(props["PublicAccessBlockConfiguration"].values()), name
        denies = [s for s in policies[name]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies), name
        if name != "AccessLogsBucket":
            (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            assert rule["ServerSideEncryptionByDefault"] == {
                "SSEAlgorithm": "aws:kms",
                "KMSMasterKeyID": {"Fn::GetAtt": ["DataKey", "Arn"]},
            }
            assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogsBucket"}
    tensors = [r for r in buckets["ArtifactsBucket"]["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "tensors/"]
    assert tensors and tensors[0]["ExpirationInDays"] == {"Ref": "TensorRetentionDays"}
    assert DOC["Parameters"]["TensorRetentionDays"]["MaxValue"] <= 7
    assert RESOURCES["DataKey"]["Properties"]["EnableKeyRotation"] is True


def test_firehose_writes_the_layout_the_local_lake_writes():
    """Firehose's JQ query on `time` and its prefix give the same dt=/hour= partition as shared.telemetry."""
    s3 = RESOURCES["TelemetryDeliveryStream"]["Properties"]["ExtendedS3DestinationConfiguration"]
    (extraction,) = [p for p in s3["ProcessingConfiguration"]["Processors"] if p["Type"] == "MetadataExtraction"]
    query = {p["ParameterName"]: p["ParameterValue"] for p in extraction["Parameters"]}["MetadataExtractionQuery"]
    slices = dict(re.findall(r"(\w+): \.time\[(\d+:\d+)\]", query))
    assert set(slices) == {"dt", "hour"}, query
    for moment in (datetime(2026, 3, 1, 0, 5, 7, 1234, tzinfo=UTC), datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)):
        record = json.loads(
            TelemetryRecord(
                event_id="e", time=moment, study_id="s", execution_id="x", stage="validate", status="succeeded"
            ).model_dump_json()
        )
        keys = {name: record["time"][slice(*map(int, span.split(":")))] for name, span in slices.items()}
        prefix = s3["Prefix"].replace("!{partitionKeyFromQuery:dt}", keys["dt"]).replace("!{partitionKeyFromQuery:hour}", keys["hour"])
        assert prefix == partition_prefix(moment)
    assert s3["CompressionFormat"] == "GZIP" and s3["ErrorOutputPrefix"] and s3["DynamicPartitioningConfiguration"]["Enabled"]
    assert RESOURCES["TelemetryDeliveryStream"]["Properties"]["DeliveryStreamType"] == "KinesisStreamAsSource"


def test_alarms_notify_the_topic():
    alarms = {name: r["Properties"] for name, r in RESOURCES.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    metrics = {p.get("MetricName") for p in alarms.values()} | {
        m["MetricStat"]["Metric"]["MetricName"] for p in alarms.values() for m in p.get("Metrics", []) if "MetricStat" in m
    }
    assert {"ExecutionTime", "ExecutionsFailed", "ApproximateNumberOfMessagesVisible", "DeliveryToS3.Success"} <= metrics
    assert all(p["AlarmActions"] == [{"Ref": "AlertsTopic"}] for p in alarms.values())
    assert alarms["EndToEndLatencyAlarm"]["ExtendedStatistic"] == "p95"
    assert RESOURCES["AlertsTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}
    rule = RESOURCES["WorkflowFailedRule"]["Properties"]
    assert rule["EventPattern"]["detail"]["status"] == ["FAILED", "TIMED_OUT", "ABORTED"]
    assert {t["Id"] for t in rule["Targets"]} == {"failed-executions-queue", "alerts-topic"}


def test_samconfig_environments_differ_where_they_should():
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    parameters = {}
    for env in ("dev", "staging", "prod"):
        deploy = config[env]["deploy"]["parameters"]
        assert (
            deploy["resolve_image_repos"] is True
            and deploy["stack_name"] == f"radstream-{env}"
            and "CAPABILITY_IAM" in deploy["capabilities"]
        )
        parameters[env] = dict(item.split("=", 1) for item in deploy["parameter_overrides"])
        assert set(parameters[env]) <= set(DOC["Parameters"]), set(parameters[env]) - set(DOC["Parameters"])
        assert parameters[env]["EnvironmentName"] == env
    for name in ("LogRetentionDays", "ReservedConcurrency", "FailureRateThresholdPercent"):
        assert len({parameters[env][name] for env in parameters}) == 3, name
    assert int(parameters["prod"]["ReservedConcurrency"]) > int(parameters["dev"]["ReservedConcurrency"])
