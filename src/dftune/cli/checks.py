"""What the commands share: argument types that reject nonsense numbers, output paths checked before any work,
and the error for "nothing to work on" (exit 1, as `data check` exits for invalid records)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dftune.errors import DftuneError


class NoValidRecords(DftuneError):
    """No record to check or evaluate: exit 1, the code of `data check` finding invalid records."""

    exit_code = 1


def positive_int(text: str) -> int:
    """argparse type: an integer of 1 or more (argparse prints the error and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float of 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def output_file(path: str, flag: str, example: str) -> Path:
    """`path` as a file to write: not an existing folder, its parent not a file; DftuneError naming `flag`."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise DftuneError(f"{flag} {path} is a folder; give a file path, e.g. {target / example}")
    blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DftuneError(f"{flag} {path}: {blocker} is a file, not a folder; choose another path")
    return target
