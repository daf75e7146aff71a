"""Where the stacks' traffic may go and how their buckets hold data: egress only to named destinations (never
0.0.0.0/0), TLS 1.2 or newer on every bucket, the audit trail's logs write-once."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from radstream.template import load_yaml

from .conftest import ROOT, TEMPLATE

APP = load_yaml(TEMPLATE)
PLATFORM = load_yaml(ROOT / "infra" / "platform.yaml")
ANYWHERE = ("0.0.0.0/0", "::/0")


def of_type(doc: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in doc["Resources"].items() if r["Type"] == kind}


def egress_rules(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rules = [
        (name, rule)
        for name, r in of_type(doc, "AWS::EC2::SecurityGroup").items()
        for rule in r["Properties"].get("SecurityGroupEgress", [])
    ]
    rules += [
        (r["Properties"]["GroupId"].get("Ref", str(r["Properties"]["GroupId"])), r["Properties"])
        for r in of_type(doc, "AWS::EC2::SecurityGroupEgress").values()
    ]
    return rules


def test_no_security_group_egress_reaches_anywhere():
    """Every egress rule of both stacks names a CIDR narrower than the internet, a prefix list or a security group."""
    for doc in (APP, PLATFORM):
        rules = egress_rules(doc)
        assert rules
        for group, rule in rules:
            destinations = {
                k: rule[k] for k in ("CidrIp", "CidrIpv6", "DestinationPrefixListId", "DestinationSecurityGroupId") if k in rule
            }
            assert len(destinations) == 1, (group, rule)
            assert not set(json.dumps(destinations).split('"')) & set(ANYWHERE), f"{group}: egress to the internet: {rule['Description']}"


def test_the_vpc_functions_reach_aws_only_through_the_endpoints():
    """HTTPS from the inference and delivery functions goes to S3's prefix list (the gateway endpoint) and the interface
    endpoints' security group, which the platform stack exports; the delivery function's TLS also to the hospital."""
    exported = {o["Export"]["Name"]["Fn::Sub"].split("-", 1)[1]: o["Value"] for o in PLATFORM["Outputs"].values() if "Export" in o}
    assert exported["EndpointSecurityGroupId"] == {"Ref": "EndpointSecurityGroup"}
    for group in ("InferenceSecurityGroup", "DeliverySecurityGroup"):
        https = [r for r in APP["Resources"][group]["Properties"]["SecurityGroupEgress"] if r["FromPort"] == 443]
        by_kind = {next(k for k in r if k.startswith(("Cidr", "Destination"))): r for r in https}
        assert by_kind["DestinationPrefixListId"]["ToPort"] == 443
        assert by_kind["DestinationPrefixListId"]["DestinationPrefixListId"] == {"Ref": "S3PrefixListId"}
        assert "EndpointSecurityGroupId" in json.dumps(by_kind["DestinationSecurityGroupId"]["DestinationSecurityGroupId"])
        if group == "DeliverySecurityGroup":
            assert by_kind["CidrIp"]["CidrIp"] == {"Ref": "HospitalNetworkCidr"}
        else:
            assert "CidrIp" not in by_kind
    # Every environment names its region's S3 prefix list.
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    pattern = APP["Parameters"]["S3PrefixListId"]["AllowedPattern"]
    for env, tables in config.items():
        if not isinstance(tables, dict) or env == "default" or env.endswith(("-platform", "-delivery")):
            continue
        overrides = dict(i.split("=", 1) for i in tables["deploy"]["parameters"]["parameter_overrides"])
        assert re.fullmatch(pattern, overrides["S3PrefixListId"]), env


def bucket_policies(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """bucket resource name -> its policy's statements."""
    return {
        p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"]["Statement"]
        for p in of_type(doc, "AWS::S3::BucketPolicy").values()
    }


def test_every_bucket_refuses_plain_http_and_tls_below_1_2():
    buckets = set(of_type(APP, "AWS::S3::Bucket"))
    policies = bucket_policies(APP)
    assert buckets and set(policies) == buckets, buckets ^ set(policies)
    for bucket, statements in policies.items():
        denies = [s for s in statements if s["Effect"] == "Deny" and s["Principal"] == "*" and s["Action"] == "s3:*"]
        conditions = [s["Condition"] for s in denies]
        assert {"Bool": {"aws:SecureTransport": "false"}} in conditions, bucket
        assert {"NumericLessThan": {"s3:TlsVersion": "1.2"}} in conditions, bucket
        for statement in denies:  # the bucket and its objects alike
            assert len(statement["Resource"]) == 2, (bucket, statement["Sid"])


def test_the_audit_trail_is_write_once():
    trails = of_type(APP, "AWS::CloudTrail::Trail")
    (trail,) = trails.values()
    bucket = APP["Resources"][trail["Properties"]["S3BucketName"]["Ref"]]["Properties"]
    assert bucket["ObjectLockEnabled"] is True and bucket["VersioningConfiguration"]["Status"] == "Enabled"
    lock = bucket["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    retention = lock["Rule"]["DefaultRetention"]
    assert retention["Mode"] == "COMPLIANCE"  # governance mode can be bypassed by a principal with the right permission
    days = APP["Parameters"][retention["Days"]["Ref"]]
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    # A lock longer than the lifecycle keeps the files would make the expiration fail silently.
    assert days["MaxValue"] <= rule["ExpirationInDays"] and days["Default"] <= rule["ExpirationInDays"]
