"""Objective metrics averaged right: over every micro-batch and process of a logging window, not the last one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch
from accelerate import Accelerator

from dftune.losses import LossOutput
from dftune.losses.core import shifted as shifted_column


class MetricWindow:
    """Running weighted sums of LossOutput metrics; per-token metrics weigh by tokens, per-sample ones by samples."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._weights: dict[str, float] = defaultdict(float)
        self._optional: set[str] = set()

    def add(self, out: LossOutput, *, loss_weight: int | None = None) -> None:
        """Add one call's metrics; with `loss_weight`, also its loss (weighted by the objective's own unit)."""
        for name, value in out.metrics.items():
            weight = out.num_samples if name in out.sample_metrics else out.num_tokens
            self._sums[name] += float(value) * weight
            self._weights[name] += weight
        if loss_weight is not None:
            self._sums["loss"] += float(out.loss.detach()) * loss_weight
            self._weights["loss"] += loss_weight

    def add_sums(self, sums: Iterable[tuple[str, float, float]]) -> None:
        """Add (name, sum, count) pairs: the metric `name` is then sum / count over the window and processes. Give
        every name on every call, with count 0 where there is none: all processes must reduce the same names."""
        for name, total, count in sums:
            self._optional.add(name)
            self._sums[name] += total
            self._weights[name] += count

    def __bool__(self) -> bool:
        return bool(self._weights)

    def pop_means(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over the window and all processes, then an empty window. Every process must call this. A name from
        `add_sums` whose count is 0 over every process is left out (a source with no target in the window)."""
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
        optional, self._optional = self._optional, set()
        return {n: (s / w if w else 0.0) for n, s, w in zip(names, *totals.tolist()) if w or n not in optional}


def source_sums(out: LossOutput, source_ids: torch.Tensor, names: Sequence[str],
                shifted: bool = False) -> list[tuple[str, float, float]]:
    """(ce/<name>, sum of CE, number of targets) per source of one call, from `target_ce` / `target_index` [N] and
    `source_ids` [B, T] (the sample's source at each label position, -1 on padding). A causal target at t predicts
    the label at t + 1, so it takes the source of position t + 1. Every name is listed (count 0 where none). One host
    sync for all sources. `shifted`: `source_ids` are already moved to the targets (a sequence shard)."""
    if out.target_ce is None or out.target_index is None or not names:
        return []
    at_target = source_ids if shifted else shifted_column(source_ids, -1)
    source = at_target.flatten().to(out.target_index.device).index_select(0, out.target_index)  # [N]
    valid = (source >= 0) & torch.isfinite(out.target_ce)  # a non-finite step's CE stays out, like its metrics
    ce_sums = torch.zeros(len(names), dtype=torch.float64, device=source.device)
    counts = torch.zeros(len(names), dtype=torch.float64, device=source.device)
    ce_sums.index_add_(0, source[valid], out.target_ce.detach()[valid].to(torch.float64))
    counts.index_add_(0, source[valid], torch.ones_like(source[valid], dtype=torch.float64))
    return [(f"ce/{name}", s, c) for name, s, c in zip(names, ce_sums.tolist(), counts.tolist())]
