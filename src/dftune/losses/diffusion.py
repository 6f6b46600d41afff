"""The masked-diffusion objective for diffusion LMs (LLaDA-style supervised fine-tuning)."""

from __future__ import annotations

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
