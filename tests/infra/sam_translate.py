"""Transforms template.yaml with aws-sam-translator, offline; run by the tools environment's Python.

Usage: python sam_translate.py TEMPLATE OUT.json [NAME=VALUE ...] (parameter values, as sam deploy passes them). What `sam build` and `sam package` do first is done here
too: each image function gets an ImageUri (ECR fills it at deploy), each local DefinitionUri an S3 location. Managed policies resolve to their well-known
ARNs instead of through IAM, so no AWS account is needed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class OfflinePolicies:
    """SAM asks IAM for managed policy ARNs; the ones it adds for tracing and VPC access are fixed names."""

    def load(self) -> dict[str, str]:
        names = ["AWSLambdaBasicExecutionRole", "AWSXRayDaemonWriteAccess", "AWSLambdaVPCAccessExecutionRole", "AWSXrayWriteOnlyAccess"]
        return {name: f"arn:aws:iam::aws:policy/service-role/{name}" for name in names}


def main(template: str, out: str, *overrides: str) -> None:
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")  # the translator reads the region from a boto3 session
    doc = yaml_parse(Path(template).read_text())
    for resource in doc["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function" and resource["Properties"].get("PackageType") == "Image":
            resource["Properties"].setdefault("ImageUri", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/radstream:offline")
        # `sam package` uploads a state machine's local DefinitionUri (statemachine/study.asl.yaml) and names the object.
        uri = resource.get("Properties", {}).get("DefinitionUri")
        if resource.get("Type") == "AWS::Serverless::StateMachine" and isinstance(uri, str) and not uri.startswith("s3://"):
            resource["Properties"]["DefinitionUri"] = {"Bucket": "radstream-offline-artifacts", "Key": uri}
    parameters = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}
    parameters.update(item.split("=", 1) for item in overrides)
    output = transform(doc, parameters, OfflinePolicies())
    Path(out).write_text(json.dumps(output, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
