"""What the commands share: argument types that reject nonsense numbers (output paths: `dftune.outputs`), and the
error for "nothing to work on" (exit 1, as `data check` exits for invalid records)."""

from __future__ import annotations

import argparse

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
