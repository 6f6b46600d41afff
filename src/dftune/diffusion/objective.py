"""The objectives of stage dllm: the masked-diffusion loss, and its DFT-weighted variant (experimental)."""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.losses import LossOutput, masked_diffusion_loss, token_stats
from dftune.losses.core import Count, token_metrics, weighted_ce


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
