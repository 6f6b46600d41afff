"""Stage dllm with `diffusion_block_size`: block diffusion training (BD3-LM, Arriola et al. 2025, Sec. 3 and
Algorithm 1), the noising of `DiffusionCollator` and the model inputs of `DiffusionTrainer`.

Noising (`complementary_block_noise`): each block b of a sample gets its own diffusion time s_b ~ U(eps, 1 - eps)
(BD3-LM draws one per block), and each answer token u_i ~ U(0, 1). The sample becomes two rows: copy 1 masks the
answer tokens with u_i < s_b (mask ratio s_b, ELBO weight 1 / s_b), copy 2 masks the other answer tokens (ratio
1 - s_b, weight 1 / (1 - s_b)), so every answer token is masked, and trained, in exactly one copy. Both copies are
unbiased ELBO estimates under the linear schedule, whose s and 1 - s are equally likely (s is drawn on
[eps, 1 - eps] for that symmetry); the loss divides by the answer tokens of both, so it is their mean. A batch of
n samples is 2n rows, each fed as [x_t, x_0] of length 2L: 4x the tokens of plain masked diffusion per forward.
Prompt tokens are never masked.

Model inputs (`block_model_inputs`): [x_t, x_0] with the block-causal mask (`diffusion.block.training_mask`),
position ids 0..L-1 for both halves, and `logits_to_keep` selecting the L outputs that predict x_t (its own half;
with shifted logits, the clean copy's last token of the previous block at each block start), so the fused head (or
the logits) see L positions per row, never 2L.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.data.encode import IGNORE_INDEX
from dftune.diffusion.block import attention_bias, block_of, prediction_positions, training_mask


def complementary_block_noise(
    input_ids: Tensor, answer_mask: Tensor, *, block_size: int, mask_token_id: int, eps: float,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Clean rows [n, L] and their answer mask -> the 2n noised rows (copy 1 and copy 2 of each sample, adjacent):
    input_ids (x_t), clean_ids (x_0), labels (the clean token where masked, else -100), t (each token's mask ratio,
    float32), loss_weight (its ELBO weight 1 / t, float64) and answer_mask, each [2n, L]."""
    n, length = input_ids.shape
    blocks = block_of(length, block_size)  # [L]
    s = (1.0 - 2 * eps) * torch.rand(n, int(blocks[-1]) + 1, generator=generator) + eps  # [n, blocks]
    ratio = s[:, blocks]  # [n, L], each token's block's s
    first = (torch.rand(input_ids.shape, generator=generator) < ratio) & answer_mask
    masked = torch.stack([first, answer_mask & ~first], dim=1).flatten(0, 1)  # [2n, L]
    t = torch.stack([ratio, 1.0 - ratio], dim=1).flatten(0, 1)
    clean = input_ids.repeat_interleave(2, dim=0)
    return {
        "input_ids": clean.masked_fill(masked, mask_token_id),
        "clean_ids": clean,
        "labels": clean.masked_fill(~masked, IGNORE_INDEX),
        "t": t.float(),
        "loss_weight": 1.0 / t.double(),
        "answer_mask": answer_mask.repeat_interleave(2, dim=0),
    }


def block_model_inputs(
    batch: dict[str, Tensor], *, block_size: int, shift: bool, attention: str, dtype: torch.dtype
) -> tuple[dict[str, Tensor], Tensor]:
    """(the model's keyword inputs for [x_t, x_0], the labels aligned with its L outputs). `attention`: the model's
    attention implementation (the mask's form); `shift`: the model predicts token i from position i - 1, so
    position 0's label (a prompt token, or nothing to predict it from) is ignored."""
    noisy, labels = batch["input_ids"], batch["labels"]
    rows, length = noisy.shape
    device = noisy.device
    allowed = training_mask(length, block_size, device)  # [2L, 2L]
    inputs = {
        "input_ids": torch.cat([noisy, batch["clean_ids"]], dim=1),  # [B, 2L]
        "attention_mask": attention_bias(allowed, rows, attention, dtype),  # [B, 1, 2L, 2L]
        "position_ids": torch.arange(length, device=device).repeat(2)[None].expand(rows, -1),  # x_0 at x_t's
        "logits_to_keep": prediction_positions(length, block_size, shift, device),  # [L]
    }
    if shift:
        labels = labels.clone()
        labels[:, 0] = IGNORE_INDEX
    return inputs, labels
