"""Lone UTF-16 surrogates in JSON records: `"\\ud800"` without its pair is valid JSON, but it decodes to a str that
no UTF-8 writer accepts (the tokenizer, Arrow, the cache, the report), so it used to end `data check`, `train` (even
with `on_bad_record: skip`) and `eval` in a UnicodeEncodeError. The readers refuse such a record by its location.
"""

from __future__ import annotations

import json
import re
from typing import Any

_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""A JSON escape of a UTF-16 surrogate: only text holding one can decode to a lone surrogate."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def may_hold_surrogates(raw: bytes) -> bool:
    """`raw` (JSON text) escapes a surrogate somewhere, so its records are worth `lone_surrogate` (a valid pair
    matches too: it decodes to one character, and `lone_surrogate` finds nothing)."""
    return _ESCAPE.search(raw) is not None


def lone_surrogate(value: Any) -> str | None:
    """What is wrong, with where and the fix, when a string of the decoded JSON `value` (keys included) holds a
    lone surrogate; else None."""
    found = _first(value)
    if found is None:
        return None
    return (f"a lone surrogate, {found}: half of a UTF-16 pair is not a character; write the character itself, or "
            "both halves of its pair")


def _first(value: Any) -> str | None:
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        if match is None:
            return None
        quote = json.dumps(value[:40] + ("..." if len(value) > 40 else ""))  # JSON escapes: shows \\ud800
        return f"\\u{ord(match.group()):04x} at character {match.start()} of {quote}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = (_first(key) if isinstance(key, str) else None) or _first(item)
        if found is not None:
            return found
    return None
