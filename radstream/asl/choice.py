"""Choice state rules: comparison operators, And/Or/Not."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

from .errors import RUNTIME, DefinitionError, StatesError
from .jsonpath import Path, PathNotFound, compile_path

# (state input, context object or None) -> matched
Rule = Callable[[Any, "dict[str, Any] | None"], bool]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": operator.eq,
    "LessThan": operator.lt,
    "GreaterThan": operator.gt,
    "LessThanEquals": operator.le,
    "GreaterThanEquals": operator.ge,
}
_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "IsNull": lambda v: v is None,
    "IsString": lambda v: isinstance(v, str),
    "IsNumeric": lambda v: _is_number(v),
    "IsBoolean": lambda v: isinstance(v, bool),
    "IsTimestamp": lambda v: parse_timestamp(v) is not None,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@lru_cache(maxsize=1024)
def _parse_timestamp(text: str) -> datetime | None:
    m = _RFC3339.fullmatch(text)
    if not m:
        return None
    fraction = m.group(1) or ""
    # fromisoformat takes at most microseconds
    text = text[: m.start(1)] + fraction[:7] + text[m.end(1) :] if fraction else text
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_timestamp(value: Any) -> datetime | None:
    """The RFC3339 timestamp ``value`` denotes, or None."""
    return _parse_timestamp(value) if isinstance(value, str) else None


def _string_matcher(pattern: str) -> Callable[[Any], bool]:
    # Only "*" is special; "\*" and "\\" escape a literal star or backslash.
    regex = "".join(
        ".*" if tok == "*" else re.escape(tok[1] if tok.startswith("\\") else tok) for tok in re.findall(r"\\[*\\]|\*|[^*\\]+|\\", pattern)
    )
    compiled = re.compile(regex, re.DOTALL)
    return lambda v: isinstance(v, str) and compiled.fullmatch(v) is not None


def _typed(kind: str) -> tuple[Callable[[Any], bool], Callable[[Any], Any]]:
    if kind == "String":
        return (lambda v: isinstance(v, str)), (lambda v: v)
    if kind == "Numeric":
        return _is_number, (lambda v: v)
    if kind == "Boolean":
        return (lambda v: isinstance(v, bool)), (lambda v: v)
    return (lambda v: parse_timestamp(v) is not None), parse_timestamp


def _operators() -> dict[str, tuple[str, str]]:
    ops = {}
    for kind in ("String", "Numeric", "Timestamp"):
        for comparison in _COMPARATORS:
            ops[kind + comparison] = (kind, comparison)
    ops["BooleanEquals"] = ("Boolean", "Equals")
    return ops


_OPERATORS = _operators()
_ALL_OPERATORS = set(_OPERATORS) | {op + "Path" for op in _OPERATORS} | set(_TYPE_TESTS) | {"IsPresent", "StringMatches"}


def _resolve(path: Path, data: Any, ctx: dict[str, Any] | None) -> Any:
    try:
        return path.resolve(ctx if path.context else data)
    except PathNotFound as exc:
        raise StatesError(RUNTIME, f"Invalid path '{path.text}': the choice state's condition path references an invalid value") from exc


def compile_rule(rule: Any, top_level: bool, where: str) -> Rule:
    """Compile a Choice Rule; top-level rules carry ``Next`` (checked by the caller), nested ones must not."""
    if not isinstance(rule, dict):
        raise DefinitionError(f"{where}: a choice rule must be an object")
    keys = set(rule) - {"Comment"}
    if top_level:
        if "Next" not in rule:
            raise DefinitionError(f"{where}: a top-level choice rule needs 'Next'")
        keys.discard("Next")
    elif "Next" in rule:
        raise DefinitionError(f"{where}: a nested choice rule must not have 'Next'")
    if keys in ({"And"}, {"Or"}):
        (key,) = keys
        if not isinstance(rule[key], list) or not rule[key]:
            raise DefinitionError(f"{where}: '{key}' needs a non-empty array of rules")
        rules = [compile_rule(r, False, f"{where}.{key}[{i}]") for i, r in enumerate(rule[key])]
        if key == "And":
            return lambda data, ctx: all(r(data, ctx) for r in rules)
        return lambda data, ctx: any(r(data, ctx) for r in rules)
    if keys == {"Not"}:
        inner = compile_rule(rule["Not"], False, f"{where}.Not")
        return lambda data, ctx: not inner(data, ctx)
    ops = keys - {"Variable"}
    if "Variable" not in keys or len(ops) != 1 or not ops <= _ALL_OPERATORS:
        raise DefinitionError(f"{where}: needs 'Variable' and exactly one known comparison operator, got {sorted(keys)}")
    (op,) = ops
    variable = compile_path(rule["Variable"])
    operand = rule[op]
    if op == "IsPresent":
        _need(isinstance(operand, bool), where, op, "a boolean")
        return lambda data, ctx: variable.exists(ctx if variable.context else data) is operand
    if op in _TYPE_TESTS:
        _need(isinstance(operand, bool), where, op, "a boolean")
        test = _TYPE_TESTS[op]
        return lambda data, ctx: test(_resolve(variable, data, ctx)) is operand
    if op == "StringMatches":
        _need(isinstance(operand, str), where, op, "a string")
        matcher = _string_matcher(operand)
        return lambda data, ctx: matcher(_resolve(variable, data, ctx))
    kind, comparison = _OPERATORS[op.removesuffix("Path")]
    is_kind, convert = _typed(kind)
    compare = _COMPARATORS[comparison]
    if op.endswith("Path"):
        _need(isinstance(operand, str), where, op, "a path")
        other = compile_path(operand)

        def by_path(data: Any, ctx: dict[str, Any] | None) -> bool:
            left, right = _resolve(variable, data, ctx), _resolve(other, data, ctx)
            return is_kind(left) and is_kind(right) and compare(convert(left), convert(right))

        return by_path
    _need(is_kind(operand), where, op, f"a {kind.lower()} value")
    expected = convert(operand)

    def by_value(data: Any, ctx: dict[str, Any] | None) -> bool:
        value = _resolve(variable, data, ctx)
        return is_kind(value) and compare(convert(value), expected)

    return by_value


def _need(ok: bool, where: str, op: str, what: str) -> None:
    if not ok:
        raise DefinitionError(f"{where}: '{op}' needs {what}")
