"""Help text of `dftune train --help`, built in one place: dftune's own text for keys whose meaning it extends,
`%` escaped, each default shown once."""

from __future__ import annotations

import argparse
import re
from enum import Enum
from typing import Any

HELP = {
    "resume_from_checkpoint": "auto: continue from the newest complete checkpoint in output_dir, else start fresh "
    "(one command line for the first start and every restart); true: the same, but no checkpoint is an error; a "
    "checkpoint-N folder: that one; false: a fresh run.",
}
"""Help of TrainingArguments keys whose meaning dftune extends (transformers' own text would not say `auto`)."""

_STATES_DEFAULT = re.compile(r"\(default\b|\bdefault:|\bdefaults to\b", re.IGNORECASE)


def help_text(text: str, default: Any) -> str:
    """One key's help for argparse, built here only: `%` is text, never a format (so "5% of" cannot crash
    `--help`), and the default appears once: appended unless the text already says what it is."""
    text = text.replace("%", "%%")
    if _STATES_DEFAULT.search(text) or default is argparse.SUPPRESS:
        return text
    shown = str(default.value if isinstance(default, Enum) else default).replace("%", "%%")
    return f"{text} (default: {shown})"
