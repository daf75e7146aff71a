"""Behaviours the AWS Step Functions documentation states, where the interpreter used to depart from it.

Each test quotes the sentence it follows (AWS Step Functions Developer Guide: "Intrinsic functions",
"Paths", "Fail state").
"""

from __future__ import annotations

from typing import Any

import pytest

from radstream.asl.errors import DefinitionError
from radstream.asl.jsonpath import compile_path, compile_reference_path
from radstream.asl.tests._support import Tasks, machine, single


def pass_output(parameters: dict[str, Any], data: Any) -> Any:
    result = machine(single({"Type": "Pass", "Parameters": parameters, "End": True})).run(data)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    return result.output


def pass_failure(parameters: dict[str, Any], data: Any) -> tuple[str | None, str | None]:
    result = machine(single({"Type": "Pass", "Parameters": parameters, "End": True})).run(data)
    assert result.status == "FAILED"
    return result.error, result.cause


# --- States.Format ---------------------------------------------------------------------------------------


def test_format_template_from_a_path() -> None:
    """AWS: 'given the following input: {"name": "Arnav", "template": "Hello, my name is {}."}
    States.Format can be used as follows: States.Format('Hello, my name is {}.', $.name) or
    States.Format($.template, $.name). Both result in an output of Hello, my name is Arnav.'"""
    data = {"name": "Arnav", "template": "Hello, my name is {}."}
    out = pass_output(
        {
            "literal.$": "States.Format('Hello, my name is {}.', $.name)",
            "path.$": "States.Format($.template, $.name)",
            "nested.$": "States.Format(States.Format('{} {}', $.template, 'Bye.'), $.name)",
        },
        data,
    )
    assert out == {"literal": "Hello, my name is Arnav.", "path": "Hello, my name is Arnav.", "nested": "Hello, my name is Arnav. Bye."}


def test_format_template_from_a_path_must_be_a_string() -> None:
    """AWS: 'The Value of the first argument must be a string'."""
    error, cause = pass_failure({"x.$": "States.Format($.template, $.name)"}, {"template": 7, "name": "a"})
    assert error == "States.IntrinsicFailure" and "template must be a string" in (cause or "")


# --- rounding of non-integer arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # Sums AWS returned for these inputs (LocalStack's AWS-validated snapshot of States.MathAdd):
        # halves round up, as Java's Math.round does, so -1.5 becomes -1.
        (1.49, 1.50, 3),
        (1.50, 1.51, 4),
        (-1.49, -1.50, -2),
        (-9, 3, -6),
        (0.5, 0, 1),
        (2.5, 0, 3),
        (-0.5, 0, 0),
        (-2.5, 0, -2),
        (-2.51, 0, -3),
    ],
)
def test_math_add_rounds_non_integers(a: float, b: float, expected: int) -> None:
    """AWS (States.MathAdd): 'If you specify a non-integer value for one or both the arguments,
    Step Functions will round it off to the nearest integer.'"""
    assert pass_output({"sum.$": "States.MathAdd($.a, $.b)"}, {"a": a, "b": b}) == {"sum": expected}


def test_array_partition_rounds_the_chunk_size() -> None:
    """AWS (States.ArrayPartition): 'You must specify a non-zero, positive integer for the second argument
    representing the chunk size value. If you specify a non-integer value for the second argument,
    Step Functions will round it off to the nearest integer.'"""
    data = {"a": [1, 2, 3, 4, 5]}
    assert pass_output({"p.$": "States.ArrayPartition($.a, 2.4)"}, data) == {"p": [[1, 2], [3, 4], [5]]}
    assert pass_output({"p.$": "States.ArrayPartition($.a, 2.5)"}, data) == {"p": [[1, 2, 3], [4, 5]]}
    error, _ = pass_failure({"p.$": "States.ArrayPartition($.a, 0.4)"}, data)  # rounds to 0: not positive
    assert error == "States.IntrinsicFailure"


def test_array_range_rounds_its_arguments() -> None:
    """AWS (States.ArrayRange): 'You must specify integer values for all of the arguments. If you specify a
    non-integer value for any of the arguments, Step Functions will round it off to the nearest integer.'"""
    assert pass_output({"r.$": "States.ArrayRange(0.6, 8.4, 1.5)"}, {}) == {"r": [1, 3, 5, 7]}
    assert pass_output({"r.$": "States.ArrayRange($.a, $.b, $.s)"}, {"a": 9.5, "b": 0.5, "s": -3.2}) == {"r": [10, 7, 4, 1]}
    error, _ = pass_failure({"r.$": "States.ArrayRange(1, 5, 0.4)"}, {})  # step rounds to 0
    assert error == "States.IntrinsicFailure"


def test_math_random_rounds_start_and_end() -> None:
    """AWS (States.MathRandom): 'If you specify a non-integer value for the start number or end number
    argument, Step Functions will round it off to the nearest integer.'"""
    values = {pass_output({"r.$": "States.MathRandom($.s, $.e, $.seed)"}, {"s": 12.5, "e": 15.5, "seed": seed})["r"] for seed in range(40)}
    assert values <= {13, 14, 15} and len(values) > 1


# --- States.ArrayRange's size limit ----------------------------------------------------------------------


def test_array_range_refuses_more_than_1000_items() -> None:
    """AWS (States.ArrayRange): 'The newly generated array can't contain more than 1000 items.'"""
    assert pass_output({"n.$": "States.ArrayLength(States.ArrayRange(1, 1000, 1))"}, {}) == {"n": 1000}
    assert pass_output({"n.$": "States.ArrayLength(States.ArrayRange(1999, 0, -2))"}, {}) == {"n": 1000}
    for call in (
        "States.ArrayRange(1, 1001, 1)",
        "States.ArrayRange(0, 2000, 2)",
        "States.ArrayRange(0, -1000, -1)",
        "States.ArrayRange(0, 1e12, 1)",
    ):
        error, cause = pass_failure({"r.$": call}, {})
        assert error == "States.IntrinsicFailure" and "over the limit of 1000" in (cause or ""), call


# --- JSONPath filter expressions -------------------------------------------------------------------------

ITEMS = {
    "items": [
        {"n": 1, "id": "a", "kind": "cr", "name": "first"},
        {"n": 2, "id": "b", "kind": "ct"},
        {"n": 3, "id": "c", "kind": "dx", "name": "third"},
    ]
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.items[?(@.n > 1)].id", ["b", "c"]),
        ("$.items[?(@.n >= 2)].id", ["b", "c"]),
        ("$.items[?(@.n < 2)].id", ["a"]),
        ("$.items[?(@.n <= 2)].id", ["a", "b"]),
        ("$.items[?(@.n == 2)].id", ["b"]),
        ("$.items[?(@.n != 2)].id", ["a", "c"]),
        ("$.items[?(@.kind == 'ct')].id", ["b"]),
        ('$.items[?(@.kind == "dx")].n', [3]),
        ("$.items[?(@.kind > 'cr')].id", ["b", "c"]),
        ("$.items[?(@.name)].id", ["a", "c"]),
        ("$.items[?(@.n > 1 && @.kind != 'dx')].id", ["b"]),
        ("$.items[?(@.n > 5)]", []),
        ("$.missing[?(@.n > 1)]", []),
    ],
)
def test_filter_expressions(path: str, expected: list[Any]) -> None:
    """AWS (Paths): 'Paths follow JsonPath syntax' (Jayway JsonPath, whose filters are
    '[?(<expression>)]' with '@' the current item, e.g. [?(@.age > 18)], string literals in single or
    double quotes, && to combine, and [?(@.isbn)] for the items that have the field)."""
    assert compile_path(path).resolve(ITEMS) == expected


def test_filter_paths_in_inputpath_parameters_and_resultselector() -> None:
    """AWS (Paths): 'You can specify a path to access subsets of the input when specifying values for
    InputPath, ResultPath, and OutputPath' and 'by using paths within the "Parameters" field'."""
    state = {
        "Type": "Task",
        "Resource": "echo",
        "End": True,
        "InputPath": "$.items[?(@.n > 1)]",
        "Parameters": {"ids.$": "$[?(@.kind != 'dx')].id", "count.$": "States.ArrayLength($[?(@.n >= 2)])", "all.$": "$"},
        "ResultSelector": {"named.$": "$.all[?(@.name)].id", "ids.$": "$.ids", "count.$": "$.count"},
    }
    tasks = Tasks(echo=lambda p: p)
    result = machine(single(state), tasks).run(ITEMS)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert tasks.calls[0][1]["ids"] == ["b"]
    assert result.output == {"named": ["c"], "ids": ["b"], "count": 2}


def test_filter_errors() -> None:
    """AWS (Reference Paths): 'The operators @ .. , : ? * aren't supported.'"""
    with pytest.raises(DefinitionError):
        compile_reference_path("$.items[?(@.n > 1)]")
    with pytest.raises(DefinitionError, match="unterminated filter"):
        compile_path("$.items[?(@.n > 1)")
    with pytest.raises(DefinitionError, match="filter"):
        compile_path("$.items[?(@.n >>> 1)]")
    with pytest.raises(DefinitionError):
        machine(single({"Type": "Pass", "InputPath": "$.items[?(@.n >)]", "End": True}))


# --- Fail state without Error or Cause -------------------------------------------------------------------


def test_fail_state_without_error_or_cause_reports_none() -> None:
    """AWS (Fail state): 'Cause (Optional) Provides a custom failure string ...' and 'Error (Optional)
    Provides an error name ...': when they are absent the execution has no error and no cause (null),
    not empty strings."""
    result = machine(single({"Type": "Fail"})).run({})
    assert (result.status, result.error, result.cause) == ("FAILED", None, None)
    failed = result.history[-1]
    assert (failed.type, failed.error, failed.cause) == ("ExecutionFailed", None, None)

    only_error = machine(single({"Type": "Fail", "Error": "E"})).run({})
    assert (only_error.error, only_error.cause) == ("E", None)
    only_cause = machine(single({"Type": "Fail", "Cause": "why"})).run({})
    assert (only_cause.error, only_cause.cause) == (None, "why")


def test_fail_state_error_must_be_a_string() -> None:
    with pytest.raises(DefinitionError, match="Error must be a string"):
        machine(single({"Type": "Fail", "Error": 3}))


# --- JSON equality in States.ArrayContains / States.ArrayUnique -------------------------------------------


def test_array_contains_and_unique_tell_true_from_1() -> None:
    """AWS: 'Use the States.ArrayContains intrinsic function to determine if a specific value is present in
    an array.' ... 'You must specify a valid JSON object as the second argument.' Values are JSON values,
    and JSON's true is not the number 1 (Python's ``True == 1`` is); ArrayUnique keeps both for the same reason."""
    data = {"a": [1, 0, [1], {"k": 1}], "b": [1, True, 0, False, [1], [True], 1.0]}
    out = pass_output(
        {
            "t.$": "States.ArrayContains($.a, true)",
            "f.$": "States.ArrayContains($.a, false)",
            "nested.$": "States.ArrayContains($.a, $.b[5])",
            "obj.$": "States.ArrayContains($.a, $.a[3])",
            "one.$": "States.ArrayContains($.a, 1)",
            "u.$": "States.ArrayUnique($.b)",
        },
        data,
    )
    assert out == {"t": False, "f": False, "nested": False, "obj": True, "one": True, "u": [1, True, 0, False, [1], [True]]}
