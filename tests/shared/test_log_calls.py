"""Log lines carry their values in fields: every log call in the product code has a constant message, and its values
go in `extra={...}` (stdlib loggers) or keyword arguments (the Powertools logger), so a JSON line can be filtered by
study_id, peer or error_type without parsing its text."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}


def product_files() -> list[Path]:
    return [p for folder in ("shared", "services", "radstream") for p in sorted((ROOT / folder).rglob("*.py")) if "tests" not in p.parts]


def is_logger(node: ast.expr) -> bool:
    """`log`, `logger`, `_log`, `self.log`, `observability.logger`, or `logging.getLogger(...)` itself."""
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.lstrip("_").lower() in ("log", "logger", "logging") or name.lower().endswith("_log")


def formatted_log_calls(source: str) -> list[tuple[int, str]]:
    """The log calls whose message is not a constant string, or that pass %-arguments for it: (line, why)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS):
            continue
        if not is_logger(node.func.value):
            continue
        args = node.args[1:] if node.func.attr == "log" else node.args  # log(level, message, ...)
        if not args:
            continue
        message = args[0]
        if not (isinstance(message, ast.Constant) and isinstance(message.value, str)):
            found.append((node.lineno, "the message is built at run time (f-string, %, format or a variable)"))
        elif len(args) > 1:
            found.append((node.lineno, "values are %-formatted into the message"))
    return found


@pytest.mark.parametrize(
    "source",
    [
        'log.info("stored study_id=%s", study_id)',
        'log.info(f"stored {study_id}")',
        'logger.warning("stored %s" % study_id)',
        '_log.error("stored {}".format(study_id))',
        'logging.getLogger("radstream").warning("failed: %s", e)',
        "self.log.info(message)",
        'log.log(logging.INFO, "stored %s", study_id)',
    ],
)
def test_the_check_finds_values_formatted_into_a_message(source: str):
    assert formatted_log_calls(source), source


@pytest.mark.parametrize(
    "source",
    [
        'log.info("instance stored", extra={"study_id": study_id, "bytes": size})',
        'logger.warning("stage failed", error_type=name, retryable=True)',
        'log.log(logging.INFO, "stored", extra={"study_id": study_id})',
        'print(f"radstream: {e}", file=sys.stderr)',
        'parser.error(f"unrecognized arguments: {extra}")',
    ],
)
def test_the_check_passes_constant_messages_and_other_calls(source: str):
    assert not formatted_log_calls(source), source


def test_no_log_call_formats_values_into_its_message():
    offending = [
        f"{path.relative_to(ROOT)}:{line}: {why}" for path in product_files() for line, why in formatted_log_calls(path.read_text())
    ]
    assert not offending, "\n".join(offending)
