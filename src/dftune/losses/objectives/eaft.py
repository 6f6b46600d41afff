"""Entropy-Adaptive Fine-Tuning (Diao et al. 2026, arXiv 2601.02151), as LLaMA-Factory computes it (`use_eaft_loss`).

Each target's cross-entropy is weighted by the model's own uncertainty at that position: the entropy of the
softmax over its top-k logits, normalised by 3.0 (LLaMA-Factory's constant, about ln 20), to the power alpha.
Confident positions (low entropy) where the model is wrong, the "confident conflicts" that SFT's gradient
overwrites hardest, are weighted down, which the paper reports mitigates forgetting.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dftune.losses.contract import CE, Objective, RowStatistic, Setting, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.statistics import entropy_of_logits
from dftune.losses.unfused import objective_loss

TOP_K_ENTROPY = "top_k_entropy"
ENTROPY_SCALE = 3.0
"""LLaMA-Factory's normaliser of the top-k entropy (about ln 20, the largest entropy of 20 logits)."""

ALPHA = Setting("eaft_alpha", "alpha", float, 1.0, low=0.0, selects=True,
                help="EAFT: token weight (H_top-k / 3) ** alpha (LLaMA-Factory's eaft_alpha).")
TOP_K = Setting("eaft_top_k", "top_k", int, 20, low=1, help="EAFT: logits whose softmax entropy weighs a token.")


def top_k_entropy(rows: Tensor, *, top_k: int, **_settings: Any) -> Tensor:
    """H_i = -sum_j q_j log q_j with q = softmax(the top_k largest logits of row i), per row [n].

    Equals ``q = torch.topk(rows, k).values.softmax(-1); -(q * q.log()).sum(-1)``, with k capped at V (computed
    as `entropy_of_logits` does, precise also for nearly one-hot rows).
    """
    return entropy_of_logits(torch.topk(rows, k=min(top_k, rows.shape[-1]), dim=-1).values)  # [n, k] -> [n]


def eaft_coefficients(entropy: Tensor, num_items: Count, *, alpha: float) -> Tensor:
    """c_i = sg((H_i / 3.0) ** alpha) / N."""
    return (entropy / ENTROPY_SCALE) ** alpha / num_items


def weigh(stats: Statistics, count: Count, *, alpha: float, top_k: int) -> Weights:
    return Weights(eaft_coefficients(stats.rows[TOP_K_ENTROPY], count, alpha=alpha))


OBJECTIVE = Objective(
    name="eaft",
    formula="CE_i * sg(H^top-k_i / 3)^alpha, H the entropy of the top-k logits (LLaMA-Factory's use_eaft_loss)",
    weigh=weigh, normalise_by="tokens", settings=(ALPHA, TOP_K),
    needs=frozenset({CE, TOP_K_ENTROPY}), statistics={TOP_K_ENTROPY: RowStatistic(top_k_entropy)},
    alias="use_eaft_loss",
)


def eaft_loss(
    logits: Tensor, labels: Tensor, *, alpha: float = 1.0, top_k: int = 20, num_items_in_batch: Count | None = None
) -> LossOutput:
    """EAFT. Equals, with ``ce`` the per-target cross-entropy of `sft_loss` and N as there::

        q = torch.topk(logits_i.detach().float(), top_k).values.softmax(-1)    # at each target position i
        h = -(q * q.log()).sum(-1)
        loss = sum(ce * (h / 3.0) ** alpha) / N
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch, alpha=alpha, top_k=top_k)
