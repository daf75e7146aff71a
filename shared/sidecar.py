"""Sidecar bytes -> JSON, in one place, so every reader agrees on what a sidecar says.

Editors on Windows save UTF-8 with a byte-order mark (EF BB BF); some save UTF-16 with one. RFC 8259
lets a parser ignore a BOM, and a reader that does not (``json.loads(path.read_text())``) fails on the
very first character, so the runtime and the validate stage could disagree on a study's id.
"""

from __future__ import annotations

import json
from typing import Any


class SidecarUnreadable(ValueError):
    """The bytes are not JSON in any Unicode encoding; `where` says where the parser stopped, if it knows."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(f"{reason}{where}")
        self.reason, self.where = reason, where


def parse_sidecar_bytes(raw: bytes) -> Any:
    """The JSON document in `raw`: UTF-8 with or without a BOM, or UTF-16/32 (with a BOM or detectably)."""
    try:
        # detect_encoding is what json.loads(bytes) uses: "utf-8-sig" drops a UTF-8 BOM, "utf-16"/"utf-32" read theirs.
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as e:
        raise SidecarUnreadable("sidecar is not valid JSON", f" (not valid Unicode at byte {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SidecarUnreadable("sidecar is not valid JSON", f" at line {e.lineno}, column {e.colno}") from e
    except RecursionError as e:  # json gives up on deep nesting this way, not with a JSONDecodeError
        raise SidecarUnreadable("sidecar is not valid JSON", ": nested too deeply to be a sidecar") from e
