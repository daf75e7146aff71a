"""One error tree: the workflow's Retry and Catch match these class names, never message text."""

from __future__ import annotations

import json
from typing import Any, ClassVar


class RadStreamError(Exception):
    """Base of every error a stage raises on purpose.

    `error_name` is what Step Functions sees as the error (Lambda reports the exception's class name),
    and what template.yaml's Retry/Catch blocks list.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, study_id: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.study_id = study_id
        self.details = details

    @property
    def error_name(self) -> str:
        return type(self).__name__

    def __str__(self) -> str:
        prefix = f"study {self.study_id}: " if self.study_id else ""
        return prefix + self.message


class RetryableError(RadStreamError):
    """A transient failure: the workflow retries it with backoff."""

    retryable = True


class PermanentError(RadStreamError):
    """The input or the configuration is wrong: retrying cannot help."""


class InvalidStudy(PermanentError):
    """The sidecar or the image breaks the study contract."""


class StudyConflict(InvalidStudy):
    """A study id already names another input, or two studies of one batch claim the same id."""


class InvalidImage(InvalidStudy):
    """The image cannot be decoded or carries no information."""


class InferenceFailed(PermanentError):
    """The model server rejected the request or the model misbehaved."""


class InferenceUnavailable(RetryableError):
    """The model server could not be reached or is not ready."""


class StorageUnavailable(RetryableError):
    """The object store or the telemetry stream failed transiently."""


class ObjectNotFound(PermanentError):
    """An object the stage needs is not in the store."""


class MalformedEvent(PermanentError):
    """A stage was invoked with an event that does not fit its input model (a wiring bug)."""


class ConfigurationError(PermanentError):
    """Settings or the model repository are inconsistent."""


class NativeLibraryPanic(PermanentError):
    """A native (Rust, pyo3) extension panicked on this input. pyo3 raises `pyo3_runtime.PanicException`, a BaseException
    that passes every `except Exception` (one in a JPEG/RLE plugin took down `radstream run` whole); the stage wrapper
    turns it into this error. Not retried: the same input panics again."""


def is_native_panic(error: BaseException) -> bool:
    """pyo3's PanicException: each pyo3 extension defines its own class, all named so, in module pyo3_runtime."""
    return type(error).__name__ == "PanicException" and type(error).__module__ == "pyo3_runtime"


class FailureNotRecorded(RetryableError):
    """A study failed and its failure record could not be written either: the input is kept; resume runs it again."""


# Step Functions' and Lambda's own transient errors, by the names the workflow sees.
_TRANSIENT_SERVICE_ERRORS = frozenset(
    {
        "States.Timeout",
        "States.HeartbeatTimeout",
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException",
    }
)


def error_class(error_name: str | None) -> type[RadStreamError] | None:
    """The class of the error tree that a workflow error name (Step Functions' `Error`) stands for, if it is ours."""
    stack: list[type[RadStreamError]] = [RadStreamError]
    while stack:
        cls = stack.pop()
        if cls.__name__ == error_name:
            return cls
        stack.extend(cls.__subclasses__())
    return None


def caught_error(error: dict[str, Any]) -> tuple[str, str | None]:
    """A workflow Catch's {Error, Cause}: the error's name, and its message when the error is one of ours (whose
    messages never carry patient values); None for anything else, whose text stays in the logs."""
    error_type = str(error.get("Error", "States.Runtime"))
    try:
        cause = json.loads(error.get("Cause") or "{}")
    except json.JSONDecodeError:
        cause = {}
    if error_class(error_type) is not None and isinstance(cause, dict) and cause.get("errorMessage"):
        return error_type, str(cause["errorMessage"])
    return error_type, None


def is_transient(error_name: str | None) -> bool:
    """Whether a study that failed with this error can succeed by running it again unchanged (resume does)."""
    if error_name in _TRANSIENT_SERVICE_ERRORS:
        return True
    cls = error_class(error_name)
    return cls is not None and cls.retryable


class DeliveryUnavailable(RetryableError):
    """The hospital's PACS or DICOMweb endpoint cannot be reached, or refused for now (out of resources): send again later."""


class DeliveryRefused(PermanentError):
    """The hospital's PACS refused the object itself (a DIMSE failure status, an HTTP 4xx): sending it again cannot help."""


class NotificationUnavailable(RetryableError):
    """The RIS cannot be reached, dropped the connection, or rejected the message for now (HL7 ACK AR): send again later."""


class NotificationRejected(PermanentError):
    """The RIS refused the message itself (HL7 ACK AE), or no ACK it sent names it: sending it again cannot help."""
