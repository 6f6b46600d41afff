"""Answer extractors: the part of a reply that is compared with the reference, chosen by name."""

from __future__ import annotations

import re
from collections.abc import Callable

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def exact(text: str) -> str:
    """The whole reply, stripped of surrounding white space."""
    return text.strip()


def last_number(text: str) -> str:
    """The last number in the text, without thousands separators or a trailing '.0' ("1,200.0" -> "1200")."""
    numbers = _NUMBER.findall(text)
    if not numbers:
        return ""
    value = numbers[-1].replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def boxed(text: str) -> str:
    r"""The content of the last \boxed{...}, braces balanced ("" when there is none)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return ""
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return ""


EXTRACTORS: dict[str, Callable[[str], str]] = {"exact": exact, "last_number": last_number, "boxed": boxed}
