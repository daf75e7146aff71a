"""Definition validation at construction."""

from __future__ import annotations

from typing import Any

import pytest

from radstream.asl import DefinitionError
from radstream.asl.tests._support import machine, single

TASK = {"Type": "Task", "Resource": "r"}


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"States": {"A": {"Type": "Succeed"}}}, "StartAt"),
        ({"StartAt": "B", "States": {"A": {"Type": "Succeed"}}}, "StartAt 'B'"),
        (single({**TASK, "Next": "Nowhere"}), "unknown state 'Nowhere'"),
        (single(TASK), "exactly one of 'Next'"),
        (single({**TASK, "Next": "X", "End": True}, X={"Type": "Succeed"}), "exactly one of 'Next'"),
        (single({"Type": "Bogus"}), "'Type' must be one of"),
        (single({**TASK, "End": True, "ResultsPath": "$.x"}), "ResultsPath"),
        (
            single(
                {**TASK, "End": True, "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "H"}, {"ErrorEquals": ["E"], "Next": "H"}]},
                H={"Type": "Succeed"},
            ),
            "States.ALL",
        ),
        (single({**TASK, "End": True, "Retry": [{"ErrorEquals": ["States.ALL", "E"]}]}), "States.ALL"),
        (single({**TASK, "End": True, "Retry": [{"ErrorEquals": ["E"], "BackoffRate": 0.5}]}), "BackoffRate"),
        (single({"Type": "Succeed"}, Orphan={"Type": "Succeed"}), "not reachable"),
        (single({"Type": "Pass", "InputPath": "no-dollar", "End": True}), "InputPath"),
        (single({"Type": "Pass", "Parameters": {"x.$": "States.Nope(1)"}, "End": True}), "unknown function"),
        (single({"Type": "Choice", "Choices": [{"Variable": "$.a", "Next": "S"}]}), "comparison operator"),
        (single({"Type": "Choice", "Choices": [{"Variable": "$.a", "StringEquals": 1, "Next": "S"}]}), "StringEquals"),
        (single({"Type": "Wait", "Seconds": 1, "Timestamp": "2020-01-01T00:00:00Z", "End": True}), "exactly one"),
        (
            single({"Type": "Parallel", "Branches": [{"StartAt": "X", "States": {"X": {**TASK, "Next": "S"}}}], "End": True}),
            "unknown state 'S'",
        ),
        ({"QueryLanguage": "JSONata", **single({"Type": "Succeed"})}, "JSONPath"),
        (
            single(
                {
                    "Type": "Map",
                    "End": True,
                    "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED"}, "StartAt": "X", "States": {"X": {"Type": "Succeed"}}},
                }
            ),
            "INLINE",
        ),
    ],
)
def test_invalid_definitions(definition: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(".", r"\.")):
        machine(definition)


def test_valid_definition_with_all_state_types() -> None:
    definition = {
        "Comment": "all types",
        "TimeoutSeconds": 60,
        "StartAt": "P",
        "States": {
            "P": {"Type": "Pass", "Next": "W"},
            "W": {"Type": "Wait", "Seconds": 0, "Next": "C"},
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsPresent": True, "Next": "Par"}], "Default": "F"},
            "Par": {"Type": "Parallel", "Next": "M", "Branches": [{"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}]},
            "M": {
                "Type": "Map",
                "ItemsPath": "$[0].items",
                "Next": "Ok",
                "ItemProcessor": {"StartAt": "B", "States": {"B": {"Type": "Pass", "End": True}}},
            },
            "Ok": {"Type": "Succeed"},
            "F": {"Type": "Fail", "Error": "E", "Cause": "c"},
        },
    }
    assert machine(definition).run({"x": 1, "items": [1, 2]}).output == [1, 2]
