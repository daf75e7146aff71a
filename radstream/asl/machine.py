"""Amazon States Language (JSONPath) interpreter: StateMachine, executions and their event history."""

from __future__ import annotations

import functools
import itertools
import json
import pickle
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import errors as E
from .choice import Rule, compile_rule, parse_timestamp
from .errors import DefinitionError, StatesError
from .intrinsics import Evaluator, compile_expression, compile_template, path_evaluator
from .jsonpath import Path, PathNotFound, compile_reference_path
from .runtime import DaemonPool, Scope, fan_out

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"


@dataclass(slots=True)
class TaskContext:
    """What ``invoke`` learns about the Task it runs (the Lambda-context analogue)."""

    execution_id: str
    execution_name: str
    state_name: str
    retry_count: int
    timeout_seconds: float | None
    deadline: float | None  # time.monotonic() value

    def remaining_seconds(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


@dataclass(slots=True)
class HistoryEvent:
    """One GetExecutionHistory-style event; ``duration`` (seconds) is set on Task completion events."""

    id: int
    timestamp: float
    type: str
    state: str | None = None
    duration: float | None = None
    resource: str | None = None
    error: str | None = None
    cause: str | None = None
    index: int | None = None


@dataclass(slots=True)
class ExecutionResult:
    execution_id: str
    name: str
    status: str  # SUCCEEDED | FAILED | TIMED_OUT
    output: Any
    error: str | None
    cause: str | None
    start_time: float
    stop_time: float
    history: list[HistoryEvent] = field(repr=False)


InvokeFn = Callable[[str, Any, TaskContext], Any]


class _ExecutionTimedOut(Exception):
    pass


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _copy(value: Any) -> Any:
    # Lambda gets and returns serialized JSON; copying keeps in-process handlers from aliasing state data.
    # A pickle round trip is a deep copy done in C: half the time of walking the dicts in Python (a study's state).
    try:
        return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return _walk_copy(value)


def _same(value: Any) -> Any:
    return value


def _walk_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _walk_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_copy(v) for v in value]
    return value


class _Run:
    """Per-execution mutable state shared by all branches of one execution."""

    __slots__ = ("machine", "id", "name", "input", "start", "start_iso", "history", "ids", "deadline")

    def __init__(self, machine: StateMachine, name: str, data: Any) -> None:
        self.machine = machine
        self.id = f"{machine.arn.replace(':stateMachine:', ':execution:')}:{name}"
        self.name = name
        self.input = data
        self.start = machine.clock()
        self.start_iso = _iso(self.start)
        self.history: list[HistoryEvent] = []
        self.ids = itertools.count(1)
        timeout = machine.timeout_seconds
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def event(self, type_: str, state: str | None = None, **details: Any) -> None:
        self.history.append(HistoryEvent(next(self.ids), self.machine.clock(), type_, state, **details))

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _ExecutionTimedOut()

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.deadline is not None and time.monotonic() + seconds > self.deadline:
            self.machine.sleep(max(0.0, self.deadline - time.monotonic()))
            raise _ExecutionTimedOut()
        self.machine.sleep(seconds)


@dataclass(slots=True)
class _Frame:
    """Where a state runs: its execution, cancellation scope, entry time and retry count."""

    run: _Run
    scope: Scope
    state: str
    entered: float
    retry_count: int = 0

    def context(self, map_item: tuple[int, Any] | None = None) -> dict[str, Any]:
        run = self.run
        ctx: dict[str, Any] = {
            "Execution": {"Id": run.id, "Name": run.name, "StartTime": run.start_iso, "Input": run.input},
            "State": {"Name": self.state, "EnteredTime": _iso(self.entered), "RetryCount": self.retry_count},
            "StateMachine": {"Id": run.machine.arn, "Name": run.machine.name},
        }
        if map_item is not None:
            ctx["Map"] = {"Item": {"Index": map_item[0], "Value": map_item[1]}}
        return ctx


_COMMON = {"Type", "Comment"}
_IO = {"InputPath", "OutputPath"}
_FLOW = {"Next", "End"}
_FIELDS: dict[str, set[str]] = {
    "Task": _COMMON
    | _IO
    | _FLOW
    | {
        "Resource",
        "Parameters",
        "ResultSelector",
        "ResultPath",
        "Retry",
        "Catch",
        "TimeoutSeconds",
        "TimeoutSecondsPath",
        "HeartbeatSeconds",
        "HeartbeatSecondsPath",
    },
    "Pass": _COMMON | _IO | _FLOW | {"Parameters", "Result", "ResultPath"},
    "Choice": _COMMON | _IO | {"Choices", "Default"},
    "Wait": _COMMON | _IO | _FLOW | {"Seconds", "SecondsPath", "Timestamp", "TimestampPath"},
    "Succeed": _COMMON | _IO,
    "Fail": _COMMON | {"Error", "ErrorPath", "Cause", "CausePath"},
    "Parallel": _COMMON | _IO | _FLOW | {"Branches", "Parameters", "ResultSelector", "ResultPath", "Retry", "Catch"},
    "Map": _COMMON
    | _IO
    | _FLOW
    | {
        "Iterator",
        "ItemProcessor",
        "ItemsPath",
        "ItemSelector",
        "Parameters",
        "MaxConcurrency",
        "MaxConcurrencyPath",
        "ResultSelector",
        "ResultPath",
        "Retry",
        "Catch",
    },
}


def _positive_int(value: Any, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise DefinitionError(f"{where} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return value


def _non_empty(spec: dict[str, Any], key: str, kind: type, where: str, complaint: str) -> Any:
    """A field a state type requires: present, of its JSON type and not empty."""
    value = spec.get(key)
    if not isinstance(value, kind) or not value:
        raise DefinitionError(f"{where}: {complaint}")
    return value


def _select(text: str | None, where: str) -> Evaluator | None:
    """InputPath/OutputPath: None means identity ("$"), a null path yields {}."""
    if text == "$":
        return None
    if text is None:
        return lambda data, ctx: {}
    try:
        return path_evaluator(text)
    except DefinitionError as exc:
        raise DefinitionError(f"{where}: {exc}") from None


def _apply(select: Evaluator | None, data: Any, ctx: dict[str, Any] | None, field_name: str) -> Any:
    if select is None:
        return data
    try:
        return select(data, ctx)
    except PathNotFound as exc:
        raise StatesError(E.RUNTIME, f"{field_name}: {exc}") from None


def _template(spec: dict[str, Any], key: str, where: str) -> Evaluator | None:
    if key not in spec:
        return None
    try:
        return compile_template(spec[key])
    except DefinitionError as exc:
        raise DefinitionError(f"{where}.{key}: {exc}") from None


def _fill(template: Evaluator, data: Any, ctx: dict[str, Any] | None, field_name: str) -> Any:
    try:
        return template(data, ctx)
    except PathNotFound as exc:
        raise StatesError(E.PARAMETER_PATH_FAILURE, f"{field_name}: {exc}") from None


@dataclass(slots=True)
class Retrier:
    """One Retry rule of a state, parsed and checked; `delay(attempt)` is the wait before retry number attempt + 1."""

    errors: tuple[str, ...]
    interval: float
    max_attempts: int
    backoff: float
    max_delay: float | None
    full_jitter: bool

    def delay(self, attempt: int) -> float:
        delay = self.interval * self.backoff**attempt
        if self.max_delay is not None:
            delay = min(delay, self.max_delay)
        return random.uniform(0, delay) if self.full_jitter else delay


@dataclass(slots=True)
class _Catcher:
    errors: tuple[str, ...]
    next: str
    result_path: Path | None


def _matches(names: tuple[str, ...], error: str | None) -> bool:
    # None: an error with no name (a Fail state that names none).
    if error in E.TERMINAL:
        return False
    return any(name == error or name == E.ALL or (name == E.TASK_FAILED and error != E.TIMEOUT) for name in names)


def _error_list(spec: dict[str, Any], where: str, is_last: bool) -> tuple[str, ...]:
    names = spec.get("ErrorEquals")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DefinitionError(f"{where}: 'ErrorEquals' must be a non-empty array of strings")
    if E.ALL in names and (len(names) != 1 or not is_last):
        raise DefinitionError(f"{where}: 'States.ALL' must appear alone in the last ErrorEquals")
    return tuple(names)


def _rules(specs: Any, where: str, field: str, known: set[str]) -> list[tuple[str, dict[str, Any], bool]]:
    """A Retry or Catch array: each rule with where it stands, whether it is the last, its unknown fields refused."""
    if not isinstance(specs, list):
        raise DefinitionError(f"{where}: '{field}' must be an array")
    out = []
    for i, spec in enumerate(specs):
        w = f"{where}.{field}[{i}]"
        unknown = set(spec) - known
        if unknown:
            raise DefinitionError(f"{w}: unknown fields {sorted(unknown)}")
        out.append((w, spec, i == len(specs) - 1))
    return out


_RETRY_FIELDS = {"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate", "MaxDelaySeconds", "JitterStrategy", "Comment"}


def parse_retriers(specs: Any, where: str) -> tuple[Retrier, ...]:
    out = []
    for w, spec, is_last in _rules(specs, where, "Retry", _RETRY_FIELDS):
        backoff = spec.get("BackoffRate", 2.0)
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff < 1.0:
            raise DefinitionError(f"{w}.BackoffRate must be a number >= 1.0")
        jitter = spec.get("JitterStrategy", "NONE")
        if jitter not in ("FULL", "NONE"):
            raise DefinitionError(f"{w}.JitterStrategy must be FULL or NONE")
        out.append(
            Retrier(
                _error_list(spec, w, is_last),
                _positive_int(spec.get("IntervalSeconds", 1), f"{w}.IntervalSeconds"),
                _positive_int(spec.get("MaxAttempts", 3), f"{w}.MaxAttempts", allow_zero=True),
                float(backoff),
                _positive_int(spec["MaxDelaySeconds"], f"{w}.MaxDelaySeconds") if "MaxDelaySeconds" in spec else None,
                jitter == "FULL",
            )
        )
    return tuple(out)


def _catchers(specs: Any, where: str) -> tuple[_Catcher, ...]:
    out = []
    for w, spec, is_last in _rules(specs, where, "Catch", {"ErrorEquals", "Next", "ResultPath", "Comment"}):
        if not isinstance(spec.get("Next"), str):
            raise DefinitionError(f"{w}: 'Next' is required")
        out.append(_Catcher(_error_list(spec, w, is_last), spec["Next"], _result_path(spec, w)))
    return tuple(out)


def _result_path(spec: dict[str, Any], where: str) -> Path | None:
    text = spec.get("ResultPath", "$")
    if text is None:
        return None
    try:
        return compile_reference_path(text)
    except DefinitionError as exc:
        raise DefinitionError(f"{where}.ResultPath: {exc}") from None


class _State:
    """Fields shared by all state types; subclasses implement ``execute``."""

    def __init__(self, name: str, spec: dict[str, Any], where: str, machine: StateMachine) -> None:
        self.name = name
        # The history events of every state type: TaskStateEntered, ParallelStateExited, ...
        self.entered = f"{spec['Type']}StateEntered"
        self.exited = f"{spec['Type']}StateExited"
        self.machine = machine
        self.next: str | None = spec.get("Next")
        self.input_path = _select(spec.get("InputPath", "$"), f"{where}.InputPath")
        self.output_path = _select(spec.get("OutputPath", "$"), f"{where}.OutputPath")
        self.retriers = parse_retriers(spec.get("Retry", []), where)
        self.catchers = _catchers(spec.get("Catch", []), where)
        self.result_path = _result_path(spec, where)
        self.parameters = _template(spec, "Parameters", where)
        self.result_selector = _template(spec, "ResultSelector", where)
        nested = {k: v for k, v in spec.items() if k not in ("Branches", "Iterator", "ItemProcessor")}
        self.needs_context = "$$" in json.dumps(nested)

    def targets(self) -> list[str]:
        return ([self.next] if self.next else []) + [c.next for c in self.catchers]

    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        raise NotImplementedError

    def finish(self, data: Any, result: Any, ctx: dict[str, Any] | None) -> Any:
        """ResultSelector -> ResultPath -> OutputPath."""
        if self.result_selector is not None:
            result = _fill(self.result_selector, result, ctx, "ResultSelector")
        if self.result_path is None:
            output = data
        else:
            try:
                output = self.result_path.assign(data, result)
            except PathNotFound as exc:
                raise StatesError(E.RESULT_PATH_MATCH_FAILURE, str(exc)) from None
        return _apply(self.output_path, output, ctx, "OutputPath")

    def effective_input(self, data: Any, ctx: dict[str, Any] | None) -> Any:
        """InputPath -> Parameters."""
        data = _apply(self.input_path, data, ctx, "InputPath")
        if self.parameters is not None:
            data = _fill(self.parameters, data, ctx, "Parameters")
        return data


class _Task(_State):
    def __init__(self, name: str, spec: dict[str, Any], where: str, machine: StateMachine) -> None:
        super().__init__(name, spec, where, machine)
        self.resource: str = _non_empty(spec, "Resource", str, where, "'Resource' is required")
        self.lambda_invoke = self.resource == LAMBDA_INVOKE
        if self.lambda_invoke and not isinstance(spec.get("Parameters"), dict):
            raise DefinitionError(f"{where}: {LAMBDA_INVOKE} needs Parameters with FunctionName")
        if "TimeoutSeconds" in spec and "TimeoutSecondsPath" in spec:
            raise DefinitionError(f"{where}: only one of TimeoutSeconds and TimeoutSecondsPath")
        self.timeout: int | None = _positive_int(spec["TimeoutSeconds"], f"{where}.TimeoutSeconds") if "TimeoutSeconds" in spec else None
        self.timeout_path = _select(spec["TimeoutSecondsPath"], where) if "TimeoutSecondsPath" in spec else None

    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        ctx = frame.context() if self.needs_context else None
        payload = self.effective_input(data, ctx)
        target = self.resource
        if self.lambda_invoke:
            if not isinstance(payload, dict) or not isinstance(payload.get("FunctionName"), str):
                raise StatesError(E.RUNTIME, f"{LAMBDA_INVOKE}: Parameters.FunctionName must be a string")
            target, payload = payload["FunctionName"], payload.get("Payload", {})
        timeout: float | None = self.timeout
        if self.timeout_path is not None:
            timeout = _apply(self.timeout_path, data, ctx, "TimeoutSecondsPath")
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                raise StatesError(E.RUNTIME, f"TimeoutSecondsPath: {timeout!r} is not a positive number")
        run = frame.run
        run.event("TaskScheduled", self.name, resource=target)
        started = time.perf_counter()
        try:
            result = self.machine._invoke_task(target, payload, run, frame, timeout)
        except StatesError as err:
            kind = "TaskTimedOut" if err.error == E.TIMEOUT else "TaskFailed"
            run.event(kind, self.name, duration=time.perf_counter() - started, resource=target, error=err.error, cause=err.cause)
            raise
        run.event("TaskSucceeded", self.name, duration=time.perf_counter() - started, resource=target)
        if self.lambda_invoke:
            result = {"Payload": result, "StatusCode": 200, "ExecutedVersion": "$LATEST"}
        return self.finish(data, result, ctx), self.next


class _Pass(_State):
    def __init__(self, name: str, spec: dict[str, Any], where: str, machine: StateMachine) -> None:
        super().__init__(name, spec, where, machine)
        self.has_result = "Result" in spec
        self.result = spec.get("Result")

    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        ctx = frame.context() if self.needs_context else None
        effective = self.effective_input(data, ctx)
        result = _copy(self.result) if self.has_result else effective
        return self.finish(data, result, ctx), self.next


class _Choice(_State):
    def __init__(self, name: str, spec: dict[str, Any], where: str, machine: StateMachine) -> None:
        super().__init__(name, spec, where, machine)
        choices = _non_empty(spec, "Choices", list, where, "'Choices' must be a non-empty array")
        self.rules: list[tuple[Rule, str]] = [
            (compile_rule(rule, True, f"{where}.Choices[{i}]"), rule["Next"]) for i, rule in enumerate(choices)
        ]
        self.default: str | None = spec.get("Default")

    def targets(self) -> list[str]:
        return [nxt for _, nxt in self.rules] + ([self.default] if self.default else [])

    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        ctx = frame.context() if self.needs_context else None
        effective = _apply(self.input_path, data, ctx, "InputPath")
        for rule, nxt in self.rules:
            if rule(effective, ctx):
                return _apply(self.output_path, effective, ctx, "OutputPath"), nxt
        if self.default is None:
            raise StatesError(E.NO_CHOICE_MATCHED, f"No Choice rule matched in state '{self.name}' and no Default")
        return _apply(self.output_path, effective, ctx, "OutputPath"), self.default


class _Wait(_State):
    def __init__(self, name: str, spec: dict[str, Any], where: str, machine: StateMachine) -> None:
        super().__init__(name, spec, where, machine)
        given = [k for k in ("Seconds", "SecondsPath", "Timestamp", "TimestampPath") if k in spec]
        if len(given) != 1:
            raise DefinitionError(f"{where}: exactly one of Seconds, SecondsPath, Timestamp, TimestampPath")
        self.kind = given[0]
        value = spec[self.kind]
        if self.kind == "Seconds":
            _positive_int(value, f"{where}.Seconds", allow_zero=True)
        if self.kind == "Timestamp" and parse_timestamp(value) is None:
            raise DefinitionError(f"{where}.Timestamp: {value!r} is not an RFC3339 timestamp")
        self.value = value
        self.path = _select(value, f"{where}.{self.kind}") if self.kind.endswith("Path") else None

    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        ctx = frame.context() if self.needs_context else None
        effective = _apply(self.input_path, data, ctx, "InputPath")
        value = self.value if self.path is None else _apply(self.path, effective, ctx, self.kind)
        if self.kind.startswith("Seconds"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StatesError(E.RUNTIME, f"{self.kind}: {value!r} is not a non-negative integer")
            seconds = float(value)
        else:
            parsed = parse_timestamp(value)
            if parsed is None:
                raise StatesError(E.RUNTIME, f"{self.kind}: {value!r} is not an RFC3339 timestamp")
            seconds = parsed.timestamp() - self.machine.clock()
        frame.run.sleep(seconds)
        return _apply(self.output_path, effective, ctx, "OutputPath"), self.next


class _Succeed(_State):
    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        ctx = frame.context() if self.needs_context else None
        effective = _apply(self.input_path, data, ctx, "InputPath")
        return _apply(self.output_path, effective, ctx, "OutputPath"), None


class _Fail(_State):
    def __init__(self, name: str, spec: dict[str, Any], where: str, machine: StateMachine) -> None:
        super().__init__(name, spec, where, machine)
        for key in ("Error", "Cause"):
            if key in spec and key + "Path" in spec:
                raise DefinitionError(f"{where}: only one of {key} and {key}Path")
            if key in spec and not isinstance(spec[key], str):
                raise DefinitionError(f"{where}.{key} must be a string")
        # AWS: Error and Cause are both "(Optional)"; a Fail state without them reports none (null), not "".
        self.error: str | None = spec.get("Error")
        self.cause: str | None = spec.get("Cause")
        self.error_path = compile_expression(spec["ErrorPath"]) if "ErrorPath" in spec else None
        self.cause_path = compile_expression(spec["CausePath"]) if "CausePath" in spec else None

    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        ctx = frame.context() if self.needs_context else None
        error, cause = self.error, self.cause
        try:
            if self.error_path is not None:
                error = self.error_path(data, ctx)
            if self.cause_path is not None:
                cause = self.cause_path(data, ctx)
        except PathNotFound as exc:
            raise StatesError(E.RUNTIME, str(exc)) from None
        if (self.error_path is not None and not isinstance(error, str)) or (self.cause_path is not None and not isinstance(cause, str)):
            raise StatesError(E.RUNTIME, "ErrorPath and CausePath must resolve to strings")
        raise StatesError(error, cause)


class _Program:
    """A StartAt + States pair: the top-level machine, a Parallel branch or a Map item processor."""

    def __init__(self, spec: Any, where: str, machine: StateMachine) -> None:
        if not isinstance(spec, dict) or not isinstance(spec.get("States"), dict) or not spec["States"]:
            raise DefinitionError(f"{where}: needs 'StartAt' and a non-empty 'States' object")
        start = spec.get("StartAt")
        if start not in spec["States"]:
            raise DefinitionError(f"{where}: StartAt {start!r} is not a state")
        self.start: str = str(start)
        self.states: dict[str, _State] = {}
        for name, state_spec in spec["States"].items():
            w = f"{where}.States.{name}"
            if not isinstance(state_spec, dict) or state_spec.get("Type") not in _TYPES:
                raise DefinitionError(f"{w}: 'Type' must be one of {sorted(_TYPES)}")
            kind = state_spec["Type"]
            unknown = set(state_spec) - _FIELDS[kind]
            if unknown:
                raise DefinitionError(f"{w}: fields {sorted(unknown)} are not supported on a {kind} state")
            if kind in ("Task", "Pass", "Wait", "Parallel", "Map"):
                if ("Next" in state_spec) == (state_spec.get("End") is True):
                    raise DefinitionError(f"{w}: needs exactly one of 'Next' or \"End\": true")
            self.states[name] = _TYPES[kind](name, state_spec, w, machine)
        for name, state in self.states.items():
            for target in state.targets():
                if target not in self.states:
                    raise DefinitionError(f"{where}.States.{name}: transition to unknown state {target!r}")
        reachable, todo = {self.start}, [self.start]
        while todo:
            for target in self.states[todo.pop()].targets():
                if target not in reachable:
                    reachable.add(target)
                    todo.append(target)
        if unreachable := sorted(set(self.states) - reachable):
            raise DefinitionError(f"{where}: states {unreachable} are not reachable from StartAt")

    def execute(self, data: Any, run: _Run, scope: Scope) -> Any:
        name: str | None = self.start
        clock = run.machine.clock
        while name is not None:
            scope.check()
            run.check_deadline()
            state = self.states[name]
            frame = _Frame(run, scope, name, clock())
            run.history.append(HistoryEvent(next(run.ids), frame.entered, state.entered, name))
            data, name = _attempt(state, data, frame)
            run.event(state.exited, state.name)
        return data


def _attempt(state: _State, data: Any, frame: _Frame) -> tuple[Any, str | None]:
    """Run a state with its Retry and Catch policies."""
    counts = [0] * len(state.retriers)
    while True:
        try:
            return state.execute(data, frame)
        except StatesError as err:
            error = err
        # Only the first retrier whose ErrorEquals matches applies, even once it is exhausted.
        index = next((i for i, r in enumerate(state.retriers) if _matches(r.errors, error.error)), None)
        if index is not None and counts[index] < state.retriers[index].max_attempts:
            frame.run.sleep(state.retriers[index].delay(counts[index]))
            counts[index] += 1
            frame.retry_count += 1
            frame.scope.check()
            frame.run.check_deadline()
            continue
        for catcher in state.catchers:
            if _matches(catcher.errors, error.error):
                if catcher.result_path is None:
                    return data, catcher.next
                try:
                    return catcher.result_path.assign(data, {"Error": error.error, "Cause": error.cause}), catcher.next
                except PathNotFound as exc:
                    raise StatesError(E.RESULT_PATH_MATCH_FAILURE, str(exc)) from None
        raise error


class _Parallel(_State):
    def __init__(self, name: str, spec: dict[str, Any], where: str, machine: StateMachine) -> None:
        super().__init__(name, spec, where, machine)
        branches = _non_empty(spec, "Branches", list, where, "'Branches' must be a non-empty array")
        self.branches = [_Program(b, f"{where}.Branches[{i}]", machine) for i, b in enumerate(branches)]

    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        ctx = frame.context() if self.needs_context else None
        effective = self.effective_input(data, ctx)
        run = frame.run
        run.event("ParallelStateStarted", self.name)
        scope = Scope(frame.scope)
        try:
            results = fan_out(
                run.machine._pool,
                [functools.partial(b.execute, effective, run, scope) for b in self.branches],
                scope,
            )
        except StatesError as err:
            run.event("ParallelStateFailed", self.name, error=err.error, cause=err.cause)
            raise
        run.event("ParallelStateSucceeded", self.name)
        return self.finish(data, results, ctx), self.next


class _Map(_State):
    def __init__(self, name: str, spec: dict[str, Any], where: str, machine: StateMachine) -> None:
        super().__init__(name, spec, where, machine)
        processor = spec.get("ItemProcessor", spec.get("Iterator"))
        if ("ItemProcessor" in spec) == ("Iterator" in spec):
            raise DefinitionError(f"{where}: exactly one of 'ItemProcessor' or 'Iterator'")
        if isinstance(processor, dict):
            config = processor.get("ProcessorConfig", {})
            if config.get("Mode", "INLINE") != "INLINE":
                raise DefinitionError(f"{where}: only INLINE Map processing is supported")
            processor = {k: v for k, v in processor.items() if k != "ProcessorConfig"}
        self.processor = _Program(processor, f"{where}.ItemProcessor", machine)
        if "ItemSelector" in spec and "Parameters" in spec:
            raise DefinitionError(f"{where}: only one of 'ItemSelector' and 'Parameters'")
        self.item_selector = self.parameters or _template(spec, "ItemSelector", where)
        self.parameters = None
        self.items_path = _select(spec.get("ItemsPath", "$"), f"{where}.ItemsPath")
        self.max_concurrency = _positive_int(spec.get("MaxConcurrency", 0), f"{where}.MaxConcurrency", True)
        self.max_concurrency_path = _select(spec["MaxConcurrencyPath"], where) if "MaxConcurrencyPath" in spec else None
        if self.item_selector is not None:
            self.needs_context = True  # ItemSelector sees $$.Map.Item

    def execute(self, data: Any, frame: _Frame) -> tuple[Any, str | None]:
        ctx = frame.context() if self.needs_context else None
        effective = _apply(self.input_path, data, ctx, "InputPath")
        items = _apply(self.items_path, effective, ctx, "ItemsPath")
        if not isinstance(items, list):
            raise StatesError(E.RUNTIME, f"ItemsPath: the Map state's items must be an array, got {type(items).__name__}")
        limit = self.max_concurrency
        if self.max_concurrency_path is not None:
            limit = _apply(self.max_concurrency_path, effective, ctx, "MaxConcurrencyPath")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise StatesError(E.RUNTIME, f"MaxConcurrencyPath: {limit!r} is not a non-negative integer")
        run = frame.run
        run.event("MapStateStarted", self.name)
        scope = Scope(frame.scope)
        results: list[Any] = [None] * len(items)
        cursor = itertools.count()

        def worker() -> None:
            # itertools.count's next() is atomic under the GIL: each index is taken once.
            for i in iter(cursor.__next__, None):
                if i >= len(items):
                    return
                scope.check()
                item = items[i]
                if self.item_selector is not None:
                    item = _fill(self.item_selector, effective, frame.context((i, item)), "ItemSelector")
                run.event("MapIterationStarted", self.name, index=i)
                try:
                    results[i] = self.processor.execute(item, run, scope)
                except StatesError as err:
                    run.event("MapIterationFailed", self.name, index=i, error=err.error, cause=err.cause)
                    raise
                run.event("MapIterationSucceeded", self.name, index=i)

        workers = len(items) if limit == 0 else min(limit, len(items))
        try:
            if workers:
                fan_out(run.machine._pool, [worker] * workers, scope)
        except StatesError as err:
            run.event("MapStateFailed", self.name, error=err.error, cause=err.cause)
            raise
        run.event("MapStateSucceeded", self.name)
        return self.finish(data, results, ctx), self.next


_TYPES: dict[str, type[_State]] = {
    "Task": _Task,
    "Pass": _Pass,
    "Choice": _Choice,
    "Wait": _Wait,
    "Succeed": _Succeed,
    "Fail": _Fail,
    "Parallel": _Parallel,
    "Map": _Map,
}


def _exception_error(exc: BaseException) -> StatesError:
    if isinstance(exc, StatesError):
        return exc
    name = getattr(exc, "error_name", None) or type(exc).__name__
    return StatesError(name, json.dumps({"errorMessage": str(exc), "errorType": name}))


class Execution:
    """Handle of an execution started with ``StateMachine.start``."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._done = threading.Event()
        self._result: ExecutionResult | None = None

    @property
    def execution_id(self) -> str:
        return self._run.id

    @property
    def name(self) -> str:
        return self._run.name

    @property
    def history(self) -> list[HistoryEvent]:
        return self._run.history

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> ExecutionResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"execution {self.name} still running after {timeout}s")
        assert self._result is not None
        return self._result

    def _complete(self, result: ExecutionResult) -> None:
        self._result = result
        self._done.set()


class StateMachine:
    """An ASL (JSONPath) state machine; ``invoke(resource, input, ctx)`` runs Task states.

    Immutable after construction: executions may run concurrently from several threads.
    """

    def __init__(
        self,
        definition: dict[str, Any],
        invoke: InvokeFn,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        max_workers: int = 8,
        name: str = "StateMachine",
        arn: str | None = None,
        copy_task_io: bool = True,
    ) -> None:
        """`copy_task_io=False`: hand tasks the state's own values and take their outputs as they are, for an `invoke`
        that, as Lambda's JSON boundary would, never mutates its input and returns values of its own (the local
        runtime's stage handlers: they parse the input into models and return a fresh `model_dump`). The interpreter
        itself never mutates state data in place (paths assign into copies), so nothing else needs the copy."""
        if not isinstance(definition, dict):
            raise DefinitionError("the definition must be a JSON object")
        unknown = set(definition) - {"StartAt", "States", "Comment", "Version", "TimeoutSeconds", "QueryLanguage"}
        if unknown:
            raise DefinitionError(f"top-level fields {sorted(unknown)} are not supported")
        if definition.get("QueryLanguage", "JSONPath") != "JSONPath":
            raise DefinitionError("only the JSONPath query language is supported")
        self.name = name
        self.arn = arn or f"arn:aws:states:local:000000000000:stateMachine:{name}"
        self.invoke = invoke
        self.sleep = sleep
        self.clock = clock
        self.timeout_seconds: int | None = (
            _positive_int(definition["TimeoutSeconds"], "TimeoutSeconds") if "TimeoutSeconds" in definition else None
        )
        self._copy_io: Callable[[Any], Any] = _copy if copy_task_io else _same
        self._pool = DaemonPool(max_workers)
        self._program = _Program(definition, "$", self)

    def start(self, data: Any = None, name: str | None = None) -> Execution:
        """Start an execution on a worker thread."""
        execution = Execution(self._new_run(data, name))
        self._pool.spawn(lambda: execution._complete(self._execute(execution._run)))
        return execution

    def run(self, data: Any = None, name: str | None = None) -> ExecutionResult:
        """Run an execution to completion on the calling thread."""
        return self._execute(self._new_run(data, name))

    def _new_run(self, data: Any, name: str | None) -> _Run:
        return _Run(self, name or str(uuid.uuid4()), {} if data is None else data)

    def _execute(self, run: _Run) -> ExecutionResult:
        run.event("ExecutionStarted")
        status, output, error, cause = "SUCCEEDED", None, None, None
        try:
            output = self._program.execute(run.input, run, Scope())
            run.event("ExecutionSucceeded")
        except StatesError as err:
            status, error, cause = "FAILED", err.error, err.cause
            run.event("ExecutionFailed", error=error, cause=cause)
        except _ExecutionTimedOut:
            status, error, cause = "TIMED_OUT", E.TIMEOUT, "The execution timed out"
            run.event("ExecutionTimedOut", error=error, cause=cause)
        return ExecutionResult(run.id, run.name, status, output, error, cause, run.start, self.clock(), run.history)

    def _invoke_task(self, target: str, payload: Any, run: _Run, frame: _Frame, timeout: float | None) -> Any:
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        context = TaskContext(run.id, run.name, frame.state, frame.retry_count, timeout, deadline)
        payload = self._copy_io(payload)
        if deadline is None and run.deadline is None:
            try:
                return self._copy_io(self.invoke(target, payload, context))
            except Exception as exc:
                raise _exception_error(exc) from exc
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["result"] = self.invoke(target, payload, context)
            except Exception as exc:
                box["error"] = exc
            finally:
                done.set()

        self._pool.spawn(work)
        limits = [d for d in (deadline, run.deadline) if d is not None]
        if not done.wait(max(0.0, min(limits) - now)):
            if deadline is not None and (run.deadline is None or deadline <= run.deadline):
                raise StatesError(E.TIMEOUT, f"Task timed out after {timeout} seconds")
            raise _ExecutionTimedOut()
        if "error" in box:
            raise _exception_error(box["error"]) from box["error"]
        return self._copy_io(box["result"])
