"""CHORD's token weight (Zhang et al. 2025, "On-Policy RL Meets Off-Policy Experts: Harmonizing SFT and RL via
Dynamic Weighting", arXiv 2508.11408, CHORD-phi, its token-wise weighting of the expert SFT loss).

Each target's cross-entropy is weighted by ``phi = sg(p * (1 - p))``, a parabola in the target probability p that
peaks at p = 1/2 and vanishes at both ends: tokens the model already predicts (p near 1) stop pulling, as in DFT,
and so do tokens it finds very improbable (p near 0), which CHORD's authors read as off-policy expert tokens that
would disrupt what the model knows. Here it is the SFT objective alone (no RL term, no global mu), normalised by
the target tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.losses.contract import Objective, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.unfused import objective_loss


def chord_coefficients(ce: Tensor, num_items: Count) -> Tensor:
    """c_i = sg(p_i * (1 - p_i)) / N with p_i = exp(-CE_i); ``-expm1(-ce)`` is 1 - p without cancellation."""
    return torch.exp(-ce) * -torch.expm1(-ce) / num_items


def weigh(stats: Statistics, count: Count) -> Weights:
    return Weights(chord_coefficients(stats.ce, count))


OBJECTIVE = Objective(
    name="chord",
    formula="CE_i * sg(p_i * (1 - p_i)) (CHORD-phi)",
    weigh=weigh, normalise_by="tokens", stages=frozenset({"sft", "dllm"}))


def chord_loss(logits: Tensor, labels: Tensor, *, num_items_in_batch: Count | None = None) -> LossOutput:
    """CHORD-phi. Equals, with ``ce`` the per-target cross-entropy and N as in `sft_loss`::

        p = exp(-ce).detach()
        loss = sum(ce * p * (1 - p)) / N
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch)
