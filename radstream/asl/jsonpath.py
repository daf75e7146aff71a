"""JSONPath subset used by Amazon States Language paths and reference paths.

AWS: "Paths follow JsonPath syntax" (Jayway JsonPath). Names, indices, wildcards, slices and ``..`` are
evaluated here; a filter step ``[?(...)]`` is evaluated by jsonpath-ng's extended parser, whose filter
language (``@``-relative paths, ``== != < <= > >=``, ``&&``, ``!``, string/number/boolean/null literals,
bare ``@.field`` for existence) matches Jayway's for those operators.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from jsonpath_ng.ext import parse as _parse_jsonpath_ng

from .errors import DefinitionError

_NAME = re.compile(r"\.([^.\[\]]+)")
_BRACKET_NAME = re.compile(r"\[\s*(?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\")\s*\]")
_INDEX = re.compile(r"\[\s*(-?\d+)\s*\]")
_SLICE = re.compile(r"\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\]")
_WILD = re.compile(r"(?:\.\*|\[\s*\*\s*\])")
_RECURSE = re.compile(r"\.\.(?:([^.\[\]*]+)|\*)?")
_FILTER_OPEN = re.compile(r"\[\s*\?\s*\(")
_FILTER_CLOSE = re.compile(r"\s*\]")
_PARSE_LOCK = threading.Lock()  # PLY parser construction is not documented as thread-safe

_MISSING = object()


class PathNotFound(LookupError):
    """A definite path selected nothing."""


class Path:
    """A compiled path: ``$``-rooted (state input) or ``$$``-rooted (context object)."""

    __slots__ = ("text", "steps", "definite", "context")

    def __init__(self, text: str, steps: tuple[tuple[str, Any], ...], context: bool) -> None:
        self.text = text
        self.steps = steps
        self.context = context
        self.definite = all(kind in ("key", "index") for kind, _ in steps)

    def __repr__(self) -> str:
        return f"Path({self.text!r})"

    def resolve(self, data: Any) -> Any:
        """Definite paths return the value (or raise PathNotFound); others return the list of matches."""
        if not self.definite:
            return _find(self.steps, 0, data, [])
        for kind, arg in self.steps:
            if kind == "key":
                if not isinstance(data, dict) or arg not in data:
                    raise PathNotFound(f"Invalid path '{self.text}': no results")
                data = data[arg]
            else:
                if not isinstance(data, list) or not -len(data) <= arg < len(data):
                    raise PathNotFound(f"Invalid path '{self.text}': no results")
                data = data[arg]
        return data

    def exists(self, data: Any) -> bool:
        """Whether the path selects anything (IsPresent)."""
        if not self.definite:
            return bool(_find(self.steps, 0, data, []))
        try:
            self.resolve(data)
        except PathNotFound:
            return False
        return True

    def assign(self, data: Any, value: Any) -> Any:
        """Return a copy of ``data`` with ``value`` placed at this reference path, creating missing objects."""
        if not self.steps:
            return value
        return _assign(self.steps, 0, data, value, self.text)


def _find(steps: tuple[tuple[str, Any], ...], i: int, node: Any, out: list[Any]) -> list[Any]:
    if i == len(steps):
        out.append(node)
        return out
    kind, arg = steps[i]
    if kind == "key":
        if isinstance(node, dict) and arg in node:
            _find(steps, i + 1, node[arg], out)
    elif kind == "index":
        if isinstance(node, list) and -len(node) <= arg < len(node):
            _find(steps, i + 1, node[arg], out)
    elif kind == "wild":
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            _find(steps, i + 1, child, out)
    elif kind == "slice":
        if isinstance(node, list):
            for child in node[arg[0] : arg[1]]:
                _find(steps, i + 1, child, out)
    elif kind == "filter":  # Jayway: "Filters are logical expressions used to filter arrays"
        if isinstance(node, list):
            for match in arg.find(node):
                _find(steps, i + 1, match.value, out)
    else:  # recurse: apply the remaining steps at every depth
        for child in _descendants(node):
            if arg is None:
                _find(steps, i + 1, child, out)
            elif isinstance(child, dict) and arg in child:
                _find(steps, i + 1, child[arg], out)
    return out


def _descendants(node: Any) -> list[Any]:
    out = [node]
    for item in out:
        if isinstance(item, dict):
            out.extend(item.values())
        elif isinstance(item, list):
            out.extend(item)
    return out


def _assign(steps: tuple[tuple[str, Any], ...], i: int, node: Any, value: Any, text: str) -> Any:
    kind, arg = steps[i]
    last = i == len(steps) - 1
    if kind == "key":
        if not isinstance(node, dict):
            raise PathNotFound(f"Unable to apply ResultPath '{text}': the target is not an object")
        copy = dict(node)
        copy[arg] = value if last else _assign(steps, i + 1, node.get(arg, {}), value, text)
        return copy
    if not isinstance(node, list) or not -len(node) <= arg < len(node):
        raise PathNotFound(f"Unable to apply ResultPath '{text}': index out of range")
    items = list(node)
    items[arg] = value if last else _assign(steps, i + 1, node[arg], value, text)
    return items


def _filter(text: str, start: int, pos: int) -> tuple[Any, int]:
    """Compile the filter ``[?(...)]`` opening at ``start`` (``pos`` at its ``(``); return it and the end of its ``]``."""
    depth, quote = 0, ""
    while pos < len(text):
        c = text[pos]
        if quote:
            if c == "\\":
                pos += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                close = _FILTER_CLOSE.match(text, pos + 1)
                if not close:
                    break
                source = text[start : close.end()]
                try:
                    with _PARSE_LOCK:
                        compiled = _parse_jsonpath_ng("$" + source)
                except Exception as exc:  # jsonpath-ng raises plain Exception subclasses for syntax errors
                    raise DefinitionError(f"Invalid path {text!r}: filter {source!r}: {exc}") from None
                return compiled, close.end()
        pos += 1
    raise DefinitionError(f"Invalid path {text!r}: unterminated filter at {text[start:]!r}")


@lru_cache(maxsize=4096)
def compile_path(text: str) -> Path:
    """Compile a JSONPath (``$``, ``$.a.b``, ``$['a']``, ``$.a[0]``, ``$.a[*].b``, ``$..a``, slices, filters)."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise DefinitionError(f"Invalid path {text!r}: must start with '$'")
    context = text.startswith("$$")
    pos = 2 if context else 1
    steps: list[tuple[str, Any]] = []
    while pos < len(text):
        if m := _FILTER_OPEN.match(text, pos):
            compiled, pos = _filter(text, pos, m.end() - 1)
            steps.append(("filter", compiled))
            continue
        if m := _RECURSE.match(text, pos):
            steps.append(("recurse", m.group(1)))
        elif m := _WILD.match(text, pos):
            steps.append(("wild", None))
        elif m := _NAME.match(text, pos):
            steps.append(("key", m.group(1)))
        elif m := _BRACKET_NAME.match(text, pos):
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            steps.append(("key", re.sub(r"\\(.)", r"\1", raw)))
        elif m := _INDEX.match(text, pos):
            steps.append(("index", int(m.group(1))))
        elif m := _SLICE.match(text, pos):
            start, stop = (int(g) if g else None for g in m.groups())
            steps.append(("slice", (start, stop)))
        else:
            raise DefinitionError(f"Invalid path {text!r}: unsupported syntax at {text[pos:]!r}")
        pos = m.end()
    return Path(text, tuple(steps), context)


def compile_reference_path(text: str) -> Path:
    """Compile a Reference Path: a definite path of names and indices, as ResultPath requires."""
    path = compile_path(text)
    if not path.definite or path.context:
        raise DefinitionError(f"Invalid reference path {text!r}: only '$', names and indices are allowed")
    return path
