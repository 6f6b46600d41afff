"""The one place tests time out a subprocess: every limit is scaled by `DFTUNE_TEST_TIMEOUT_FACTOR` (default 1), so
a slow or loaded machine (CI, 2 shared cores) raises it instead of failing, and a timeout names the step that hung.

    DFTUNE_TEST_TIMEOUT_FACTOR=3 make test    # every subprocess limit x 3
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

FACTOR_ENV = "DFTUNE_TEST_TIMEOUT_FACTOR"


def timeout_factor() -> float:
    """`DFTUNE_TEST_TIMEOUT_FACTOR` as a positive number; 1 when unset. A bad value fails the test, saying so."""
    raw = os.environ.get(FACTOR_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        factor = float("nan")
    if not factor > 0 or factor == float("inf"):
        pytest.fail(f"{FACTOR_ENV}={raw!r}: give a positive number, e.g. {FACTOR_ENV}=3 on a slow machine")
    return factor


def scaled(seconds: float) -> float:
    """A time limit of `seconds` on this machine: `seconds` times the factor."""
    return seconds * timeout_factor()


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def _hung(step: str, argv: Sequence[str] | str, seconds: float, *outputs: str | bytes | None) -> None:
    tail = "".join(_text(output) for output in outputs)
    pytest.fail(f"{step}: hung, no exit within {scaled(seconds):.0f} s ({seconds:g} s x {FACTOR_ENV}="
                f"{timeout_factor():g}; raise it on a slow machine)\ncommand: {argv!r}\nlast output:\n{tail[-3000:]}",
                pytrace=False)


def run(argv: Sequence[str] | str, *, step: str, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run(argv, **kwargs)` with `timeout` scaled; on a timeout the test fails naming `step`."""
    try:
        return subprocess.run(argv, timeout=scaled(timeout), **kwargs)
    except subprocess.TimeoutExpired as expired:
        _hung(step, argv, timeout, expired.stdout, expired.stderr)
        raise  # unreachable: pytest.fail raised


def communicate(proc: subprocess.Popen, *, step: str, timeout: float) -> tuple[Any, Any]:
    """`proc.communicate()` with `timeout` scaled; on a timeout `proc` is killed and the test fails naming `step`."""
    try:
        return proc.communicate(timeout=scaled(timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        _hung(step, proc.args, timeout, out, err)
        raise  # unreachable: pytest.fail raised
