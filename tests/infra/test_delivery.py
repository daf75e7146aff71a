"""infra/delivery.yaml, offline: cfn-lint, checkov, and least privilege for GitHub Actions (the OIDC trust names the
repository and the environment; the deploy role changes only its environment's stacks, passes only CloudFormation's
role, pushes only its environment's repositories); and infra/deliver.py's answers to the delivery workflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from radstream.template import load_yaml

from .conftest import ROOT, assert_cloudformation_skips_say_why, checkov_passes
from .test_template import as_list, statements

DELIVERY = ROOT / "infra" / "delivery.yaml"
DOC = load_yaml(DELIVERY)
RESOURCES: dict[str, dict[str, Any]] = DOC["Resources"]
DELIVER = ROOT / "infra" / "deliver.py"


def test_cfn_lint_finds_nothing(infra_python: Path):
    """Not even a warning: cfn-lint exits 4 on one, which fails the template workflow's step."""
    result = subprocess.run(
        [str(infra_python.parent / "cfn-lint"), str(DELIVERY)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_checkov_passes_and_every_skip_is_justified(infra_python: Path, tmp_path: Path):
    checkov_passes(infra_python, tmp_path, "-f", str(DELIVERY), "--framework", "cloudformation", timeout=300, more_than=20)
    assert_cloudformation_skips_say_why(RESOURCES, longer_than=40)


def test_only_this_repositorys_workflow_in_this_environment_can_deploy():
    (statement,) = RESOURCES["DeployRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    condition = statement["Condition"]["StringEquals"]  # StringEquals: no wildcard can widen it
    assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert condition["token.actions.githubusercontent.com:sub"] == {"Fn::Sub": "repo:${GitHubRepository}:environment:${EnvironmentName}"}
    assert RESOURCES["GitHubOidcProvider"]["Properties"]["Url"] == "https://token.actions.githubusercontent.com"
    trust = RESOURCES["CloudFormationExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "cloudformation.amazonaws.com"}]


def deploy_statements() -> dict[str, dict[str, Any]]:
    (policy,) = RESOURCES["DeployRole"]["Properties"]["Policies"]
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}


def test_the_deploy_role_is_least_privilege():
    found = deploy_statements()
    for sid, statement in found.items():
        assert statement["Effect"] == "Allow" and not any("*" in a for a in as_list(statement["Action"])), sid
        if statement["Resource"] == "*":
            assert set(as_list(statement["Action"])) <= {
                "ecr:GetAuthorizationToken",
                "cloudformation:ValidateTemplate",
                "cloudformation:GetTemplateSummary",
            }, sid
    changes = json.dumps(found["ChangeTheEnvironmentsStacksThroughChangeSets"]["Resource"])
    assert "stack/radstream-${EnvironmentName}/*" in changes and "stack/radstream-${EnvironmentName}-platform/*" in changes
    assert "cloudformation:ExecuteChangeSet" in found["ChangeTheEnvironmentsStacksThroughChangeSets"]["Action"]
    # No direct IAM or service rights: everything else happens as CloudFormation, with the role it may only pass there.
    actions = {a for s in found.values() for a in as_list(s["Action"])}
    assert {a.split(":")[0] for a in actions} == {"cloudformation", "iam", "s3", "kms", "ecr"}
    assert [a for a in actions if a.startswith("iam:")] == ["iam:PassRole"]
    passing = found["PassTheExecutionRoleToCloudFormationOnly"]
    assert passing["Resource"] == {"Fn::GetAtt": ["CloudFormationExecutionRole", "Arn"]}
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "cloudformation.amazonaws.com"}}
    repositories = {r["Fn::GetAtt"][0] for r in found["PushAndReadTheEnvironmentsImages"]["Resource"]}
    assert repositories == {n for n, r in RESOURCES.items() if r["Type"] == "AWS::ECR::Repository"}
    for name in repositories:
        props = RESOURCES[name]["Properties"]
        assert props["ImageTagMutability"] == "IMMUTABLE" and props["ImageScanningConfiguration"]["ScanOnPush"] is True
        assert props["RepositoryName"]["Fn::Sub"].startswith("radstream-${EnvironmentName}/")
    for statement in statements(DOC):
        assert statement.get("Effect") != "Allow" or "*" not in as_list(statement.get("Action", [])), statement


def test_the_repositories_are_the_ones_the_workflow_and_render_use():
    """render pins images in radstream-<env>/<repository>; the workflow pushes and copies exactly those."""
    sys.path.insert(0, str(ROOT / "infra"))
    import deliver

    named = {
        r["Properties"]["RepositoryName"]["Fn::Sub"].split("/", 1)[1] for n, r in RESOURCES.items() if r["Type"] == "AWS::ECR::Repository"
    }
    assert set(deliver.IMAGES.values()) | {"functions"} == named
    assert set(deliver.upstream_images()) == {"tritonserver", "k8s-device-plugin"}


def test_deliver_answers_the_workflow():
    settings = subprocess.run(
        [sys.executable, str(DELIVER), "settings", "--env", "staging"], capture_output=True, text=True, timeout=60, check=False
    )
    assert settings.returncode == 0, settings.stderr
    values = dict(line.split("=", 1) for line in settings.stdout.split())
    assert values == {
        "region": "eu-west-1",
        "stack": "radstream-staging",
        "platform_stack": "radstream-staging-platform",
        "delivery_stack": "radstream-staging-delivery",
    }
    refused = subprocess.run(
        [sys.executable, str(DELIVER), "settings", "--env", "qa"], capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2 and "env must be one of" in refused.stderr
    repos = subprocess.run(
        [sys.executable, str(DELIVER), "image-repositories", "--repository", "r"], capture_output=True, text=True, timeout=60, check=False
    )
    functions = [n for n, r in load_yaml(ROOT / "template.yaml")["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]
    assert repos.stdout.split() == [f"--image-repositories={n}=r" for n in functions]
