"""The gateway's pseudonym key: from the environment (GATEWAY_PSEUDONYM_KEY), or, in AWS, from Secrets Manager.

With GATEWAY_PSEUDONYM_SECRET_ARN set, the key is the secret's SecretString, fetched once when the gateway
starts (boto3; the pod's IRSA role may read that one secret and nothing else in Secrets Manager). It is not
re-read while the process runs: a changed key would change every study id, so a rotation is a deliberate
restart (docs/gateway.md, "On EKS"). Any failure stops the gateway before it listens (a pod that cannot read
its key restarts, with Kubernetes' back-off, rather than hash with another key). AWS errors are classified by the one
table (shared/aws_errors.py) every adapter uses: a missing secret or a denied read is a ConfigurationError naming
GATEWAY_PSEUDONYM_SECRET_ARN, throttling or an unreachable endpoint a StorageUnavailable. Errors name the secret's ARN
and the AWS error code, never the value.
"""

from __future__ import annotations

from typing import Any

from shared.aws_errors import translated
from shared.errors import ConfigurationError
from shared.settings import Settings

MIN_KEY_CHARS = 16


def fetch_secret(arn: str, client: Any = None) -> str:
    """The SecretString of `arn`; ConfigurationError when it is missing, binary, short or not readable (StorageUnavailable
    when Secrets Manager throttles or cannot be reached)."""
    if client is None:
        from shared.wiring import boto3_client

        client = boto3_client("secretsmanager")
    with translated(f"the pseudonym key secret {arn}", setting="GATEWAY_PSEUDONYM_SECRET_ARN"):
        answer = client.get_secret_value(SecretId=arn)
    value = answer.get("SecretString")
    if not isinstance(value, str):
        raise ConfigurationError(f"the pseudonym key secret {arn} has no SecretString (a binary secret is not supported)")
    if len(value) < MIN_KEY_CHARS:
        raise ConfigurationError(f"the pseudonym key secret {arn} is shorter than {MIN_KEY_CHARS} characters")
    return value


def pseudonym_key_value(settings: Settings, client: Any = None) -> str | None:
    """The key the gateway hashes UIDs with: the secret's when an ARN is set (it wins over the variable), else the variable."""
    if settings.gateway_pseudonym_secret_arn:
        return fetch_secret(settings.gateway_pseudonym_secret_arn, client)
    return settings.gateway_pseudonym_key
