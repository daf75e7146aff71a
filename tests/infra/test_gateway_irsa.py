"""The DICOM gateway's IRSA role (template.yaml GatewayUploaderRole) grants nothing beyond s3:PutObject on
incoming/* of the images bucket, with the data key through S3 only, and the one pseudonym-key secret; and the
platform's endpoints the gateway pods use admit no more than that."""
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


def test_s3_grants_are_put_object_on_incoming_only():
    s3 = {(a, r) for a, r, _ in grants() if a.startswith("s3:")}
    assert s3 == {("s3:PutObject", json.dumps({"Fn::Sub": "${ImagesBucket.Arn}/incoming/*"}))}


def test_the_rest_is_the_data_key_through_s3_and_the_one_secret():
    data_key = json.dumps({"Fn::GetAtt": ["DataKey", "Arn"]})
    s3_only = json.dumps({"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"})
    secrets_only = json.dumps({"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"})
    assert grants() == {
        ("s3:PutObject", json.dumps({"Fn::Sub": "${ImagesBucket.Arn}/incoming/*"}), '""'),
        ("kms:GenerateDataKey", data_key, s3_only),
        ("kms:Encrypt", data_key, s3_only),
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
    assert statement["Condition"]["StringEquals"] == {"ISSUER:sub": "system:serviceaccount:radstream-gateway:gateway",
                                                     "ISSUER:aud": "sts.amazonaws.com"}


def test_the_secret_is_encrypted_with_the_data_key_and_the_endpoints_admit_no_more():
    secret = RESOURCES["GatewayPseudonymKey"]["Properties"]
    assert secret["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert secret["GenerateSecretString"]["PasswordLength"] >= 32
    assert RESOURCES["GatewayPseudonymKey"]["Condition"] == ROLE["Condition"]
    (s3,) = PLATFORM["GatewayS3Endpoint"]["Properties"]["PolicyDocument"]["Statement"]
    assert (s3["Action"], s3["Resource"]) == ("s3:PutObject", {"Fn::Sub": "arn:${AWS::Partition}:s3:::radstream-images-${AWS::AccountId}/incoming/*"})
    assert RESOURCES["ImagesBucket"]["Properties"]["BucketName"] == {"Fn::Sub": "radstream-images-${AWS::AccountId}"}
    (sm,) = PLATFORM["SecretsManagerEndpoint"]["Properties"]["PolicyDocument"]["Statement"]
    assert sm["Action"] == "secretsmanager:GetSecretValue"
    prefix = sm["Resource"]["Fn::Sub"].split(":secret:", 1)[1].rstrip("*")
    assert secret["Name"]["Fn::Sub"].startswith(prefix)
