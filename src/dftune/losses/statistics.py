"""The detached statistics objectives may ask for beyond CE: sample segments, and row statistics of the logits.

A row statistic is a function of one position's logits row alone, so the unfused path applies it to the [N, V]
rows of the valid targets and the fused head to each [chunk, V] block of logits as it makes them, with the same
function. One marked `chunked=False` cannot be computed chunk by chunk: objectives that need it run unfused.
Shared ones live in `ROW_STATISTICS`; an objective may define its own (`Objective.statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.contract import CE, ENTROPY, REFERENCE_STATISTICS, SEGMENTS, Objective, RowStatistic
from dftune.losses.core import predictive_entropy


def entropy_of_logits(rows: Tensor, **_settings: Any) -> Tensor:
    """The predictive entropy of each row [n] (`core.predictive_entropy`), as a row statistic."""
    return predictive_entropy(rows)


ROW_STATISTICS: dict[str, RowStatistic] = {
    ENTROPY: RowStatistic(entropy_of_logits),
}


def row_statistics_of(objective: Objective) -> dict[str, RowStatistic]:
    """The row statistics `objective` needs, by name (its own first, then the shared ones), in a fixed order."""
    known = {**ROW_STATISTICS, **objective.statistics}
    unknown = sorted(objective.needs - {CE, SEGMENTS} - REFERENCE_STATISTICS - set(known))
    if unknown:
        raise DftuneError(f"objective {objective.name} needs statistics no path computes: {unknown}")
    return {name: known[name] for name in sorted(objective.needs & set(known))}


def row_statistics(rows: Tensor, wanted: Mapping[str, RowStatistic], settings: Mapping[str, Any]) -> dict[str, Tensor]:
    """The `wanted` row statistics of logits rows [n, V] (float32 or wider), detached."""
    with torch.no_grad():
        return {name: statistic.of_logits(rows, **settings) for name, statistic in wanted.items()}


def sample_segments(index: Tensor, labels: Tensor, sample_ids: Tensor | None) -> tuple[Tensor, int]:
    """Which sample (0..S-1) each valid target belongs to, and S, for causal (shifted) targets.

    `index` [N] holds each target's flat position b * T + t; the target at t is the label at t + 1, so it belongs
    to the sample of label position t + 1. Without `sample_ids` each row is one sample.
    """
    num_positions = labels.shape[1]
    if sample_ids is None:
        return index // num_positions, labels.shape[0]
    distinct, dense = torch.unique(sample_ids, return_inverse=True)  # dense [B, T] in 0..S-1
    target_sample = F.pad(dense[:, 1:], (0, 1), value=0)  # the last position never has a target
    return target_sample.flatten().index_select(0, index), distinct.numel()
