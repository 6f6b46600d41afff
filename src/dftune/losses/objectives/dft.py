"""Dynamic Fine-Tuning (Wu et al. 2025, "On the Generalization of SFT", Eq. 9), with an SFT mix."""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.losses.contract import Objective, Setting, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.unfused import objective_loss

ALPHA = Setting(
    "dft_alpha", "alpha", float, 1.0, low=0.0, high=1.0, selects=True,
    help="DFT token weight alpha*p + 1 - alpha (1: the paper's DFT, 0: SFT).",
)


def dft_coefficients(ce: Tensor, num_items: Count, *, alpha: float) -> Tensor:
    """c_i = (alpha * sg(p_i) + 1 - alpha) / N with p_i = exp(-CE_i), the target probability."""
    return (alpha * torch.exp(-ce) + (1.0 - alpha)) / num_items


def weigh(stats: Statistics, count: Count, *, alpha: float) -> Weights:
    return Weights(dft_coefficients(stats.ce, count, alpha=alpha), {"dft_alpha": float(alpha)})


OBJECTIVE = Objective(
    name="dft", weigh=weigh, normalise_by="tokens", settings=(ALPHA,), stages=frozenset({"sft", "dllm"}),
    alias="use_dft_loss",
)


def dft_loss(
    logits: Tensor, labels: Tensor, *, alpha: float = 1.0, num_items_in_batch: Count | None = None
) -> LossOutput:
    """DFT: every target's cross-entropy times its own detached probability, mixed with SFT.

    Equals ``sum(ce * (alpha * exp(-ce).detach() + 1 - alpha)) / N`` with ``ce`` the per-target
    cross-entropy and N as in `sft_loss`. alpha=1 is the paper's DFT (CE times the stop-gradient target
    probability); alpha=0 is exactly SFT.
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch, alpha=alpha)
