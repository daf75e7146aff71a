"""A task that dies of an exception outside Python's Exception tree (a Rust extension's panic: pyo3's PanicException
derives from BaseException; pylibjpeg-rle raises one on some RLE files) is a task failure, as a Lambda that dies is
to Step Functions: Retry and Catch see it. Ctrl-C and SystemExit still stop the interpreter."""

from __future__ import annotations

import pytest

from radstream.asl import StateMachine
from radstream.asl.tests._support import FakeSleep, Tasks, single


class PanicException(BaseException):
    """The shape of pyo3_runtime.PanicException: a BaseException, not an Exception."""


def raising(error: type[BaseException]):
    def handler(payload):
        raise error("index out of bounds")
    return handler


CATCH_ALL = {"Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Recorded", "ResultPath": "$.error-info"}]}


@pytest.mark.parametrize("timeout", [None, 30])  # the interpreter's two task paths: in the caller's thread, or a worker with a deadline
def test_a_panicking_task_is_a_task_failure_that_catch_sees(timeout):
    task = {"Type": "Task", "Resource": "prepare", "End": True, **CATCH_ALL, **({"TimeoutSeconds": timeout} if timeout else {})}
    definition = single(task, Recorded={"Type": "Pass", "End": True})
    result = StateMachine(definition, Tasks(prepare=raising(PanicException)), sleep=FakeSleep()).run({"study": "s"})
    assert result.status == "SUCCEEDED"
    assert result.output["error-info"]["Error"] == "PanicException"


@pytest.mark.parametrize("control", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_and_exit_still_stop_the_interpreter(control):
    definition = single({"Type": "Task", "Resource": "prepare", "End": True, **CATCH_ALL}, Recorded={"Type": "Pass", "End": True})
    with pytest.raises(control):
        StateMachine(definition, Tasks(prepare=raising(control)), sleep=FakeSleep()).run({})
