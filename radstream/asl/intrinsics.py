"""Intrinsic functions (``States.Format(...)`` etc.) and payload templates (``"key.$"`` fields)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import Callable
from typing import Any

from .errors import INTRINSIC_FAILURE, DefinitionError, StatesError
from .jsonpath import PathNotFound, compile_path


def _constant(value: str) -> Callable[[Any, Any], str]:
    """An argument that evaluates to the same text whatever the data and context."""
    return lambda data, ctx: value


# (state input, context object or None) -> value
Evaluator = Callable[[Any, "dict[str, Any] | None"], Any]

_CALL = re.compile(r"\s*(States\.[A-Za-z0-9]+)\s*\(")
_LITERAL = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")


def _fail(message: str) -> StatesError:
    return StatesError(INTRINSIC_FAILURE, message)


def _format(template: Any, *args: Any, escapes: bool = True) -> str:
    """``{}`` placeholders take the arguments in order; ``escapes`` applies to a literal template, whose
    ``\\{``, ``\\}``, ``\\'`` and ``\\\\`` stand for the characters (a template read from a path is plain text)."""
    if not isinstance(template, str):
        raise _fail(f"States.Format: the template must be a string, got {type(template).__name__}")
    pieces = re.split(r"(\\[{}\\']|\{\})" if escapes else r"(\{\})", template)
    if pieces.count("{}") != len(args):
        raise _fail(f"States.Format: {pieces.count('{}')} placeholders but {len(args)} arguments")
    values = iter(args)
    out = []
    for piece in pieces:
        if piece == "{}":
            value = next(values)
            if isinstance(value, (dict, list)):
                raise _fail("States.Format: arguments must be strings, numbers, booleans or null")
            out.append(value if isinstance(value, str) else json.dumps(value))
        elif escapes and len(piece) == 2 and piece[0] == "\\":
            out.append(piece[1])
        else:
            out.append(piece)
    return "".join(out)


def _integer(value: Any, fn: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise _fail(f"{fn}: {value!r} is not an integer")
    return int(value)


def _rounded(value: Any, fn: str) -> int:
    """A number rounded to the nearest integer, as AWS does for the arguments its documentation says it rounds.

    Step Functions runs on the JVM: halves go up, as Java's Math.round does (AWS returns
    States.MathAdd(-1.49, -1.5) = -2, i.e. -1.5 rounds to -1, not to -2 as half-away-from-zero would).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(f"{fn}: {value!r} is not a number")
    if isinstance(value, int):
        return value
    floor = math.floor(value)
    return floor + 1 if value - floor >= 0.5 else floor


def _array(value: Any, fn: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(f"{fn}: {value!r} is not an array")
    return value


def _partition(array: list[Any], size: Any) -> list[list[Any]]:
    array, n = _array(array, "States.ArrayPartition"), _rounded(size, "States.ArrayPartition")
    if n <= 0:
        raise _fail("States.ArrayPartition: chunk size must be positive")
    return [array[i : i + n] for i in range(0, len(array), n)]


ARRAY_RANGE_LIMIT = 1000  # AWS: "The newly generated array can't contain more than 1000 items."


def _array_range(start: Any, stop: Any, step: Any) -> list[int]:
    a, b, s = (_rounded(v, "States.ArrayRange") for v in (start, stop, step))
    if s == 0:
        raise _fail("States.ArrayRange: step must not be 0")
    items = range(a, b + (1 if s > 0 else -1), s)
    if len(items) > ARRAY_RANGE_LIMIT:
        raise _fail(f"States.ArrayRange: the range has {len(items)} items, over the limit of {ARRAY_RANGE_LIMIT}")
    return list(items)


def _math_random(start: Any, end: Any, *seed: Any) -> int:
    a, b = _rounded(start, "States.MathRandom"), _rounded(end, "States.MathRandom")
    return random.Random(*(_integer(s, "States.MathRandom") for s in seed)).randint(a, b - 1)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true and 1 are different values (Python's == and ``in`` say they are equal)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _unique(array: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in array:
        if not any(_same(item, s) for s in seen):
            seen.append(item)
    return seen


def _hash(data: Any, algorithm: str) -> str:
    names = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512"}
    if algorithm not in names:
        raise _fail(f"States.Hash: unsupported algorithm {algorithm!r}")
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return hashlib.new(names[algorithm], text.encode()).hexdigest()


def _merge(left: dict[str, Any], right: dict[str, Any], deep: bool) -> dict[str, Any]:
    if deep:
        raise _fail("States.JsonMerge: only shallow merge (false) is supported")
    return {**left, **right}


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "States.Format": _format,
    "States.StringToJson": lambda s: json.loads(s),
    "States.JsonToString": lambda v: json.dumps(v, separators=(",", ":")),
    "States.Array": lambda *a: list(a),
    "States.ArrayPartition": _partition,
    "States.ArrayContains": lambda array, value: any(_same(value, v) for v in _array(array, "States.ArrayContains")),
    "States.ArrayRange": _array_range,
    "States.ArrayGetItem": lambda array, i: _array(array, "States.ArrayGetItem")[_integer(i, "States.ArrayGetItem")],
    "States.ArrayLength": lambda array: len(_array(array, "States.ArrayLength")),
    "States.ArrayUnique": lambda array: _unique(_array(array, "States.ArrayUnique")),
    "States.Base64Encode": lambda s: base64.b64encode(s.encode()).decode(),
    "States.Base64Decode": lambda s: base64.b64decode(s.encode(), validate=True).decode(),
    "States.Hash": _hash,
    "States.JsonMerge": _merge,
    "States.MathRandom": _math_random,
    "States.MathAdd": lambda a, b: _rounded(a, "States.MathAdd") + _rounded(b, "States.MathAdd"),
    "States.StringSplit": lambda s, sep: [p for p in re.split("|".join(map(re.escape, sep)), s) if p] if sep else [s],
    "States.UUID": lambda: str(uuid.uuid4()),
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> DefinitionError:
        return DefinitionError(f"Invalid intrinsic function {self.text!r}: {message} at offset {self.pos}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def call(self) -> Evaluator:
        m = _CALL.match(self.text, self.pos)
        if not m:
            raise self.error("expected States.<Function>(")
        name = m.group(1)
        if name not in _FUNCTIONS:
            raise self.error(f"unknown function {name}")
        self.pos = m.end()
        args: list[Evaluator] = []
        raw_template: str | None = None
        self.skip_space()
        if self.text.startswith(")", self.pos):
            self.pos += 1
        else:
            while True:
                self.skip_space()
                if not args and self.text.startswith("'", self.pos):
                    raw_template = self.raw_string()
                    value = re.sub(r"\\(.)", r"\1", raw_template)
                    args.append(_constant(value))
                else:
                    args.append(self.argument())
                self.skip_space()
                if self.text.startswith(",", self.pos):
                    self.pos += 1
                elif self.text.startswith(")", self.pos):
                    self.pos += 1
                    break
                else:
                    raise self.error("expected ',' or ')'")
        if name == "States.Format":
            if not args:
                raise self.error("States.Format needs a template")
            template, rest = args[0], args[1:]
            if raw_template is not None:  # a literal: its escapes are resolved by _format
                return _guard(name, lambda data, ctx: _format(raw_template, *(a(data, ctx) for a in rest)))
            # AWS: "States.Format($.template, $.name)": the template may come from a path or a function.
            return _guard(name, lambda data, ctx: _format(template(data, ctx), *(a(data, ctx) for a in rest), escapes=False))
        fn = _FUNCTIONS[name]
        return _guard(name, lambda data, ctx: fn(*(a(data, ctx) for a in args)))

    def raw_string(self) -> str:
        start = self.pos = self.pos + 1
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "\\":
                self.pos += 2
            elif c == "'":
                self.pos += 1
                return self.text[start : self.pos - 1]
            else:
                self.pos += 1
        raise self.error("unterminated string")

    def argument(self) -> Evaluator:
        text = self.text
        if text.startswith("'", self.pos):
            value = re.sub(r"\\(.)", r"\1", self.raw_string())
            return lambda data, ctx: value
        if text.startswith("$", self.pos):
            start, depth, quote = self.pos, 0, ""
            while self.pos < len(text):
                c = text[self.pos]
                if quote:
                    quote = "" if c == quote else quote
                elif c in "'\"" and depth:
                    quote = c
                elif c == "[":
                    depth += 1
                elif c == "]":
                    depth -= 1
                elif c in ",)" and not depth:
                    break
                self.pos += 1
            return path_evaluator(text[start : self.pos].strip())
        if text.startswith("States.", self.pos):
            return self.call()
        m = _LITERAL.match(text, self.pos)
        if not m:
            raise self.error("expected a string, number, boolean, null, path or function")
        self.pos = m.end()
        value = json.loads(m.group())
        return lambda data, ctx: value


def _guard(name: str, fn: Evaluator) -> Evaluator:
    def run(data: Any, ctx: dict[str, Any] | None) -> Any:
        try:
            return fn(data, ctx)
        except (StatesError, PathNotFound):
            raise
        except Exception as exc:  # any failure inside a function is States.IntrinsicFailure
            raise StatesError(INTRINSIC_FAILURE, f"{name}: {exc}") from exc

    return run


def path_evaluator(text: str) -> Evaluator:
    """Evaluator for a ``$``/``$$`` path."""
    path = compile_path(text)
    if path.context:
        return lambda data, ctx: path.resolve(ctx)
    return lambda data, ctx: path.resolve(data)


def compile_expression(text: str) -> Evaluator:
    """Evaluator for the value of a ``"key.$"`` field: a path or an intrinsic function call."""
    if not isinstance(text, str):
        raise DefinitionError(f"A '.$' field needs a path or intrinsic function string, got {text!r}")
    if text.startswith("$"):
        return path_evaluator(text)
    parser = _Parser(text)
    fn = parser.call()
    parser.skip_space()
    if parser.pos != len(text):
        raise parser.error("trailing characters")
    return fn


def compile_template(template: Any) -> Evaluator:
    """Evaluator for a payload template (Parameters, ItemSelector, ResultSelector): builds a fresh value."""
    if isinstance(template, dict):
        entries = [
            (key[:-2], compile_expression(value)) if key.endswith(".$") else (key, compile_template(value))
            for key, value in template.items()
        ]
        return lambda data, ctx: {key: fn(data, ctx) for key, fn in entries}
    if isinstance(template, list):
        items = [compile_template(value) for value in template]
        return lambda data, ctx: [fn(data, ctx) for fn in items]
    return lambda data, ctx: template
