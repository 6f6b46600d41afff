"""The detached statistics objectives may ask for beyond CE: sample segments, and row statistics of the logits.

A row statistic is a function of one position's logits row alone, so the unfused path applies it to the [N, V]
rows of the valid targets and the fused head to each [chunk, V] block of logits as it makes them, with the same
function. One marked `chunked=False` cannot be computed chunk by chunk: objectives that need it run unfused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dftune.losses.contract import ENTROPY


@dataclass(frozen=True)
class RowStatistic:
    """A per-position statistic of the logits: ``of_logits(rows [n, V] float) -> [n]`` (called without grad)."""

    of_logits: Callable[[Tensor], Tensor]
    chunked: bool = True
    """The fused head may compute it from each chunk of logits (true for any function of a row alone)."""


def entropy_of_logits(rows: Tensor) -> Tensor:
    """H = -sum_v p_v log p_v of softmax(rows), per row; equals ``torch.special.entr(rows.softmax(-1)).sum(-1)``
    and stays finite where p_v underflows to 0."""
    log_p = torch.log_softmax(rows, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


ROW_STATISTICS: dict[str, RowStatistic] = {
    ENTROPY: RowStatistic(entropy_of_logits),
}


def row_statistics(rows: Tensor, names: list[str]) -> dict[str, Tensor]:
    """The named row statistics of logits rows [n, V], detached."""
    with torch.no_grad():
        return {name: ROW_STATISTICS[name].of_logits(rows) for name in names}


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
