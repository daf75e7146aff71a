"""Input/output processing, paths, intrinsic functions and the context object (spec examples)."""

from __future__ import annotations

from typing import Any

import pytest

from radstream.asl import StateMachine
from radstream.asl.errors import DefinitionError
from radstream.asl.jsonpath import PathNotFound, compile_path, compile_reference_path
from radstream.asl.tests._support import FakeSleep, Tasks, machine, single

ADD = Tasks(add=lambda p: p["val1"] + p["val2"])
SPEC_INPUT = {"title": "Numbers to add", "numbers": {"val1": 3, "val2": 4}}


def run_state(state: dict[str, Any], data: Any, tasks: Tasks | None = None) -> Any:
    result = machine(single(state), tasks).run(data)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    return result.output


def test_spec_inputpath_resultpath_example() -> None:
    state = {"Type": "Task", "Resource": "add", "InputPath": "$.numbers", "ResultPath": "$.sum", "End": True}
    assert run_state(state, SPEC_INPUT, ADD) == {**SPEC_INPUT, "sum": 7}


def test_spec_outputpath_example() -> None:
    state = {"Type": "Task", "Resource": "add", "InputPath": "$.numbers", "ResultPath": "$.sum", "OutputPath": "$.sum", "End": True}
    assert run_state(state, SPEC_INPUT, ADD) == 7


@pytest.mark.parametrize(
    ("result_path", "expected"),
    [
        (None, SPEC_INPUT),
        ("$", 7),
        ("$.numbers.sum", {"title": "Numbers to add", "numbers": {"val1": 3, "val2": 4, "sum": 7}}),
        ("$.a.b.c", {**SPEC_INPUT, "a": {"b": {"c": 7}}}),
    ],
)
def test_resultpath_discard_replace_merge(result_path: str | None, expected: Any) -> None:
    state = {"Type": "Task", "Resource": "add", "InputPath": "$.numbers", "ResultPath": result_path, "End": True}
    assert run_state(state, SPEC_INPUT, ADD) == expected


def test_resultpath_does_not_mutate_the_input() -> None:
    data = {"numbers": {"val1": 1, "val2": 2}}
    run_state({"Type": "Task", "Resource": "add", "InputPath": "$.numbers", "ResultPath": "$.numbers.sum", "End": True}, data, ADD)
    assert data == {"numbers": {"val1": 1, "val2": 2}}


def test_null_inputpath_and_outputpath_give_empty_object() -> None:
    echo = Tasks(echo=lambda p: p)
    assert run_state({"Type": "Task", "Resource": "echo", "InputPath": None, "End": True}, {"a": 1}, echo) == {}
    assert run_state({"Type": "Pass", "OutputPath": None, "End": True}, {"a": 1}) == {}


def test_spec_parameters_example() -> None:
    state = {
        "Type": "Pass",
        "End": True,
        "Parameters": {
            "flagged": True,
            "parts": {"first.$": "$.vals[0]", "last3.$": "$.vals[-3:]"},
            "execution.$": "$$.Execution.Name",
            "formattedOutput.$": "States.Format('Processing {} of {}', $.vals[1], $.vals[-1])",
        },
    }
    out = machine(single(state)).run({"flagged": 7, "vals": [0, 10, 20, 30, 40, 50]}, name="exec-1").output
    assert out == {
        "flagged": True,
        "parts": {"first": 0, "last3": [30, 40, 50]},
        "execution": "exec-1",
        "formattedOutput": "Processing 10 of 50",
    }


def test_spec_resultselector_example() -> None:
    emr = {
        "resourceType": "elasticmapreduce",
        "resource": "createCluster.sync",
        "output": {"SdkHttpMetadata": {"HttpStatusCode": 200}, "ClusterId": "AKIAIOSFODNN7EXAMPLE"},
    }
    state = {
        "Type": "Task",
        "Resource": "emr",
        "End": True,
        "ResultPath": "$.EMROutput",
        "ResultSelector": {"ClusterId.$": "$.output.ClusterId", "ResourceType.$": "$.resourceType"},
    }
    out = run_state(state, {"cluster": "c"}, Tasks(emr=lambda p: emr))
    assert out == {"cluster": "c", "EMROutput": {"ClusterId": "AKIAIOSFODNN7EXAMPLE", "ResourceType": "elasticmapreduce"}}


def test_pass_result_and_parameters_order() -> None:
    state = {"Type": "Pass", "InputPath": "$.a", "Parameters": {"x.$": "$.b"}, "ResultPath": "$.out", "End": True}
    assert run_state(state, {"a": {"b": 1}}) == {"a": {"b": 1}, "out": {"x": 1}}
    state = {"Type": "Pass", "Result": {"k": [1, 2]}, "ResultPath": "$.r", "End": True}
    first = run_state(state, {})
    first["r"]["k"].append(3)
    assert run_state(state, {}) == {"r": {"k": [1, 2]}}


def test_context_object_fields() -> None:
    state = {
        "Type": "Pass",
        "End": True,
        "Parameters": {
            "id.$": "$$.Execution.Id",
            "name.$": "$$.Execution.Name",
            "start.$": "$$.Execution.StartTime",
            "state.$": "$$.State.Name",
            "entered.$": "$$.State.EnteredTime",
            "sm.$": "$$.StateMachine.Id",
            "input.$": "$$.Execution.Input.k",
        },
    }
    sm = StateMachine(single(state), Tasks(), clock=lambda: 1_700_000_000.25, name="Pipeline")
    out = sm.run({"k": "v"}, name="n1").output
    assert out == {
        "id": "arn:aws:states:local:000000000000:execution:Pipeline:n1",
        "name": "n1",
        "start": "2023-11-14T22:13:20.250Z",
        "state": "S",
        "entered": "2023-11-14T22:13:20.250Z",
        "sm": "arn:aws:states:local:000000000000:stateMachine:Pipeline",
        "input": "v",
    }


def test_intrinsic_functions() -> None:
    state = {
        "Type": "Pass",
        "End": True,
        "Parameters": {
            "fmt.$": "States.Format('s3://{}/{}', $.bucket, $.key)",
            "json.$": "States.StringToJson($.text)",
            "str.$": "States.JsonToString($.obj)",
            "arr.$": "States.Array('a', 1, $.obj, null)",
            "len.$": "States.ArrayLength($.list)",
            "sum.$": "States.MathAdd($.n, -2)",
            "nested.$": "States.ArrayLength(States.Array(1, 2, 3))",
            "uuid.$": "States.UUID()",
            "escaped.$": "States.Format('it\\'s \\{literal\\} {}', $.n)",
        },
    }
    data = {"bucket": "b", "key": "k/1.dcm", "text": '{"a": [1]}', "obj": {"x": 1}, "list": [1, 2], "n": 5}
    out = run_state(state, data)
    uuid = out.pop("uuid")
    assert len(uuid) == 36 and uuid.count("-") == 4
    assert out == {
        "fmt": "s3://b/k/1.dcm",
        "json": {"a": [1]},
        "str": '{"x":1}',
        "arr": ["a", 1, {"x": 1}, None],
        "len": 2,
        "sum": 3,
        "nested": 3,
        "escaped": "it's {literal} 5",
    }


def test_intrinsic_failure_is_catchable() -> None:
    definition = single(
        {
            "Type": "Task",
            "Resource": "t",
            "Parameters": {"x.$": "States.MathAdd($.s, 1)"},
            "End": True,
            "Catch": [{"ErrorEquals": ["States.IntrinsicFailure"], "Next": "H"}],
        },
        H={"Type": "Pass", "End": True},
    )
    out = machine(definition, Tasks(t=lambda p: p)).run({"s": "x"}).output
    assert out["Error"] == "States.IntrinsicFailure"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", {"a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}]}, "x y": 5}),
        ("$.a.b[0]", {"c": 1}),
        ("$['x y']", 5),
        ("$.a['b'][-1].d", 3),
        ("$.a.b[*].c", [1, 2]),
        ("$..c", [1, 2]),
        ("$.a.b[0:2]", [{"c": 1}, {"c": 2}]),
        ("$.nothing[*]", []),
    ],
)
def test_jsonpath(path: str, expected: Any) -> None:
    data = {"a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}]}, "x y": 5}
    assert compile_path(path).resolve(data) == expected


def test_jsonpath_errors() -> None:
    with pytest.raises(PathNotFound):
        compile_path("$.a.missing").resolve({"a": {}})
    with pytest.raises(DefinitionError):
        compile_path("a.b")
    with pytest.raises(DefinitionError):
        compile_reference_path("$.a[*]")
    with pytest.raises(DefinitionError):
        compile_path("$.a[?(@.b)")


def test_lambda_invoke_integration() -> None:
    tasks = Tasks(**{"arn:aws:lambda:us-east-1:1:function:prepare": lambda p: {"got": p}})
    state = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "End": True,
        "Parameters": {"FunctionName": "arn:aws:lambda:us-east-1:1:function:prepare", "Payload.$": "$"},
        "ResultSelector": {"body.$": "$.Payload", "code.$": "$.StatusCode"},
    }
    assert run_state(state, {"k": 1}, tasks) == {"body": {"got": {"k": 1}}, "code": 200}
    assert tasks.calls[0][0] == "arn:aws:lambda:us-east-1:1:function:prepare"


def test_task_context_and_payload_isolation() -> None:
    def mutate(payload: dict[str, Any]) -> dict[str, Any]:
        payload["mutated"] = True
        return payload

    tasks = Tasks(m=mutate)
    state = {"Type": "Task", "Resource": "m", "ResultPath": "$.r", "End": True}
    assert run_state(state, {"a": 1}, tasks) == {"a": 1, "r": {"a": 1, "mutated": True}}
    ctx = tasks.calls[0][2]
    assert (ctx.state_name, ctx.retry_count, ctx.timeout_seconds) == ("S", 0, None)


def test_wait_seconds_path_and_timestamp() -> None:
    sleep = FakeSleep()
    definition = {
        "StartAt": "W1",
        "States": {
            "W1": {"Type": "Wait", "Seconds": 3, "Next": "W2"},
            "W2": {"Type": "Wait", "SecondsPath": "$.delay", "Next": "W3"},
            "W3": {"Type": "Wait", "Timestamp": "2023-11-14T22:13:30Z", "Next": "W4"},
            "W4": {"Type": "Wait", "TimestampPath": "$.until", "End": True},
        },
    }
    sm = StateMachine(definition, Tasks(), sleep=sleep, clock=lambda: 1_700_000_000.0)
    result = sm.run({"delay": 7, "until": "2023-11-14T22:13:21.5Z"})
    assert result.status == "SUCCEEDED"
    assert sleep.calls == [3, 7, 10.0, 1.5]
