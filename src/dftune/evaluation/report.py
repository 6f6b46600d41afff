"""Accuracy over held-out records with its 95% interval, and per-record results a user can read."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dftune.outputs import write_text


@dataclass(frozen=True)
class RecordResult:
    index: int
    prompt: str
    reference: str
    reply: str
    extracted: str
    correct: bool


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sensible at 0%, 100% and small n, unlike the normal one."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class EvalReport:
    results: Sequence[RecordResult]

    @property
    def accuracy(self) -> float:
        return sum(r.correct for r in self.results) / max(len(self.results), 1)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(sum(r.correct for r in self.results), len(self.results))

    def summary(self) -> str:
        low, high = self.interval
        correct = sum(r.correct for r in self.results)
        return f"accuracy {self.accuracy:.1%} ({correct}/{len(self.results)}), 95% CI [{low:.1%}, {high:.1%}]"

    def write_jsonl(self, path: str | Path) -> None:
        write_text(path, "".join(json.dumps(asdict(r)) + "\n" for r in self.results))
