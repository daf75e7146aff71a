"""Parallel and Map states, cancellation, concurrency limits and concurrent executions."""

from __future__ import annotations

import threading
import time
from typing import Any

from radstream.asl import StateMachine
from radstream.asl.tests._support import Tasks, machine, single

SPEC_PARALLEL = {
    "StartAt": "LookupCustomerInfo",
    "States": {
        "LookupCustomerInfo": {
            "Type": "Parallel",
            "End": True,
            "Branches": [
                {"StartAt": "LookupAddress", "States": {"LookupAddress": {"Type": "Task", "Resource": "AddressFinder", "End": True}}},
                {"StartAt": "LookupPhone", "States": {"LookupPhone": {"Type": "Task", "Resource": "PhoneFinder", "End": True}}},
            ],
        }
    },
}


def test_spec_parallel_example() -> None:
    tasks = Tasks(AddressFinder=lambda p: {"address": p["id"]}, PhoneFinder=lambda p: {"phone": p["id"]})
    result = machine(SPEC_PARALLEL, tasks).run({"id": 7})
    assert result.output == [{"address": 7}, {"phone": 7}]
    types = [e.type for e in result.history]
    assert types[:3] == ["ExecutionStarted", "ParallelStateEntered", "ParallelStateStarted"]
    assert types[-3:] == ["ParallelStateSucceeded", "ParallelStateExited", "ExecutionSucceeded"]


def test_parallel_branch_failure_cancels_siblings_and_is_caught() -> None:
    started = threading.Event()

    def slow(payload: Any) -> Any:
        started.set()
        time.sleep(0.1)
        return 1

    def fail(payload: Any) -> Any:
        started.wait(5)
        raise ValueError("bad study")

    tasks = Tasks(fail=fail, slow=slow, after=lambda p: 2)
    definition = single(
        {
            "Type": "Parallel",
            "End": True,
            "ResultPath": "$.r",
            "Branches": [
                {"StartAt": "F", "States": {"F": {"Type": "Task", "Resource": "fail", "End": True}}},
                {
                    "StartAt": "A",
                    "States": {
                        "A": {"Type": "Task", "Resource": "slow", "Next": "B"},
                        "B": {"Type": "Task", "Resource": "after", "End": True},
                    },
                },
            ],
            "Retry": [{"ErrorEquals": ["ValueError"], "MaxAttempts": 0}],
            "Catch": [{"ErrorEquals": ["ValueError"], "Next": "H", "ResultPath": "$.error"}],
        },
        H={"Type": "Pass", "End": True},
    )
    result = machine(definition, tasks).run({})
    assert result.output["error"]["Error"] == "ValueError"
    assert "after" not in tasks.names()
    assert [e.type for e in result.history if e.type.startswith("Parallel")][-2:] == ["ParallelStateFailed", "ParallelStateExited"]


def test_parallel_branches_run_concurrently() -> None:
    barrier = threading.Barrier(3, timeout=5)
    tasks = Tasks(**{f"b{i}": (lambda p, i=i: barrier.wait() >= 0 and i) for i in range(3)})
    definition = single(
        {
            "Type": "Parallel",
            "End": True,
            "Branches": [{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": f"b{i}", "End": True}}} for i in range(3)],
        }
    )
    assert machine(definition, tasks).run({}).output == [0, 1, 2]


SPEC_MAP_INPUT = {
    "ship-date": "2016-03-14T01:59:00Z",
    "detail": {
        "delivery-partner": "UQS",
        "shipped": [
            {"prod": "R31", "dest-code": 9511, "quantity": 1344},
            {"prod": "S39", "dest-code": 9511, "quantity": 40},
            {"prod": "R31", "dest-code": 9833, "quantity": 12},
        ],
    },
}


def _spec_map(processor_key: str, selector_key: str) -> dict[str, Any]:
    return single(
        {
            "Type": "Map",
            "InputPath": "$.detail",
            "ItemsPath": "$.shipped",
            "MaxConcurrency": 0,
            selector_key: {"parcel.$": "$$.Map.Item.Value", "courier.$": "$.delivery-partner", "index.$": "$$.Map.Item.Index"},
            processor_key: {"StartAt": "Validate", "States": {"Validate": {"Type": "Task", "Resource": "ship-val", "End": True}}},
            "ResultPath": "$.detail.shipped",
            "End": True,
        }
    )


def test_spec_map_example_both_spellings() -> None:
    for processor_key, selector_key in (("ItemProcessor", "ItemSelector"), ("Iterator", "Parameters")):
        tasks = Tasks(**{"ship-val": lambda p: {"ok": p["parcel"]["prod"], "courier": p["courier"], "i": p["index"]}})
        out = machine(_spec_map(processor_key, selector_key), tasks).run(SPEC_MAP_INPUT).output
        assert out["detail"]["shipped"] == [
            {"ok": "R31", "courier": "UQS", "i": 0},
            {"ok": "S39", "courier": "UQS", "i": 1},
            {"ok": "R31", "courier": "UQS", "i": 2},
        ]
        assert out["ship-date"] == "2016-03-14T01:59:00Z"


def test_map_max_concurrency_and_empty_input() -> None:
    lock, active, peak = threading.Lock(), [0], [0]

    def work(payload: Any) -> Any:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return payload * 2

    definition = single(
        {
            "Type": "Map",
            "MaxConcurrency": 2,
            "End": True,
            "ItemProcessor": {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "w", "End": True}}},
        }
    )
    assert machine(definition, Tasks(w=work)).run(list(range(8))).output == [i * 2 for i in range(8)]
    assert peak[0] <= 2
    assert machine(definition, Tasks(w=work)).run([]).output == []


def test_map_item_failure_fails_map() -> None:
    def work(payload: Any) -> Any:
        if payload == 3:
            raise KeyError("three")
        return payload

    definition = single(
        {"Type": "Map", "End": True, "ItemProcessor": {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "w", "End": True}}}}
    )
    result = machine(definition, Tasks(w=work)).run([1, 2, 3, 4])
    assert (result.status, result.error) == ("FAILED", "KeyError")
    assert any(e.type == "MapIterationFailed" and e.index == 2 for e in result.history)


def test_map_items_must_be_an_array() -> None:
    definition = single({"Type": "Map", "End": True, "ItemProcessor": {"StartAt": "T", "States": {"T": {"Type": "Pass", "End": True}}}})
    assert machine(definition).run({"not": "array"}).error == "States.Runtime"


def test_nested_parallel_inside_map_with_one_worker_does_not_deadlock() -> None:
    inner = {
        "Type": "Parallel",
        "End": True,
        "Branches": [{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "t", "End": True}}} for _ in range(3)],
    }
    definition = single({"Type": "Map", "End": True, "ItemProcessor": {"StartAt": "P", "States": {"P": inner}}})
    sm = StateMachine(definition, Tasks(t=lambda p: p), max_workers=1)
    assert sm.run([1, 2, 3, 4]).output == [[i] * 3 for i in (1, 2, 3, 4)]


def test_concurrent_executions_on_one_machine() -> None:
    sm = machine(SPEC_PARALLEL, Tasks(AddressFinder=lambda p: p["id"], PhoneFinder=lambda p: -p["id"]))
    outputs: dict[int, Any] = {}

    def worker(n: int) -> None:
        for k in range(20):
            i = n * 100 + k
            outputs[i] = sm.run({"id": i}, name=f"e{i}").output

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outputs == {i: [i, -i] for i in outputs} and len(outputs) == 80


def test_start_returns_a_handle() -> None:
    gate = threading.Event()
    sm = machine(single({"Type": "Task", "Resource": "t", "End": True}), Tasks(t=lambda p: gate.wait(5)))
    execution = sm.start({"a": 1}, name="async-1")
    assert execution.name == "async-1" and not execution.done()
    gate.set()
    result = execution.result(timeout=5)
    assert (result.status, result.output, result.name) == ("SUCCEEDED", True, "async-1")
