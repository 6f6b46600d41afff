"""Block diffusion (BD3-LM, Arriola et al. 2025, "Block Diffusion", ICLR 2025, Sec. 3.2 and Appendix B.6): the pure
index and mask building that training (stage dllm's `diffusion_block_size`) and cached decoding share.

A row of length L is cut into blocks of `block_size` positions from position 0 (block of position i: i //
block_size). Training feeds the model the concatenation [x_t, x_0] (noisy, then clean; length 2L, position ids
0..L-1 twice) under BD3-LM's mask, the union of three parts (its `block_diff_mask`):

- M_BD, block diagonal: a position attends to its own block of its own half (bidirectional within the block);
- M_OBC, offset block-causal: a noisy position attends to the clean blocks strictly before its block;
- M_BC, block-causal: a clean position attends to the clean blocks up to and including its own.

So noisy block b sees exactly what decoding block b sees: the finished clean blocks < b, and itself. One forward
trains every block at once; the loop it equals runs the model on [x_0 blocks < b, x_t block b] for each b.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.errors import DftuneError

BLOCK_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "smollm3")
"""Decoder families whose transformers 5 forward passes a 4D `attention_mask` through as it is (masking_utils'
`_preprocess_mask_arguments`), takes `position_ids` and selects positions with `logits_to_keep` (tests: llama,
qwen2)."""
MASK_ATTENTION = ("eager", "sdpa")
"""Attention implementations that apply an arbitrary 4D mask (flash-attention kernels take padding masks only)."""


def check_block_model(config: object, key: str = "diffusion_block_size") -> None:
    """A DftuneError naming `key` unless the model's attention takes a 4D mask as it is (block diffusion's
    block-causal one, the approximate cache's): no silent fallback."""
    family = getattr(config, "model_type", type(config).__name__)
    if family not in BLOCK_FAMILIES:
        raise DftuneError(f"{key}: this feeds the model a 4D attention mask (block-causal or a cache's), "
                          f"which dftune gives only to {', '.join(BLOCK_FAMILIES)} models; this model is a "
                          f"{family}: remove {key}, or use one of those families (e.g. `dftune init-model --preset "
                          "tiny-dllm`)")
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in MASK_ATTENTION:
        raise DftuneError(f"{key}: attn_implementation {implementation} cannot apply a 4D mask as it is; "
                          "set attn_implementation: sdpa (or eager)")


def block_of(length: int, block_size: int, device: torch.device | None = None) -> Tensor:
    """[length] the block of each position: i // block_size."""
    return torch.arange(length, device=device) // block_size


def training_mask(length: int, block_size: int, device: torch.device | None = None) -> Tensor:
    """[2L, 2L] bool, True where query row attends key column, over [x_t, x_0]: M_BD | M_OBC | M_BC. Equals::

        clean_q, clean_k = q >= L, k >= L;  bq, bk = (q % L) // block_size, (k % L) // block_size
        allowed[q, k] = (bq == bk and clean_q == clean_k) or (bq > bk and clean_k and not clean_q)
                        or (bq >= bk and clean_k and clean_q)
    """
    block = block_of(length, block_size, device).repeat(2)  # [2L]
    clean = torch.arange(2 * length, device=device) >= length  # [2L]
    bq, bk, cq, ck = block[:, None], block[None, :], clean[:, None], clean[None, :]
    diagonal = (bq == bk) & (cq == ck)
    offset_causal = (bq > bk) & ck & ~cq
    causal = (bq >= bk) & ck & cq
    return diagonal | offset_causal | causal


def attention_bias(allowed: Tensor, batch: int, implementation: str, dtype: torch.dtype) -> Tensor:
    """`allowed` [Q, K] as the 4D `attention_mask` [batch, 1, Q, K] the implementation applies as it is: bool for
    sdpa (True attends), additive float for eager (0 where allowed, the dtype's minimum elsewhere)."""
    if implementation != "sdpa":  # built once [Q, K], then a view per row: no [batch, Q, K] floats
        allowed = torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), torch.finfo(dtype).min)
    return allowed[None, None].expand(batch, 1, *allowed.shape)


def prediction_positions(length: int, block_size: int, shift: bool, device: torch.device | None = None) -> Tensor:
    """[L] the position of [x_t, x_0] whose output predicts token i of x_t (the `logits_to_keep` of training).

    Unshifted (LLaDA): position i of x_t. Shifted (a model turned from an autoregressive one predicts token i from
    position i - 1): i - 1 of x_t inside a block; at a block's first position, i - 1 is the last position of the
    previous block, which noisy block b does not see, so the prediction comes from the clean copy, L + i - 1 (as
    decoding reads it from the finished prefix). Position 0 has no predictor: its label must be ignored.
    """
    positions = torch.arange(length, device=device)
    if not shift:
        return positions
    starts = positions % block_size == 0
    return torch.where(starts, length + positions - 1, positions - 1).clamp(min=0)
