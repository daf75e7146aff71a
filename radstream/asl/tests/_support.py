"""Shared helpers for the ASL interpreter tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from radstream.asl import StateMachine, TaskContext

Handler = Callable[[Any], Any]


class FakeSleep:
    """Records requested sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Tasks:
    """An ``invoke`` resolver dispatching on the resource string and recording calls."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = handlers
        self.calls: list[tuple[str, Any, TaskContext]] = []

    def __call__(self, resource: str, payload: Any, ctx: TaskContext) -> Any:
        self.calls.append((resource, payload, ctx))
        return self.handlers[resource](payload)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def machine(definition: dict[str, Any], tasks: Callable[[str, Any, TaskContext], Any] | None = None, **kwargs: Any) -> StateMachine:
    kwargs.setdefault("sleep", FakeSleep())
    return StateMachine(definition, tasks or Tasks(), **kwargs)


def single(state: dict[str, Any], **extra_states: dict[str, Any]) -> dict[str, Any]:
    """A definition whose StartAt is ``state`` (named S)."""
    return {"StartAt": "S", "States": {"S": state, **extra_states}}
