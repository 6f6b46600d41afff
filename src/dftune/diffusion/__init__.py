"""Masked-diffusion LMs (LLaDA-style): forward noising, the stage-dllm trainer, and the sampler.

Module order: trainer > collator, objective, model; sampler (stands alone). The package sits between
`train.run` (which dispatches stage dllm here) and `train.trainer`, `losses`, `config`.
"""

from dftune.diffusion.collator import DiffusionCollator
from dftune.diffusion.model import is_diffusion_config, load_diffusion_model, resolve_mask_token_id
from dftune.losses.diffusion import diffusion_objective, masked_diffusion_dft_loss
from dftune.diffusion.sampler import sample, sample_replies, transfer_schedule, truncate_at_eos

__all__ = [
    "DiffusionCollator",
    "diffusion_objective",
    "is_diffusion_config",
    "load_diffusion_model",
    "masked_diffusion_dft_loss",
    "resolve_mask_token_id",
    "sample",
    "sample_replies",
    "transfer_schedule",
    "truncate_at_eos",
]
