"""Choice state rules (spec example and every operator)."""

from __future__ import annotations

from typing import Any

import pytest

from radstream.asl.tests._support import machine

SPEC_CHOICE = {
    "StartAt": "ChoiceStateX",
    "States": {
        "ChoiceStateX": {
            "Type": "Choice",
            "Choices": [
                {"Not": {"Variable": "$.type", "StringEquals": "Private"}, "Next": "Public"},
                {
                    "And": [
                        {"Variable": "$.value", "IsPresent": True},
                        {"Variable": "$.value", "IsNumeric": True},
                        {"Variable": "$.value", "NumericGreaterThanEquals": 20},
                        {"Variable": "$.value", "NumericLessThan": 30},
                    ],
                    "Next": "ValueInTwenties",
                },
            ],
            "Default": "DefaultState",
        },
        "Public": {"Type": "Pass", "Result": "Public", "End": True},
        "ValueInTwenties": {"Type": "Pass", "Result": "ValueInTwenties", "End": True},
        "DefaultState": {"Type": "Fail", "Error": "DefaultStateError", "Cause": "No Matches!"},
    },
}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"type": "Public"}, "Public"),
        ({"type": "Private", "value": 25}, "ValueInTwenties"),
        ({"type": "Private", "value": 25.5}, "ValueInTwenties"),
    ],
)
def test_spec_choice_example(data: dict[str, Any], expected: str) -> None:
    assert machine(SPEC_CHOICE).run(data).output == expected


@pytest.mark.parametrize("data", [{"type": "Private", "value": 35}, {"type": "Private"}, {"type": "Private", "value": "25"}])
def test_spec_choice_default(data: dict[str, Any]) -> None:
    result = machine(SPEC_CHOICE).run(data)
    assert (result.status, result.error, result.cause) == ("FAILED", "DefaultStateError", "No Matches!")


def _choose(rule: dict[str, Any], data: Any) -> bool:
    definition = {
        "StartAt": "C",
        "States": {
            "C": {"Type": "Choice", "Choices": [{**rule, "Next": "Y"}], "Default": "N"},
            "Y": {"Type": "Pass", "Result": True, "End": True},
            "N": {"Type": "Pass", "Result": False, "End": True},
        },
    }
    result = machine(definition).run(data)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    return result.output


DATA = {
    "s": "abc",
    "n": 5,
    "f": 5.5,
    "b": True,
    "t": "2024-01-02T03:04:05Z",
    "t2": "2024-01-02T04:04:05+01:00",
    "z": None,
    "o": {"k": 1},
    "s2": "abd",
    "n2": 5,
}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"Variable": "$.s", "StringEquals": "abc"}, True),
        ({"Variable": "$.s", "StringLessThan": "abd"}, True),
        ({"Variable": "$.s", "StringGreaterThan": "abd"}, False),
        ({"Variable": "$.s", "StringLessThanEquals": "abc"}, True),
        ({"Variable": "$.s", "StringGreaterThanEquals": "abc"}, True),
        ({"Variable": "$.s", "StringEqualsPath": "$.s2"}, False),
        ({"Variable": "$.s", "StringLessThanPath": "$.s2"}, True),
        ({"Variable": "$.n", "StringEquals": "5"}, False),
        ({"Variable": "$.s", "StringMatches": "a*"}, True),
        ({"Variable": "$.s", "StringMatches": "*c"}, True),
        ({"Variable": "$.s", "StringMatches": "a\\*"}, False),
        ({"Variable": "$.n", "NumericEquals": 5}, True),
        ({"Variable": "$.n", "NumericEqualsPath": "$.n2"}, True),
        ({"Variable": "$.f", "NumericLessThan": 6}, True),
        ({"Variable": "$.f", "NumericGreaterThan": 5}, True),
        ({"Variable": "$.n", "NumericLessThanEquals": 5}, True),
        ({"Variable": "$.n", "NumericGreaterThanEquals": 5.5}, False),
        ({"Variable": "$.f", "NumericGreaterThanPath": "$.n"}, True),
        ({"Variable": "$.b", "NumericEquals": 1}, False),
        ({"Variable": "$.b", "BooleanEquals": True}, True),
        ({"Variable": "$.b", "BooleanEqualsPath": "$.b"}, True),
        ({"Variable": "$.t", "TimestampEquals": "2024-01-02T03:04:05Z"}, True),
        ({"Variable": "$.t", "TimestampEqualsPath": "$.t2"}, True),
        ({"Variable": "$.t", "TimestampLessThan": "2024-01-02T03:04:06Z"}, True),
        ({"Variable": "$.t", "TimestampGreaterThan": "2024-01-02T03:04:06Z"}, False),
        ({"Variable": "$.t", "TimestampLessThanEquals": "2024-01-02T03:04:05Z"}, True),
        ({"Variable": "$.t", "TimestampGreaterThanEquals": "2024-01-02T03:04:05Z"}, True),
        ({"Variable": "$.s", "TimestampEquals": "2024-01-02T03:04:05Z"}, False),
        ({"Variable": "$.z", "IsNull": True}, True),
        ({"Variable": "$.missing", "IsPresent": False}, True),
        ({"Variable": "$.s", "IsPresent": True}, True),
        ({"Variable": "$.s", "IsString": True}, True),
        ({"Variable": "$.b", "IsNumeric": True}, False),
        ({"Variable": "$.b", "IsBoolean": True}, True),
        ({"Variable": "$.t", "IsTimestamp": True}, True),
        ({"Variable": "$.s", "IsTimestamp": True}, False),
        ({"Or": [{"Variable": "$.n", "NumericEquals": 1}, {"Variable": "$.s", "StringEquals": "abc"}]}, True),
        ({"And": [{"Variable": "$.n", "NumericEquals": 1}, {"Variable": "$.s", "StringEquals": "abc"}]}, False),
        ({"Not": {"Variable": "$.o.k", "NumericEquals": 1}}, False),
    ],
)
def test_operators(rule: dict[str, Any], expected: bool) -> None:
    assert _choose(rule, DATA) is expected


def test_no_choice_matched() -> None:
    definition = {
        "StartAt": "C",
        "States": {"C": {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericEquals": 1, "Next": "Y"}]}, "Y": {"Type": "Succeed"}},
    }
    result = machine(definition).run({"n": 2})
    assert (result.status, result.error) == ("FAILED", "States.NoChoiceMatched")


def test_missing_variable_is_a_runtime_error() -> None:
    definition = {
        "StartAt": "C",
        "States": {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.nope", "NumericEquals": 1, "Next": "Y"}], "Default": "Y"},
            "Y": {"Type": "Succeed"},
        },
    }
    result = machine(definition).run({})
    assert (result.status, result.error) == ("FAILED", "States.Runtime")


def test_choice_inputpath_outputpath() -> None:
    definition = {
        "StartAt": "C",
        "States": {
            "C": {
                "Type": "Choice",
                "InputPath": "$.in",
                "OutputPath": "$.v",
                "Choices": [{"Variable": "$.v", "IsPresent": True, "Next": "Y"}],
            },
            "Y": {"Type": "Succeed"},
        },
    }
    assert machine(definition).run({"in": {"v": 3}}).output == 3
