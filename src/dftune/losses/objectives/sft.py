"""Supervised fine-tuning: every target token weighs the same."""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.losses.contract import Objective, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.unfused import objective_loss


def sft_coefficients(ce: Tensor, num_items: Count) -> Tensor:
    """c_i = 1 / N."""
    return torch.ones_like(ce) / num_items


def weigh(stats: Statistics, count: Count) -> Weights:
    return Weights(sft_coefficients(stats.ce, count))


OBJECTIVE = Objective(
    name="sft",
    formula="CE_i",
    weigh=weigh, normalise_by="tokens", stages=frozenset({"sft", "dllm"}))


def sft_loss(logits: Tensor, labels: Tensor, *, num_items_in_batch: Count | None = None) -> LossOutput:
    """Supervised fine-tuning: token cross-entropy summed over the targets and divided by N.

    Equals ``F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
    reduction="sum") / N`` where N is `num_items_in_batch` (the global number of target tokens across
    accumulation steps and processes, which makes the summed micro-batch gradients exact) or, when None,
    the number of valid targets in this batch.
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch)
