"""The objectives of stage dllm: the masked-diffusion loss (LLaDA-style SFT) and its DFT-weighted variant."""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.losses.core import Count, LossOutput, token_metrics, token_stats, weighted_ce


def masked_diffusion_loss(
    logits: Tensor, labels: Tensor, t: Tensor, *, num_answer_tokens: Count
) -> LossOutput:
    """Masked-diffusion SFT loss (Nie et al. 2025, "Large Language Diffusion Models", Eq. 5 for SFT).

    No shift: logits[:, i] predicts labels[:, i], which holds the original token at masked positions and
    -100 elsewhere. t [B] is each sample's mask ratio. Equals::

        ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(B, T)
        loss = (ce / t[:, None])[labels != -100].sum() / num_answer_tokens

    where `num_answer_tokens` counts every non-prompt position of the batch, masked or not (global across
    accumulation steps and processes, like `num_items_in_batch`). The 1 / t weight makes the loss an upper
    bound on the negative log-likelihood.
    """
    stats = token_stats(logits, labels)
    row = stats.index // labels.shape[1]  # [N] sample of each masked token
    coefficients = 1.0 / (t.detach().to(stats.ce.dtype)[row] * num_answer_tokens)
    loss = weighted_ce(stats, coefficients)
    return LossOutput(loss, token_metrics(stats), num_tokens=stats.ce.numel(), num_samples=labels.shape[0])


def masked_diffusion_dft_loss(
    logits: Tensor, labels: Tensor, t: Tensor, *, num_answer_tokens: Count, alpha: float = 1.0
) -> LossOutput:
    """Experimental: `masked_diffusion_loss` with each masked token weighted as DFT weights it (Wu et al. 2025,
    "On the Generalization of SFT", Eq. 9). No published recipe; no other tool offers it. Equals::

        ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(B, T)
        w = alpha * exp(-ce).detach() + 1 - alpha          # the stop-gradient probability of the clean token
        loss = (w * ce / t[:, None])[labels != -100].sum() / num_answer_tokens

    alpha=0 is exactly `masked_diffusion_loss`. Unlike the plain loss, the weighted one is no longer a bound
    on the negative log-likelihood.
    """
    stats = token_stats(logits, labels)
    ce = stats.ce.detach()
    row = stats.index // labels.shape[1]  # [N] sample of each masked token
    weight = alpha * torch.exp(-ce) + (1.0 - alpha)
    coefficients = weight / (t.detach().to(ce.dtype)[row] * num_answer_tokens)
    loss = weighted_ce(stats, coefficients)
    metrics = token_metrics(stats) | {"dft_alpha": float(alpha)}
    return LossOutput(loss, metrics, num_tokens=ce.numel(), num_samples=labels.shape[0])


def diffusion_objective(
    loss: str, logits: Tensor, labels: Tensor, t: Tensor, *, num_answer_tokens: Count, alpha: float = 1.0
) -> LossOutput:
    """`loss: sft` -> `masked_diffusion_loss`; `loss: dft` -> `masked_diffusion_dft_loss`."""
    if loss == "dft":
        return masked_diffusion_dft_loss(logits, labels, t, num_answer_tokens=num_answer_tokens, alpha=alpha)
    if loss == "sft":
        return masked_diffusion_loss(logits, labels, t, num_answer_tokens=num_answer_tokens)
    raise ValueError(f"stage dllm has no loss {loss!r}; use sft or dft")
