"""One table for every AWS adapter: which botocore errors are transient, which mean the setup is wrong, which mean "not there".

- throttling, 5xx, timeouts and lost connections: StorageUnavailable (the workflow retries it);
- access denied, a bucket/stream/bus/table that does not exist, a rejected request or key: ConfigurationError,
  naming the setting to check (retrying cannot help; a person must fix the deployment);
- an object that is not there: ObjectNotFound.
Anything that is not a botocore error is not translated: it is our own bug and is reported as itself.
"""

from __future__ import annotations

from typing import Literal

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from shared.errors import ConfigurationError, ObjectNotFound, RadStreamError, StorageUnavailable

TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "SlowDown",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "RequestThrottled",
        "RequestThrottledException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
        "InternalServiceError",  # Secrets Manager's
        "InternalException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "KMS.KMSInternalException",
        "KMSInternalException",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})
# The deployment, not the request, is wrong: these name what a person has to fix.
CONFIGURATION_CODES = {
    "AccessDenied": "the role's permissions",
    "AccessDeniedException": "the role's permissions",
    "UnauthorizedOperation": "the role's permissions",
    "UnrecognizedClientException": "the credentials",
    "InvalidAccessKeyId": "the credentials",
    "SignatureDoesNotMatch": "the credentials",
    "ExpiredToken": "the credentials",
    "ExpiredTokenException": "the credentials",
    "NoSuchBucket": "the bucket setting",
    "ResourceNotFoundException": "the resource name setting",
    "InvalidBucketName": "the bucket setting",
    "KMS.DisabledException": "the KMS key",
    "KMS.NotFoundException": "the KMS key",
    "KMS.KMSInvalidStateException": "the KMS key",
    "KMS.AccessDeniedException": "the KMS key policy",
    "DecryptionFailure": "the KMS key",  # Secrets Manager could not decrypt the secret with its key
    "InvalidArgument": "the request the adapter built",
    "ValidationException": "the request the adapter built",
    "InvalidRequestException": "the request the adapter built",
}


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def translate(error: Exception, what: str, setting: str | None = None) -> RadStreamError | None:
    """The error tree's name for a botocore error about `what` (e.g. s3://bucket/key); None when it is not botocore's.

    `setting` names the environment variable that chose the resource (e.g. TELEMETRY_STREAM_NAME), so a
    configuration error says which one to check.
    """
    if isinstance(error, ClientError):
        code = error_code(error)
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in NOT_FOUND_CODES:
            return ObjectNotFound(f"no object {what}")
        if code in TRANSIENT_CODES or status >= 500:
            return StorageUnavailable(f"{what}: {code or status} (transient)")
        check = CONFIGURATION_CODES.get(code, "the deployment")
        return ConfigurationError(f"{what}: {code or status}; check {check}" + (f" ({setting})" if setting else ""))
    if isinstance(error, (NoCredentialsError, PartialCredentialsError, NoRegionError)):
        return ConfigurationError(f"{what}: {type(error).__name__}; check the AWS credentials and region")
    if isinstance(error, ParamValidationError):
        return None  # the adapter built a request botocore refuses: our bug, not the study's
    if isinstance(error, (EndpointConnectionError, BotoConnectionError, BotoCoreError)):
        return StorageUnavailable(f"{what}: {type(error).__name__} (transient)")
    return None


class translated:
    """`with translated("s3://b/k"):` re-raises botocore errors as the error tree's, anything else untouched."""

    def __init__(self, what: str, setting: str | None = None) -> None:
        self.what = what
        self.setting = setting

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, error: BaseException | None, tb: object) -> Literal[False]:
        if isinstance(error, Exception) and not isinstance(error, RadStreamError):
            mapped = translate(error, self.what, self.setting)
            if mapped is not None:
                raise mapped from error
        return False
