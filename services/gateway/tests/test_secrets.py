"""The pseudonym key secret's AWS errors, classified by the one table (shared/aws_errors.py): no rules of the gateway's own."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from services.gateway.secrets import fetch_secret
from shared.errors import ConfigurationError, StorageUnavailable

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:radstream/gateway/key-AbCdEf"


class Refusing:
    """A Secrets Manager client whose every read raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_secret_value(self, SecretId: str) -> dict:
        raise self.error


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetSecretValue")


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        (client_error("ResourceNotFoundException"), ConfigurationError, "GATEWAY_PSEUDONYM_SECRET_ARN"),
        (client_error("AccessDeniedException"), ConfigurationError, "the role's permissions"),
        (client_error("ThrottlingException"), StorageUnavailable, "transient"),
        (client_error("InternalServiceError", 500), StorageUnavailable, "transient"),
        (EndpointConnectionError(endpoint_url="https://secretsmanager.eu-west-1.amazonaws.com"), StorageUnavailable, "transient"),
    ],
)
def test_aws_errors_are_the_tables(error: Exception, kind: type, says: str):
    with pytest.raises(kind) as raised:
        fetch_secret(ARN, client=Refusing(error))
    assert ARN in raised.value.message and says in raised.value.message
    assert raised.value.__cause__ is error


def test_a_short_or_binary_secret_is_a_configuration_error_that_never_shows_the_value():
    class Answering:
        def __init__(self, answer: dict) -> None:
            self.answer = answer

        def get_secret_value(self, SecretId: str) -> dict:
            return self.answer

    with pytest.raises(ConfigurationError, match="shorter than 16") as raised:
        fetch_secret(ARN, client=Answering({"SecretString": "too-short"}))
    assert "too-short" not in raised.value.message
    with pytest.raises(ConfigurationError, match="no SecretString"):
        fetch_secret(ARN, client=Answering({"SecretBinary": b"\x00" * 32}))
