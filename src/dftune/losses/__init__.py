"""Training objectives: every one is cross-entropy times a detached per-token coefficient.

Module order: fused > objectives > core; diffusion > core.
"""

from dftune.losses.core import IGNORE_INDEX, SAMPLE_METRICS, LossOutput, TokenStats, shift_labels, token_stats
from dftune.losses.diffusion import diffusion_objective, masked_diffusion_dft_loss, masked_diffusion_loss
from dftune.losses.fused import fused_linear_loss
from dftune.losses.objectives import (
    OBJECTIVES,
    Objective,
    bft_coefficients,
    bft_loss,
    compute_objective,
    dft_coefficients,
    dft_loss,
    lowest_group_confidence,
    sft_coefficients,
    sft_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "SAMPLE_METRICS",
    "LossOutput",
    "Objective",
    "TokenStats",
    "bft_coefficients",
    "bft_loss",
    "compute_objective",
    "diffusion_objective",
    "dft_coefficients",
    "dft_loss",
    "fused_linear_loss",
    "lowest_group_confidence",
    "masked_diffusion_dft_loss",
    "masked_diffusion_loss",
    "sft_coefficients",
    "sft_loss",
    "shift_labels",
    "token_stats",
]
