"""Fast-dLLM's approximate KV caches for a full-attention masked-diffusion LM (LLaDA-style, every position attends
to the whole row; Wu et al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and
Parallel Decoding", Sec. 3.2, Fig. 2).

At the first step of a block the whole row runs once, as without a cache, and its keys and values are kept: that
step's logits are the uncached ones exactly. The block's later steps reuse them:

- `cache: prefix` keeps the keys and values of the positions before the block (prompt and finished blocks) and runs
  the block and everything after it (the still-masked suffix) at each step;
- `cache: dual` keeps those of the suffix too and runs the block alone: its queries see the cached prefix and
  suffix and the block's own fresh keys and values.

Under full attention the prefix's keys and values depend on the block and the suffix, which change during the block,
so the cached ones are stale after the first step: the result differs from `cache: none` (Fast-dLLM measures the
accuracy change as small; docs/diffusion.md measures ours). Nothing is stale when the row has not changed since the
block's start (tests/diffusion/test_approximate_cache.py checks that, and the exact first step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from dftune.diffusion.block import attention_bias, check_block_model
from dftune.diffusion.block_decoding import drop_last
from dftune.errors import DftuneError


def model_logits(model: nn.Module, x: Tensor, shift: bool = False, **kwargs) -> Tensor:
    """[B, L, V] logits of the whole row, bidirectional (no attention_mask: nothing is padding). `shift`: the model
    predicts position i from position i - 1 (turned from an autoregressive one), so its logits move right by one
    (position 0, always the prompt, keeps its own). `kwargs` go to the model (a cache to fill)."""
    logits = model(input_ids=x, **kwargs).logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if shift else logits


def check_full_attention_cache(model: nn.Module, cache: str) -> None:
    """A DftuneError naming `cache` unless the model takes the 4D mask and position ids the cached steps pass and
    attends bidirectionally (a causal LM's refresh would see less than its cached steps)."""
    check_block_model(model.config, f"cache: {cache}")
    if getattr(model.config, "is_causal", True) is not False:
        raise DftuneError(f"cache: {cache}: the approximate cache is for a full-attention (bidirectional) diffusion "
                          "LM; this model's config is causal (is_causal is not false): use cache: none")


@dataclass
class ApproximateCache:
    """The logits of the current block [start, end) of `rows` [R, L], with the row's keys and values computed at the
    block's first step (`dual`: prefix and suffix, else the prefix alone)."""

    model: nn.Module
    dual: bool
    shift: bool = False
    past: DynamicCache | None = None
    start: int | None = None
    """The block whose first step filled `past`."""

    def logits(self, rows: Tensor, start: int, end: int) -> Tensor:
        """[R, end - start, V]: position i's prediction (from position i - 1 when shifted) for i in [start, end)."""
        first = start - self.shift  # the first input position a query of the block reads its prediction from
        if start != self.start:  # a new block: run the whole row once, as without the cache, and keep it
            self.start, self.past = start, DynamicCache(config=self.model.config)
            logits = model_logits(self.model, rows, self.shift, past_key_values=self.past, use_cache=True)
            if not self.dual:
                drop_last(self.past, rows.shape[1] - first)  # the prefix [0, first) stays
            return logits[:, start:end]
        cached = self.past.get_seq_length()
        stop = end if self.dual else rows.shape[1]
        allowed = torch.ones(stop - first, cached + stop - first, dtype=torch.bool, device=rows.device)
        if self.dual:  # the cache's own copy of the block is stale: its fresh one is in the input
            allowed[:, first:end] = False
        bias = attention_bias(allowed, rows.shape[0], self.model.config._attn_implementation, self.model.dtype)
        positions = torch.arange(first, stop, device=rows.device)[None].expand(rows.shape[0], -1)
        keep = torch.arange(end - start, device=rows.device)  # outputs of input positions [first, end - shift)
        logits = self.model(input_ids=rows[:, first:stop], attention_mask=bias, position_ids=positions,
                            past_key_values=self.past, use_cache=True, logits_to_keep=keep).logits  # fmt: skip
        drop_last(self.past, stop - first)  # the step's own keys and values never join the cache
        return logits

