"""The masked-diffusion sampler (LLaDA's reverse process): `dftune generate` and scripts decode diffusion LMs with
it; `elbo` estimates an answer's log-likelihood (lm-eval's loglikelihood requests). Training them is stage dllm
(`dftune.stages.dllm`); loading them is `dftune.models.loading`."""

from dftune.diffusion.likelihood import elbo
from dftune.diffusion.sampler import (
    Decoded,
    decode,
    decode_replies,
    sample,
    sample_replies,
    transfer_schedule,
    truncate_at_eos,
)

__all__ = [
    "Decoded", "decode", "elbo", "decode_replies", "sample", "sample_replies", "transfer_schedule", "truncate_at_eos",
]
