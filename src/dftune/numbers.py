"""Where a number may lie: the one rule for every numeric key (config keys, objective settings).

A value is fine when it is finite and within its `Range`. NaN and infinity are never fine: `learning_rate: inf`
applied one step and saved a model of infinities, `weight_decay: nan` one of NaNs, `max_grad_norm: nan` turned
clipping off without a word. The config layer declares each key's range (`dftune.config.number_keys`), the
objectives their settings' (`losses.contract.Setting`); both ask `Range.problem`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any


@dataclass(frozen=True)
class Range:
    """[low, high], either end optional, either end open (`low_open`: above low, not at it)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The range as a phrase after "must be": `0 or more`, `above 0`, `in [0, 1]`, `in (0, 1)`, ``."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"above {_number(self.low)}" if self.low_open else f"{_number(self.low)} or more"
        if self.high is not None:
            return f"below {_number(self.high)}" if self.high_open else f"{_number(self.high)} or less"
        return ""

    def contains(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def problem(self, value: Any) -> str | None:
        """Why `value` is not fine (a phrase after "must be"), or None. Non-numbers are the parser's to refuse."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        phrase = self.describe()
        if not math.isfinite(value):
            return f"a finite number{', ' + phrase if phrase else ''}"
        return None if self.contains(value) else phrase


def _number(value: float) -> str:
    """`2`, `0.5`, `4294967295`: whole numbers in full, others as Python's shortest form."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


FINITE = Range()
"""No bounds, but finite: the range of a number key that declares none."""


def out_of_range(key: str, value: Any, ranges: Mapping[str, Range], written: Any = None) -> ValueError | None:
    """The error for `key` when `value` is not fine (showing `written`, the value as given, when known), else None."""
    phrase = ranges.get(key, FINITE).problem(value)
    return ValueError(f"{key} must be {phrase}, got {value if written is None else written}") if phrase else None
