"""The DICOM gateway's IRSA role (template.yaml GatewayUploaderRole) grants nothing beyond putting and reading back
incoming/* of the images bucket, listing results/ and reading the SR and overlay it serves (QIDO/WADO-RS, C-FIND/C-GET),
the data key through S3 only, and the one pseudonym-key secret; and the platform's endpoints the gateway pods use
admit no more than that."""

from __future__ import annotations

import json
import re
from typing import Any

from radstream.template import load_yaml

from .conftest import ROOT, TEMPLATE
from .test_template import as_list

DOC = load_yaml(TEMPLATE)
RESOURCES: dict[str, dict[str, Any]] = DOC["Resources"]
PLATFORM = load_yaml(ROOT / "infra" / "platform.yaml")["Resources"]
ROLE = RESOURCES["GatewayUploaderRole"]


def role_statements() -> list[dict[str, Any]]:
    return [s for policy in ROLE["Properties"]["Policies"] for s in policy["PolicyDocument"]["Statement"]]


def grants() -> set[tuple[str, str, str]]:
    """(action, resource, kms:ViaService or '') for every Allow of the role."""
    found = set()
    for statement in role_statements():
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        via = json.dumps(statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService", ""))
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                found.add((action, json.dumps(resource), via))
    return found


INCOMING = json.dumps({"Fn::Sub": "${ImagesBucket.Arn}/incoming/*"})
SERVED = {
    json.dumps({"Fn::Sub": "${ResultsBucket.Arn}/results/*/report.sr.dcm"}),
    json.dumps({"Fn::Sub": "${ResultsBucket.Arn}/results/*/report.overlay.dcm"}),
}


def test_s3_grants_are_incoming_instances_and_the_exports_it_serves():
    s3 = {(a, r) for a, r, _ in grants() if a.startswith("s3:")}
    assert s3 == {
        ("s3:PutObject", INCOMING),
        ("s3:GetObject", INCOMING),
        ("s3:ListBucket", json.dumps({"Fn::GetAtt": ["ResultsBucket", "Arn"]})),
        *{("s3:GetObject", served) for served in SERVED},
    }
    (listing,) = [s for s in role_statements() if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "results/*"}}


def test_the_rest_is_the_data_key_through_s3_and_the_one_secret():
    data_key = json.dumps({"Fn::GetAtt": ["DataKey", "Arn"]})
    s3_only = json.dumps({"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"})
    secrets_only = json.dumps({"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"})
    assert {g for g in grants() if not g[0].startswith("s3:")} == {
        ("kms:GenerateDataKey", data_key, s3_only),
        ("kms:Encrypt", data_key, s3_only),
        ("kms:Decrypt", data_key, s3_only),
        ("secretsmanager:GetSecretValue", json.dumps({"Ref": "GatewayPseudonymKey"}), '""'),
        ("kms:Decrypt", data_key, secrets_only),
    }
    assert not [a for a, _, _ in grants() if "*" in a]
    assert "ManagedPolicyArns" not in ROLE["Properties"] and "PermissionsBoundary" not in ROLE["Properties"]


def test_nothing_else_attaches_to_the_role():
    for name, resource in RESOURCES.items():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
            assert "GatewayUploaderRole" not in json.dumps(resource), name


def test_only_the_gateway_service_account_assumes_it():
    values = {"Issuer": "ISSUER", "AWS::Partition": "aws", "AWS::AccountId": "111122223333"}
    trust = json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], ROLE["Properties"]["AssumeRolePolicyDocument"]["Fn::Sub"][0]))
    (statement,) = trust["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"]["StringEquals"] == {
        "ISSUER:sub": "system:serviceaccount:radstream-gateway:gateway",
        "ISSUER:aud": "sts.amazonaws.com",
    }


def test_the_secret_is_encrypted_with_the_data_key_and_the_endpoints_admit_no_more():
    secret = RESOURCES["GatewayPseudonymKey"]["Properties"]
    assert secret["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert secret["GenerateSecretString"]["PasswordLength"] >= 32
    assert RESOURCES["GatewayPseudonymKey"]["Condition"] == ROLE["Condition"]
    incoming, served = PLATFORM["GatewayS3Endpoint"]["Properties"]["PolicyDocument"]["Statement"]
    assert (incoming["Action"], incoming["Resource"]) == (
        ["s3:PutObject", "s3:GetObject"],
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::radstream-images-${AWS::AccountId}/incoming/*"},
    )
    results = "arn:${AWS::Partition}:s3:::radstream-results-${AWS::AccountId}"
    assert (served["Action"], served["Resource"]) == (
        ["s3:ListBucket", "s3:GetObject"],
        [{"Fn::Sub": results}, {"Fn::Sub": results + "/results/*/report.sr.dcm"}, {"Fn::Sub": results + "/results/*/report.overlay.dcm"}],
    )
    assert RESOURCES["ResultsBucket"]["Properties"]["BucketName"] == {"Fn::Sub": "radstream-results-${AWS::AccountId}"}
    assert RESOURCES["ImagesBucket"]["Properties"]["BucketName"] == {"Fn::Sub": "radstream-images-${AWS::AccountId}"}
    (sm,) = PLATFORM["SecretsManagerEndpoint"]["Properties"]["PolicyDocument"]["Statement"]
    assert sm["Action"] == "secretsmanager:GetSecretValue"
    prefix = sm["Resource"]["Fn::Sub"].split(":secret:", 1)[1].rstrip("*")
    assert secret["Name"]["Fn::Sub"].startswith(prefix)
