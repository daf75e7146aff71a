"""EventBridge event pattern matching and InputTransformer, as applied to rules from template.yaml."""

from __future__ import annotations

import ipaddress
import json
import operator
import re
from collections.abc import Callable
from typing import Any

from radstream.asl.jsonpath import PathNotFound, compile_path

_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    "=": operator.eq,
    ">=": operator.ge,
    ">": operator.gt,
}
_VARIABLE = re.compile(r"<([A-Za-z0-9_.\-]+)>")


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """Whether ``event`` matches the EventBridge ``pattern`` (content filtering, ``$or``, arrays)."""
    if not isinstance(pattern, dict):
        raise ValueError("an event pattern must be a JSON object")
    return _match(pattern, event, ())


def _match(pattern: dict[str, Any], event: Any, prefix: tuple[str, ...]) -> bool:
    for key, rule in pattern.items():
        if key == "$or":
            if not isinstance(rule, list) or len(rule) < 2:
                raise ValueError("'$or' needs an array of at least two patterns")
            if not any(_match(p, event, prefix) for p in rule):
                return False
        elif isinstance(rule, dict):
            if not _match(rule, event, (*prefix, key)):
                return False
        elif isinstance(rule, list) and rule:
            if not _match_filters(rule, _leaves(event, (*prefix, key))):
                return False
        else:
            raise ValueError(f"pattern field {key!r} must be an object or a non-empty array")
    return True


def _leaves(node: Any, path: tuple[str, ...]) -> list[Any]:
    # EventBridge flattens arrays at any depth; only scalar leaves take part in matching.
    nodes = [node]
    for key in path:
        nodes = [child for n in _expand(nodes) if isinstance(n, dict) and key in n for child in [n[key]]]
    return [n for n in _expand(nodes) if not isinstance(n, dict)]


def _expand(nodes: list[Any]) -> list[Any]:
    out: list[Any] = []
    for n in nodes:
        if isinstance(n, list):
            out.extend(_expand(n))
        else:
            out.append(n)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(value: Any, expected: Any) -> bool:
    if _is_number(expected):
        return _is_number(value) and value == expected
    return type(value) is type(expected) and value == expected


def _match_filters(filters: list[Any], values: list[Any]) -> bool:
    for f in filters:
        if isinstance(f, dict):
            if len(f) != 1:
                raise ValueError(f"a filter object must have exactly one key, got {sorted(f)}")
            ((name, arg),) = f.items()
            if name == "exists":
                if bool(values) is arg:
                    return True
            elif any(_named(name, arg, v) for v in values):
                return True
        elif any(_equal(v, f) for v in values):
            return True
    return False


def _ignore_case(arg: Any) -> str | None:
    return arg["equals-ignore-case"] if isinstance(arg, dict) and "equals-ignore-case" in arg else None


def _named(name: str, arg: Any, value: Any) -> bool:
    if name == "prefix":
        folded = _ignore_case(arg)
        if folded is not None:
            return isinstance(value, str) and value.lower().startswith(folded.lower())
        return isinstance(value, str) and value.startswith(arg)
    if name == "suffix":
        folded = _ignore_case(arg)
        if folded is not None:
            return isinstance(value, str) and value.lower().endswith(folded.lower())
        return isinstance(value, str) and value.endswith(arg)
    if name == "equals-ignore-case":
        options = arg if isinstance(arg, list) else [arg]
        return isinstance(value, str) and any(value.lower() == o.lower() for o in options)
    if name == "anything-but":
        if isinstance(arg, dict):
            ((inner, inner_arg),) = arg.items()
            return not _named(inner, inner_arg, value)
        options = arg if isinstance(arg, list) else [arg]
        return not any(_equal(value, o) for o in options)
    if name == "numeric":
        if not _is_number(value) or len(arg) % 2:
            return False
        return all(_NUMERIC_OPS[op](value, bound) for op, bound in zip(arg[::2], arg[1::2], strict=True))
    if name == "wildcard":
        options = arg if isinstance(arg, list) else [arg]
        return isinstance(value, str) and any(_wildcard(o).fullmatch(value) is not None for o in options)
    if name == "cidr":
        try:
            return ipaddress.ip_address(value) in ipaddress.ip_network(arg)
        except ValueError:
            return False
    raise ValueError(f"unsupported filter {name!r}")


def _wildcard(pattern: str) -> re.Pattern[str]:
    # "*" matches any run of characters; "\*" and "\\" are a literal star and backslash.
    parts = re.findall(r"\\[*\\]|\*|[^*\\]+|\\", pattern)
    return re.compile("".join(".*" if p == "*" else re.escape(p[1] if len(p) == 2 else p) for p in parts), re.DOTALL)


def apply_input_transformer(input_paths_map: dict[str, str], input_template: str, event: dict[str, Any]) -> Any:
    """EventBridge InputTransformer: substitute ``<var>`` placeholders; JSON results are parsed.

    A placeholder inside a JSON string gets the raw text of a string value; elsewhere it gets the value as JSON.
    Paths that select nothing yield null. ``<aws.events.event>`` is the whole event.
    """
    values: dict[str, Any] = {"aws.events.event": event, "aws.events.event.json": event}
    for var, path in input_paths_map.items():
        try:
            values[var] = compile_path(path).resolve(event)
        except PathNotFound:
            values[var] = None
    out: list[str] = []
    in_string = False
    pos = 0
    while pos < len(input_template):
        c = input_template[pos]
        m = _VARIABLE.match(input_template, pos) if c == "<" else None
        if m:
            if m.group(1) not in values:
                raise ValueError(f"InputTemplate uses <{m.group(1)}>, which InputPathsMap does not define")
            value = values[m.group(1)]
            if in_string:
                text = value if isinstance(value, str) else json.dumps(value)
                out.append(json.dumps(text)[1:-1])
            else:
                out.append(json.dumps(value))
            pos = m.end()
            continue
        if c == "\\" and in_string:
            out.append(input_template[pos : pos + 2])
            pos += 2
            continue
        if c == '"':
            in_string = not in_string
        out.append(c)
        pos += 1
    result = "".join(out)
    try:
        return json.loads(result)
    except ValueError:
        return result
