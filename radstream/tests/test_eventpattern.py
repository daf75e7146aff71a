"""EventBridge pattern matching cross-checked against moto's implementation, plus InputTransformer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from moto.events.models import EventPattern

from radstream.eventpattern import apply_input_transformer, matches


def _s3_event(
    bucket: str = "radstream-ingest", key: str = "studies/2024/abc.dcm", size: int = 52_428_800, reason: str = "PutObject"
) -> dict[str, Any]:
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2021-11-12T00:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": size, "etag": "b1946ac92492d2347c6235b4d2611184", "sequencer": "00617F08"},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": reason,
        },
    }


EVENTS: dict[str, dict[str, Any]] = {
    "dicom": _s3_event(),
    "png_upper": _s3_event(key="Studies/2024/ABC.PNG", size=1024),
    "other_bucket": _s3_event(bucket="other", key="studies/x.dcm", size=0),
    "copy": _s3_event(reason="CopyObject", size=10),
    "deleted": {**_s3_event(), "detail-type": "Object Deleted"},
    "custom": {
        "source": "radstream.cli",
        "detail-type": "Study",
        "detail": {"tags": ["urgent", "ct"], "priority": 3, "note": None, "ip": "10.0.3.7"},
    },
}

PATTERNS: dict[str, dict[str, Any]] = {
    "template_rule": {"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": {"bucket": {"name": ["radstream-ingest"]}}},
    "list_is_or": {"detail-type": ["Object Deleted", "Object Created"]},
    "prefix": {"detail": {"object": {"key": [{"prefix": "studies/"}]}}},
    "prefix_ignore_case": {"detail": {"object": {"key": [{"prefix": {"equals-ignore-case": "STUDIES/"}}]}}},
    "suffix": {"detail": {"object": {"key": [{"suffix": ".dcm"}, {"suffix": ".png"}]}}},
    "suffix_ignore_case": {"detail": {"object": {"key": [{"suffix": {"equals-ignore-case": ".png"}}]}}},
    "equals_ignore_case": {"detail": {"reason": [{"equals-ignore-case": "putobject"}]}},
    "anything_but_value": {"detail": {"reason": [{"anything-but": "CopyObject"}]}},
    "anything_but_list": {"detail": {"bucket": {"name": [{"anything-but": ["other", "logs"]}]}}},
    "anything_but_prefix": {"detail": {"object": {"key": [{"anything-but": {"prefix": "studies/"}}]}}},
    "exists_true": {"detail": {"object": {"size": [{"exists": True}]}}},
    "exists_false": {"detail": {"object": {"version-id": [{"exists": False}]}}},
    "exists_missing_parent": {"detail": {"nothing": {"here": [{"exists": False}]}}},
    "exists_on_object_node": {"detail": {"bucket": [{"exists": True}]}},
    "numeric_range": {"detail": {"object": {"size": [{"numeric": [">", 0, "<=", 104_857_600]}]}}},
    "numeric_eq": {"detail": {"priority": [{"numeric": ["=", 3]}]}},
    "wildcard": {"detail": {"object": {"key": [{"wildcard": "studies/*/*.dcm"}]}}},
    "or": {"$or": [{"detail": {"object": {"size": [{"numeric": ["<", 100]}]}}}, {"detail": {"reason": ["CopyObject"]}}]},
    "array_in_event": {"detail": {"tags": ["urgent"]}},
    "array_no_match": {"detail": {"tags": ["mri"]}},
    "null_value": {"detail": {"note": [None]}},
    "number_vs_string": {"detail": {"priority": ["3"]}},
    "cidr": {"detail": {"ip": [{"cidr": "10.0.0.0/16"}]}},
    "resources_prefix": {"resources": [{"prefix": "arn:aws:s3:::radstream"}]},
    "multi_field_and": {"source": ["aws.s3"], "detail": {"object": {"size": [{"numeric": [">=", 1024]}]}, "reason": ["PutObject"]}},
}


@pytest.mark.parametrize("pattern_name", sorted(PATTERNS))
@pytest.mark.parametrize("event_name", sorted(EVENTS))
def test_matches_agrees_with_moto(pattern_name: str, event_name: str) -> None:
    pattern, event = PATTERNS[pattern_name], EVENTS[event_name]
    expected = EventPattern.load(json.dumps(pattern)).matches_event(event)
    assert matches(pattern, event) is expected


def test_table_exercises_both_outcomes() -> None:
    outcomes = {matches(p, e) for p in PATTERNS.values() for e in EVENTS.values()}
    assert outcomes == {True, False}
    assert matches(PATTERNS["template_rule"], EVENTS["dicom"])
    assert not matches(PATTERNS["template_rule"], EVENTS["deleted"])


def test_array_of_objects_is_flattened_like_eventbridge() -> None:
    # moto does not descend into arrays of objects; EventBridge flattens them.
    event = {"detail": {"series": [{"modality": "CR", "n": 1}, {"modality": "DX", "n": 2}]}}
    assert matches({"detail": {"series": {"modality": ["DX"]}}}, event)
    assert not matches({"detail": {"series": {"modality": ["CT"]}}}, event)


def test_booleans_are_not_numbers() -> None:
    event = {"detail": {"flag": True}}
    assert matches({"detail": {"flag": [True]}}, event)
    assert not matches({"detail": {"flag": [1]}}, event)
    assert not matches({"detail": {"flag": [{"numeric": [">", 0]}]}}, event)


def test_empty_pattern_matches_everything() -> None:
    assert matches({}, EVENTS["custom"])


@pytest.mark.parametrize("bad", [{"source": "aws.s3"}, {"source": []}, {"$or": [{"a": [1]}]}])
def test_invalid_patterns_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        matches(bad, EVENTS["dicom"])


def test_input_transformer_builds_state_machine_input() -> None:
    paths = {"bucket": "$.detail.bucket.name", "key": "$.detail.object.key", "size": "$.detail.object.size"}
    template = '{"study": {"bucket": <bucket>, "key": <key>, "size": <size>}, "uri": "s3://<bucket>/<key>"}'
    assert apply_input_transformer(paths, template, EVENTS["dicom"]) == {
        "study": {"bucket": "radstream-ingest", "key": "studies/2024/abc.dcm", "size": 52_428_800},
        "uri": "s3://radstream-ingest/studies/2024/abc.dcm",
    }


def test_input_transformer_escapes_and_whole_event() -> None:
    event = {"detail": {"msg": 'say "hi"', "n": 2, "obj": {"a": 1}}}
    paths = {"msg": "$.detail.msg", "n": "$.detail.n", "obj": "$.detail.obj", "missing": "$.detail.nope"}
    out = apply_input_transformer(
        paths, '{"text": "<msg> x<n>", "obj": <obj>, "raw": "<obj>", "m": <missing>, "all": <aws.events.event>}', event
    )
    assert out == {"text": 'say "hi" x2', "obj": {"a": 1}, "raw": '{"a": 1}', "m": None, "all": event}


def test_input_transformer_plain_string_and_undefined_variable() -> None:
    event = {"detail": {"state": "running"}}
    assert apply_input_transformer({"s": "$.detail.state"}, '"instance is <s>"', event) == "instance is running"
    assert apply_input_transformer({"s": "$.detail.state"}, "state <s>", event) == 'state "running"'
    with pytest.raises(ValueError):
        apply_input_transformer({}, '{"a": <b>}', event)
