"""Training objectives: every one is cross-entropy times a detached per-token coefficient, declared once.

Module order: diffusion > fused > chunks, registry > objectives.* > unfused > statistics > contract > core.
"""

from dftune.losses.chunks import LogitTransform
from dftune.losses.contract import (
    CE,
    ENTROPY,
    REF_KL,
    REF_LOGP,
    REFERENCE_STATISTICS,
    REFRESH_STEPS,
    SEGMENTS,
    Objective,
    RowStatistic,
    Setting,
    Statistics,
    Weights,
)
from dftune.losses.core import IGNORE_INDEX, LossOutput, TokenStats, shift_labels, token_stats
from dftune.losses.diffusion import (
    diffusion_objective,
    fused_diffusion_objective,
    masked_diffusion_dft_loss,
    masked_diffusion_loss,
)
from dftune.losses.fused import default_chunk_size, fused_linear_loss, unfusable_statistics
from dftune.losses.objectives.asft import asft_loss
from dftune.losses.objectives.bft import bft_coefficients, bft_loss, lowest_group_confidence
from dftune.losses.objectives.chord import chord_coefficients, chord_loss
from dftune.losses.objectives.deft import deft_loss
from dftune.losses.objectives.dft import dft_coefficients, dft_loss
from dftune.losses.objectives.eaft import eaft_loss
from dftune.losses.objectives.iw_sft import iw_sft_loss
from dftune.losses.objectives.psft import psft_loss
from dftune.losses.objectives.sft import sft_coefficients, sft_loss
from dftune.losses.registry import (
    OBJECTIVES,
    compute_objective,
    config_keys,
    get_objective,
    precomputable_objectives,
    register,
)

__all__ = [
    "CE",
    "ENTROPY",
    "IGNORE_INDEX",
    "OBJECTIVES",
    "REF_KL",
    "REF_LOGP",
    "REFERENCE_STATISTICS",
    "REFRESH_STEPS",
    "SEGMENTS",
    "LogitTransform",
    "LossOutput",
    "Objective",
    "RowStatistic",
    "Setting",
    "Statistics",
    "TokenStats",
    "Weights",
    "asft_loss",
    "bft_coefficients",
    "bft_loss",
    "chord_coefficients",
    "chord_loss",
    "compute_objective",
    "config_keys",
    "dft_coefficients",
    "default_chunk_size",
    "deft_loss",
    "dft_loss",
    "diffusion_objective",
    "eaft_loss",
    "fused_diffusion_objective",
    "fused_linear_loss",
    "get_objective",
    "iw_sft_loss",
    "lowest_group_confidence",
    "masked_diffusion_dft_loss",
    "masked_diffusion_loss",
    "psft_loss",
    "precomputable_objectives",
    "register",
    "sft_coefficients",
    "sft_loss",
    "shift_labels",
    "token_stats",
    "unfusable_statistics",
]
