"""Retry, Catch, timeouts and runtime error semantics."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from radstream.asl import StateMachine, TaskContext
from radstream.asl.tests._support import FakeSleep, Tasks, machine, single


class ErrorA(Exception):
    pass


class ErrorB(Exception):
    pass


class ErrorC(Exception):
    pass


class Throttled(Exception):
    error_name = "Lambda.TooManyRequestsException"


def failing(*errors: type[Exception], result: Any = "ok") -> Any:
    queue = list(errors)

    def handler(payload: Any) -> Any:
        if queue:
            raise queue.pop(0)("boom")
        return result

    return handler


SPEC_RETRY = {
    "Retry": [
        {"ErrorEquals": ["ErrorA", "ErrorB"], "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": 2},
        {"ErrorEquals": ["ErrorC"], "IntervalSeconds": 5},
    ],
    "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Z", "ResultPath": "$.error-info"}],
}


def spec_machine(*errors: type[Exception]) -> tuple[StateMachine, FakeSleep, Tasks]:
    sleep, tasks = FakeSleep(), Tasks(x=failing(*errors))
    definition = single({"Type": "Task", "Resource": "x", "End": True, **SPEC_RETRY}, Z={"Type": "Pass", "End": True})
    return StateMachine(definition, tasks, sleep=sleep), sleep, tasks


def test_spec_retry_backoff_intervals() -> None:
    sm, sleep, _ = spec_machine(ErrorA, ErrorB)
    result = sm.run({})
    assert (result.status, result.output, sleep.calls) == ("SUCCEEDED", "ok", [1.0, 2.0])
    sm, sleep, _ = spec_machine(ErrorC, ErrorC, ErrorC)
    assert sm.run({}).output == "ok" and sleep.calls == [5.0, 10.0, 20.0]


def test_spec_retrier_counts_are_shared_then_catch() -> None:
    sm, sleep, tasks = spec_machine(ErrorA, ErrorB, ErrorA)
    result = sm.run({"in": 1})
    assert sleep.calls == [1.0, 2.0] and len(tasks.calls) == 3
    assert result.output == {
        "in": 1,
        "error-info": {"Error": "ErrorA", "Cause": json.dumps({"errorMessage": "boom", "errorType": "ErrorA"})},
    }
    events = [(e.type, e.state) for e in result.history]
    assert events.count(("TaskFailed", "S")) == 3
    assert events[-3:] == [("PassStateEntered", "Z"), ("PassStateExited", "Z"), ("ExecutionSucceeded", None)]


def test_max_delay_full_jitter_and_zero_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    sleep = FakeSleep()
    definition = single(
        {
            "Type": "Task",
            "Resource": "x",
            "End": True,
            "Retry": [
                {"ErrorEquals": ["ErrorB"], "MaxAttempts": 0},
                {"ErrorEquals": ["ErrorA"], "IntervalSeconds": 3, "BackoffRate": 3, "MaxAttempts": 4, "MaxDelaySeconds": 20},
            ],
        }
    )
    assert StateMachine(definition, Tasks(x=failing(*[ErrorA] * 4)), sleep=sleep).run({}).status == "SUCCEEDED"
    assert sleep.calls == [3, 9, 20, 20]
    result = StateMachine(definition, Tasks(x=failing(ErrorB)), sleep=sleep).run({})
    assert (result.status, result.error) == ("FAILED", "ErrorB")
    monkeypatch.setattr("random.uniform", lambda lo, hi: hi / 2)
    jitter = single(
        {
            "Type": "Task",
            "Resource": "x",
            "End": True,
            "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 4, "JitterStrategy": "FULL"}],
        }
    )
    sleep = FakeSleep()
    StateMachine(jitter, Tasks(x=failing(ErrorA, ErrorA)), sleep=sleep).run({})
    assert sleep.calls == [2.0, 4.0]


def test_error_name_attribute_and_failed_execution() -> None:
    result = machine(single({"Type": "Task", "Resource": "x", "End": True}), Tasks(x=failing(Throttled))).run({})
    assert result.status == "FAILED"
    assert result.error == "Lambda.TooManyRequestsException"
    assert json.loads(result.cause) == {"errorMessage": "boom", "errorType": "Lambda.TooManyRequestsException"}
    assert result.history[-1].type == "ExecutionFailed"


def test_task_failed_wildcard_excludes_timeout() -> None:
    release = threading.Event()

    def slow(payload: Any) -> Any:
        release.wait(5)
        return "late"

    definition = single(
        {
            "Type": "Task",
            "Resource": "slow",
            "TimeoutSecondsPath": "$.t",
            "End": True,
            "Catch": [{"ErrorEquals": ["States.TaskFailed"], "Next": "Caught"}],
        },
        Caught={"Type": "Pass", "End": True},
    )
    t0 = time.monotonic()
    result = machine(definition, Tasks(slow=slow)).run({"t": 0.05})
    release.set()
    assert time.monotonic() - t0 < 2
    assert (result.status, result.error) == ("FAILED", "States.Timeout")
    assert [e.type for e in result.history if e.type.startswith("Task")][-1] == "TaskTimedOut"
    result = machine(definition, Tasks(slow=failing(ErrorA))).run({"t": 1})
    assert result.output["Error"] == "ErrorA"


def test_timeout_is_retried_and_caught_by_name() -> None:
    release = threading.Event()
    tasks = Tasks(slow=lambda p: release.wait(5))
    definition = single(
        {
            "Type": "Task",
            "Resource": "slow",
            "TimeoutSecondsPath": "$.t",
            "End": True,
            "Retry": [{"ErrorEquals": ["States.Timeout"], "MaxAttempts": 1}],
            "Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "H", "ResultPath": "$.err"}],
        },
        H={"Type": "Pass", "End": True},
    )
    result = machine(definition, tasks).run({"t": 0.02})
    release.set()
    assert result.output["err"]["Error"] == "States.Timeout" and len(tasks.calls) == 2
    assert tasks.calls[1][2].retry_count == 1


def test_runtime_error_is_never_retried_or_caught() -> None:
    tasks = Tasks(x=lambda p: p)
    definition = single(
        {
            "Type": "Task",
            "Resource": "x",
            "InputPath": "$.missing",
            "End": True,
            "Retry": [{"ErrorEquals": ["States.ALL"]}],
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "H"}],
        },
        H={"Type": "Pass", "End": True},
    )
    sleep = FakeSleep()
    result = machine(definition, tasks, sleep=sleep).run({})
    assert (result.status, result.error, tasks.calls, sleep.calls) == ("FAILED", "States.Runtime", [], [])


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ({"Parameters": {"x.$": "$.missing"}}, "States.ParameterPathFailure"),
        ({"ResultSelector": {"x.$": "$.missing"}}, "States.ParameterPathFailure"),
        ({"ResultPath": "$.s.deeper"}, "States.ResultPathMatchFailure"),
    ],
)
def test_path_failures_are_catchable(state: dict[str, Any], error: str) -> None:
    definition = single(
        {
            "Type": "Task",
            "Resource": "x",
            "End": True,
            **state,
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "H", "ResultPath": "$.err"}],
        },
        H={"Type": "Pass", "End": True},
    )
    result = machine(definition, Tasks(x=lambda p: {"r": 1})).run({"s": "string"})
    assert result.output["err"]["Error"] == error


def test_fail_state_with_paths() -> None:
    definition = single({"Type": "Fail", "ErrorPath": "$.e", "CausePath": "States.Format('bad {}', $.k)"})
    result = machine(definition).run({"e": "Study.Invalid", "k": "key.dcm"})
    assert (result.status, result.error, result.cause, result.output) == ("FAILED", "Study.Invalid", "bad key.dcm", None)


def test_execution_timeout() -> None:
    definition = {"TimeoutSeconds": 5, **single({"Type": "Wait", "Seconds": 10, "End": True})}
    sleep = FakeSleep()
    result = machine(definition, sleep=sleep).run({})
    assert (result.status, result.error) == ("TIMED_OUT", "States.Timeout")
    assert result.history[-1].type == "ExecutionTimedOut" and sleep.calls[0] <= 5


def test_task_durations_in_history() -> None:
    def work(payload: Any) -> Any:
        time.sleep(0.02)
        return 1

    result = machine(single({"Type": "Task", "Resource": "w", "End": True}), Tasks(w=work)).run({})
    succeeded = [e for e in result.history if e.type == "TaskSucceeded"]
    assert len(succeeded) == 1 and succeeded[0].duration >= 0.02 and succeeded[0].resource == "w"
    assert [e.id for e in result.history] == list(range(1, len(result.history) + 1))


def test_invoke_receives_task_context_timeout() -> None:
    seen: list[TaskContext] = []

    def invoke(resource: str, payload: Any, ctx: TaskContext) -> Any:
        seen.append(ctx)
        return None

    StateMachine(single({"Type": "Task", "Resource": "r", "TimeoutSeconds": 30, "End": True}), invoke).run({})
    assert seen[0].timeout_seconds == 30 and 0 < seen[0].remaining_seconds() <= 30
