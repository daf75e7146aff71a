"""template.yaml's safe releases and guard rails: aliases shifted by CodeDeploy with rollback alarms, the
workflow on the aliases, CloudTrail, GuardDuty, the gateway WAF, the budget, replication, tags."""

from __future__ import annotations

import tomllib
from typing import Any

from radstream.template import load_yaml

from .conftest import ROOT, TEMPLATE
from .test_template import transformed  # noqa: F401 - the SAM transform, shared fixture

DOC = load_yaml(TEMPLATE)
RESOURCES: dict[str, dict[str, Any]] = DOC["Resources"]
FUNCTIONS = [name for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"]
SAMCONFIG = tomllib.loads((ROOT / "samconfig.toml").read_text())
ENVIRONMENTS = ("dev", "staging", "prod")


def overrides(env: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in SAMCONFIG[env]["deploy"]["parameters"]["parameter_overrides"])


def test_every_function_shifts_its_alias_gradually_and_rolls_back_on_its_alarms():
    globals_ = DOC["Globals"]["Function"]
    assert globals_["AutoPublishAlias"] == "live" and globals_["DeploymentPreference"]["Type"] == {"Ref": "DeploymentPreferenceType"}
    for name in FUNCTIONS:
        alarms = RESOURCES[name]["Properties"]["DeploymentPreference"]["Alarms"]
        assert alarms == [{"Ref": f"{name}ReleaseErrorsAlarm"}, {"Ref": f"{name}ReleaseLatencyAlarm"}], name
        latency = RESOURCES[f"{name}ReleaseLatencyAlarm"]["Properties"]
        errors = RESOURCES[f"{name}ReleaseErrorsAlarm"]["Properties"]
        new_version = {"Name": "ExecutedVersion", "Value": {"Fn::GetAtt": [name, "Version.Version"]}}
        assert new_version in latency["Dimensions"] and latency["MetricName"] == "Duration" and latency["ExtendedStatistic"] == "p95"
        metrics = {m["Id"]: m for m in errors["Metrics"]}
        assert metrics["errors"]["MetricStat"]["Metric"]["MetricName"] == "Errors"
        assert new_version in metrics["errors"]["MetricStat"]["Metric"]["Dimensions"]
        assert "100 * errors / invocations" in metrics["error_rate"]["Expression"]
        assert errors["Threshold"] == {"Ref": "ReleaseErrorRatePercent"}


def test_the_transform_gives_codedeploy_groups_that_stop_and_roll_back_on_alarm(transformed):  # noqa: F811 - the fixture imported above
    resources = transformed["Resources"]
    groups = {n: r["Properties"] for n, r in resources.items() if r["Type"] == "AWS::CodeDeploy::DeploymentGroup"}
    assert len(groups) == len(FUNCTIONS)
    for props in groups.values():
        assert props["AlarmConfiguration"]["Enabled"] is True and len(props["AlarmConfiguration"]["Alarms"]) == 2
        assert "DEPLOYMENT_STOP_ON_ALARM" in props["AutoRollbackConfiguration"]["Events"]
    machines = [r for r in resources.values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    assert len(machines) == 2  # the routine and the urgent lane
    for machine in machines:
        functions = {k: v for k, v in machine["Properties"]["DefinitionSubstitutions"].items() if k.endswith("FunctionArn")}
        assert len(functions) == 9
        for value in functions.values():
            assert resources[value["Ref"]]["Type"] == "AWS::Lambda::Alias" and resources[value["Ref"]]["Properties"]["Name"] == "live"


def test_each_environment_gets_its_own_traffic_shifting(infra_python, tmp_path):
    """The SAM transform, given an environment's parameters as `sam deploy` passes them, configures CodeDeploy with them."""
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).with_name("sam_translate.py")
    for env in ("staging", "prod"):
        kind = overrides(env)["DeploymentPreferenceType"]
        out = tmp_path / f"{env}.json"
        result = subprocess.run(
            [str(infra_python), str(script), str(TEMPLATE), str(out), f"DeploymentPreferenceType={kind}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        groups = [
            r["Properties"] for r in json.loads(out.read_text())["Resources"].values() if r["Type"] == "AWS::CodeDeploy::DeploymentGroup"
        ]
        assert groups and all(
            g["DeploymentConfigName"] == {"Fn::Sub": ["CodeDeployDefault.Lambda${ConfigName}", {"ConfigName": kind}]} for g in groups
        )
        assert all(g["DeploymentStyle"]["DeploymentType"] == "BLUE_GREEN" for g in groups)


def test_environments_release_differently_and_each_gradually():
    kinds = {env: overrides(env)["DeploymentPreferenceType"] for env in ENVIRONMENTS}
    assert all(k.startswith(("Canary", "Linear")) for k in kinds.values()) and len(set(kinds.values())) == 3
    allowed = DOC["Parameters"]["DeploymentPreferenceType"]["AllowedValues"]
    assert set(kinds.values()) <= set(allowed)


def test_every_stack_tags_project_environment_and_classification():
    for section, params in SAMCONFIG.items():
        deploy = params.get("deploy", {}).get("parameters") if isinstance(params, dict) else None
        if not deploy:
            continue
        tags = dict(t.split("=", 1) for t in deploy["tags"].split())
        env = section.split("-")[0]
        assert tags["project"] == "radstream" and tags["environment"] == env and tags["data-classification"], section


def test_cloudtrail_records_object_access_to_studies_and_results():
    trail = RESOURCES["AuditTrail"]["Properties"]
    assert trail["IsMultiRegionTrail"] and trail["EnableLogFileValidation"] and trail["IsLogging"]
    assert trail["KMSKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    data = [s for s in trail["AdvancedEventSelectors"] if {"Field": "eventCategory", "Equals": ["Data"]} in s["FieldSelectors"]]
    (arns,) = [f["StartsWith"] for s in data for f in s["FieldSelectors"] if f["Field"] == "resources.ARN"]
    assert arns == [{"Fn::Sub": "${ImagesBucket.Arn}/"}, {"Fn::Sub": "${ResultsBucket.Arn}/"}]
    assert any({"Field": "eventCategory", "Equals": ["Management"]} in s["FieldSelectors"] for s in trail["AdvancedEventSelectors"])
    policy = RESOURCES["AuditTrailBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    writes = [s for s in policy if s.get("Principal") == {"Service": "cloudtrail.amazonaws.com"} and s["Action"] == "s3:PutObject"]
    assert writes and all("aws:SourceArn" in s["Condition"]["StringEquals"] for s in writes)


def test_guardduty_protects_s3_and_eks_and_pages_on_high_findings():
    detector = RESOURCES["GuardDutyDetector"]
    features = {f["Name"]: f for f in detector["Properties"]["Features"]}
    assert {n for n, f in features.items() if f["Status"] == "ENABLED"} >= {"S3_DATA_EVENTS", "EKS_AUDIT_LOGS", "RUNTIME_MONITORING"}
    assert features["RUNTIME_MONITORING"]["AdditionalConfiguration"] == [{"Name": "EKS_ADDON_MANAGEMENT", "Status": "ENABLED"}]
    assert detector["Condition"] == "CreateGuardDuty"
    rule = RESOURCES["GuardDutyFindingsRule"]["Properties"]
    assert rule["EventPattern"]["source"] == ["aws.guardduty"] and rule["Targets"][0]["Arn"] == {"Ref": "AlertsTopic"}


def test_the_gateway_waf_is_ready_but_only_built_when_asked():
    acl = RESOURCES["GatewayWebAcl"]
    assert acl["Condition"] == "CreateGatewayWaf" and acl["Properties"]["Scope"] == "REGIONAL"
    groups = {
        r["Statement"]["ManagedRuleGroupStatement"]["Name"]: r
        for r in acl["Properties"]["Rules"]
        if "ManagedRuleGroupStatement" in r["Statement"]
    }
    assert {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"} <= set(groups)
    # DICOM uploads are megabytes: the common set's body-size rule only counts.
    overrides_ = groups["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]["RuleActionOverrides"]
    assert {"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}} in overrides_
    assert any("RateBasedStatement" in r["Statement"] for r in acl["Properties"]["Rules"])
    assert RESOURCES["GatewayWafLogging"]["Condition"] == "CreateGatewayWaf"
    assert RESOURCES["GatewayWebAclAssociation"]["Condition"] == "AssociateGatewayWaf"
    assert DOC["Parameters"]["EnableGatewayWaf"]["Default"] == "false"


def test_the_budget_alarms_through_the_alerts_topic():
    budget = RESOURCES["MonthlyBudget"]["Properties"]
    assert budget["Budget"]["BudgetLimit"]["Amount"] == {"Ref": "MonthlyBudgetUsd"}
    assert budget["Budget"]["CostFilters"]["TagKeyValue"] == ["user:project$radstream"]
    kinds = {n["Notification"]["NotificationType"] for n in budget["NotificationsWithSubscribers"]}
    assert kinds == {"ACTUAL", "FORECASTED"}
    assert all(
        {"SubscriptionType": "SNS", "Address": {"Ref": "AlertsTopic"}} in n["Subscribers"] for n in budget["NotificationsWithSubscribers"]
    )
    key = RESOURCES["DataKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert any("budgets.amazonaws.com" in s.get("Principal", {}).get("Service", []) for s in key)
    assert len({overrides(env)["MonthlyBudgetUsd"] for env in ENVIRONMENTS}) == 3


def test_replication_is_behind_its_condition():
    for bucket in ("ImagesBucket", "ResultsBucket"):
        condition, config, otherwise = RESOURCES[bucket]["Properties"]["ReplicationConfiguration"]["Fn::If"]
        assert condition == "Replicate" and otherwise == {"Ref": "AWS::NoValue"}
        (rule,) = config["Rules"]
        assert rule["SourceSelectionCriteria"]["SseKmsEncryptedObjects"]["Status"] == "Enabled"
        assert rule["Destination"]["EncryptionConfiguration"]["ReplicaKmsKeyID"] == {"Ref": "ReplicationDestinationKmsKeyArn"}
    assert RESOURCES["ReplicationRole"]["Condition"] == "Replicate"
    assert DOC["Conditions"]["Replicate"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ReplicationDestinationBucketArn"}, ""]}]}


def test_rules_use_only_the_functions_cloudformation_allows_in_rules():
    """Rules take a narrower set of intrinsics than Conditions (no Fn::Join, no Fn::Sub); cfn-lint does not check it."""
    allowed = {
        "Fn::And",
        "Fn::Contains",
        "Fn::EachMemberEquals",
        "Fn::EachMemberIn",
        "Fn::Equals",
        "Fn::Not",
        "Fn::Or",
        "Fn::RefAll",
        "Fn::ValueOf",
        "Fn::ValueOfAll",
        "Ref",
    }

    def functions(value: Any) -> set[str]:
        if isinstance(value, dict):
            return {k for k in value if k.startswith("Fn::") or k == "Ref"} | {f for v in value.values() for f in functions(v)}
        if isinstance(value, list):
            return {f for v in value for f in functions(v)}
        return set()

    for doc in (DOC, load_yaml(ROOT / "infra" / "platform.yaml")):
        assert doc["Rules"]
        for name, rule in doc["Rules"].items():
            assert functions(rule) <= allowed, (name, functions(rule) - allowed)
