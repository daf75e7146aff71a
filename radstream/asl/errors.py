"""Errors raised by the States Language interpreter."""

from __future__ import annotations

# Spec appendix A names, plus AWS's terminal States.Runtime.
ALL = "States.ALL"
TASK_FAILED = "States.TaskFailed"
TIMEOUT = "States.Timeout"
RUNTIME = "States.Runtime"
NO_CHOICE_MATCHED = "States.NoChoiceMatched"
PARAMETER_PATH_FAILURE = "States.ParameterPathFailure"
RESULT_PATH_MATCH_FAILURE = "States.ResultPathMatchFailure"
INTRINSIC_FAILURE = "States.IntrinsicFailure"
BRANCH_FAILED = "States.BranchFailed"

# AWS: "States.ALL ... can't catch the States.DataLimitExceeded terminal error or Runtime error types".
TERMINAL = frozenset({RUNTIME, "States.DataLimitExceeded"})


class DefinitionError(ValueError):
    """The state machine definition is invalid."""


class StatesError(Exception):
    """A named States error with a cause, as carried through Retry/Catch.

    Both are None only for a Fail state that names neither (AWS reports no error and no cause then).
    """

    def __init__(self, error: str | None, cause: str | None = "") -> None:
        super().__init__(": ".join(p for p in (error, cause) if p) or "failed with no error name and no cause")
        self.error = error
        self.cause = cause
