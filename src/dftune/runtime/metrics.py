"""Objective metrics averaged right: over every micro-batch and process of a logging window, not the last one."""

from __future__ import annotations

from collections import defaultdict

import torch
from accelerate import Accelerator

from dftune.losses import LossOutput


class MetricWindow:
    """Running weighted sums of LossOutput metrics; per-token metrics weigh by tokens, per-sample ones by samples."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._weights: dict[str, float] = defaultdict(float)

    def add(self, out: LossOutput, *, loss_weight: int | None = None) -> None:
        """Add one call's metrics; with `loss_weight`, also its loss (weighted by the objective's own unit)."""
        for name, value in out.metrics.items():
            weight = out.num_samples if name in out.sample_metrics else out.num_tokens
            self._sums[name] += float(value) * weight
            self._weights[name] += weight
        if loss_weight is not None:
            self._sums["loss"] += float(out.loss.detach()) * loss_weight
            self._weights["loss"] += loss_weight

    def __bool__(self) -> bool:
        return bool(self._weights)

    def pop_means(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over the window and all processes, then an empty window. Every process must call this."""
        names = sorted(self._weights)
        totals = torch.tensor(
            [[self._sums[n] for n in names], [self._weights[n] for n in names]],
            dtype=torch.float64,
            device=accelerator.device,
        )
        if accelerator.num_processes > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        self._sums.clear()
        self._weights.clear()
        return {n: (s / w if w else 0.0) for n, s, w in zip(names, *totals.tolist())}
