"""The objectives of stage dllm: masked-diffusion SFT (LLaDA-style) and any other objective registered for it.

Stage dllm computes a registered objective's coefficients on the masked positions (no shift: logits[:, i]
predicts labels[:, i]), normalised by the answer tokens, and scales each sample's by 1 / t, its mask ratio.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.contract import Objective
from dftune.losses.core import Count, LossOutput
from dftune.losses.fused import fused_linear_loss
from dftune.losses.registry import OBJECTIVES, get_objective
from dftune.losses.unfused import objective_loss

STAGE = "dllm"


def elbo_weight(t: Tensor, row_weight: Tensor | None) -> Tensor:
    """Each sample's loss weight ([B], or [B, T] per position): `row_weight`, or 1 / t in float64 (the collator
    draws t in float32, and its reciprocal must not round at that precision)."""
    return 1.0 / t.double() if row_weight is None else row_weight


def check_stage(name: str) -> Objective:
    """The objective `name`, which must be registered for stage dllm."""
    objective = get_objective(name)
    if STAGE not in objective.stages:
        supported = sorted(n for n, o in OBJECTIVES.items() if STAGE in o.stages)
        raise DftuneError(f"stage {STAGE} has no loss {name!r}; use one of {supported}")
    return objective


def diffusion_objective(
    name: str, logits: Tensor, labels: Tensor, t: Tensor, *, num_answer_tokens: Count, shift: bool = False,
    row_weight: Tensor | None = None, **settings: Any,
) -> LossOutput:
    """Objective `name` as stage dllm computes it. Equals::

        ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(B, T)
        c = coefficients of `name` from ce.detach(), normalised by num_answer_tokens   # sft: 1 / num_answer_tokens
        loss = (c * ce / t[:, None])[labels != -100].sum()

    where `num_answer_tokens` counts every non-prompt position of the batch, masked or not (global across
    accumulation steps and processes, like `num_items_in_batch`). `shift`: a model turned from an autoregressive
    one (Dream-style) predicts the token at position i from position i - 1: targets are then labels[:, 1:] against
    logits[:, :-1], as for causal LMs. `row_weight` [B]: the noise schedule's ELBO weight of each sample in place
    of 1 / t (`stages.dllm.mask_ratio_and_weight`); t and `row_weight` may be [B, T], one per position (block
    diffusion gives each block its own t: `stages.dllm_blocks`).
    """
    objective = check_stage(name)
    return objective_loss(objective, logits, labels, count=num_answer_tokens, shift=shift,
                          row_scale=elbo_weight(t, row_weight),
                          **settings)


def masked_diffusion_loss(logits: Tensor, labels: Tensor, t: Tensor, *, num_answer_tokens: Count) -> LossOutput:
    """Masked-diffusion SFT loss (Nie et al. 2025, "Large Language Diffusion Models", Eq. 5 for SFT).

    No shift: logits[:, i] predicts labels[:, i], which holds the original token at masked positions and
    -100 elsewhere. t [B] is each sample's mask ratio. Equals::

        ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(B, T)
        loss = (ce / t[:, None])[labels != -100].sum() / num_answer_tokens

    The 1 / t weight makes the loss an upper bound on the negative log-likelihood.
    """
    return diffusion_objective("sft", logits, labels, t, num_answer_tokens=num_answer_tokens)


def masked_diffusion_dft_loss(
    logits: Tensor, labels: Tensor, t: Tensor, *, num_answer_tokens: Count, alpha: float = 1.0
) -> LossOutput:
    """Experimental: `masked_diffusion_loss` with each masked token weighted as DFT weighs it (Wu et al. 2025,
    "On the Generalization of SFT", Eq. 9). No published recipe; no other tool offers it. Equals::

        w = alpha * exp(-ce).detach() + 1 - alpha          # the stop-gradient probability of the clean token
        loss = (w * ce / t[:, None])[labels != -100].sum() / num_answer_tokens

    alpha=0 is exactly `masked_diffusion_loss`. Unlike the plain loss, the weighted one is no longer a bound
    on the negative log-likelihood.
    """
    return diffusion_objective("dft", logits, labels, t, num_answer_tokens=num_answer_tokens, alpha=alpha)


def fused_diffusion_objective(
    name: str, hidden: Tensor, weight: Tensor, labels: Tensor, t: Tensor, *, num_answer_tokens: Count,
    shift: bool = False, row_weight: Tensor | None = None, **kwargs: Any,
) -> LossOutput:
    """`diffusion_objective` on ``hidden @ weight.T`` without materialising the logits: the fused head over the
    masked positions only (value, metrics and gradients equal). kwargs: the objective's settings and the fused
    head's (`chunk_size`, `logit_transform`)."""
    check_stage(name)
    return fused_linear_loss(hidden, weight, labels, objective=name, global_count=num_answer_tokens, shift=shift,
                             row_scale=elbo_weight(t, row_weight), **kwargs)  # fmt: skip
