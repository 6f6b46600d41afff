"""Decoding a block-diffusion LM (one trained with `diffusion_block_size`) block by block, as it was trained: the
current block sees itself and the finished blocks before it, never the masks after it (BD3-LM, Arriola et al.
2025, Algorithm 2; Fast-dLLM v2's block cache).

Blocks are the training blocks (positions cut at multiples of the block size from 0), so the first one holds the
end of the prompt. `cache: none` runs the model on every position up to the end of the current block under the
block-causal mask (a position sees the blocks up to its own) at each step. `cache: prefix` keeps the keys and
values of the finished prefix (`past_key_values`): a step runs the current block alone, and a finished block runs
once more, clean, to join the cache. The prefix's keys and values do not depend on later blocks under that mask, so
both give the same logits up to rounding, and the same tokens (tests/diffusion/test_block_decoding.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from dftune.diffusion.block import attention_bias, block_of, check_block_model


def model_block_size(model: nn.Module) -> int | None:
    """The block size a model was trained with (`diffusion_block_size` in its config, which stage dllm writes),
    None for a full-attention diffusion LM."""
    config = getattr(model, "config", None)  # a plain nn.Module (tests' stand-ins) has no config
    value = None if config is None else config.to_dict().get("diffusion_block_size")
    return None if value is None else int(value)


def answer_blocks(prompt_length: int, total: int, block_size: int) -> list[tuple[int, int]]:
    """[(start, end)] of the training blocks that hold answer positions [prompt_length, total); the first may
    start inside the prompt (its prompt positions are never masked)."""
    first = prompt_length // block_size * block_size
    return [(start, min(start + block_size, total)) for start in range(first, total, block_size)]


def drop_last(cache: DynamicCache, tokens: int) -> None:
    """The cache without its last `tokens` positions. transformers' `crop` took the final length before 5.x and a
    negative count since; the check makes a change of meaning an error, not a wrong cache."""
    before = cache.get_seq_length()
    cache.crop(-tokens)
    if cache.get_seq_length() != before - tokens:
        raise RuntimeError(f"DynamicCache.crop(-{tokens}) left {cache.get_seq_length()} of {before} positions: "
                           "transformers changed its meaning; update diffusion.block_decoding.drop_last")


@dataclass
class BlockDecoder:
    """The logits of the current block [start, end) of `rows` [R, L] given the finished blocks before it."""

    model: nn.Module
    block_size: int
    cache: bool
    shift: bool = False
    past: DynamicCache | None = None
    done: int = 0
    """Positions [0, done) are final and, with the cache, in `past`."""
    last: Tensor | None = field(default=None, repr=False)
    """With the cache and shifted logits: the output at position done - 1, which predicts position done."""

    def __post_init__(self) -> None:
        check_block_model(self.model.config, "a block-diffusion model's decoding")
        self.past = DynamicCache(config=self.model.config) if self.cache else None

    def _forward(self, rows: Tensor, start: int, end: int, **kwargs) -> Tensor:
        """The model's logits for the queries [start, end) of `rows` (from 0 without the cache, which holds the
        keys and values before `start`), each seeing the positions of its block and of the blocks before it."""
        first = start if self.past is not None else 0
        blocks = block_of(end, self.block_size, rows.device)  # [end]
        allowed = blocks[first:, None] >= blocks[None, :]  # [end - first, end]: block-causal
        bias = attention_bias(allowed, rows.shape[0], self.model.config._attn_implementation, self.model.dtype)
        positions = torch.arange(first, end, device=rows.device)[None].expand(rows.shape[0], -1)
        return self.model(input_ids=rows[:, first:end], attention_mask=bias, position_ids=positions,
                          past_key_values=self.past, use_cache=self.past is not None, **kwargs).logits  # fmt: skip

    def logits(self, rows: Tensor, start: int, end: int) -> Tensor:
        """[R, end - start, V]: position i's prediction (from position i - 1 when shifted) for i in [start, end)."""
        if start != self.done:
            self.commit(rows, start)
        if self.past is None:
            keep = torch.arange(start - self.shift, end - self.shift, device=rows.device).clamp(min=0)
            return self._forward(rows, start, end, logits_to_keep=keep)
        logits = self._forward(rows, start, end)
        drop_last(self.past, end - start)  # the noisy block never joins the cache
        if not self.shift:
            return logits
        first = logits[:, :1] if self.last is None else self.last  # position 0 keeps its own (as model_logits)
        return torch.cat([first, logits[:, :-1]], dim=1)

    def commit(self, rows: Tensor, upto: int) -> None:
        """Positions [done, upto) of `rows` are final: with the cache, their clean keys and values join it."""
        if self.past is not None and upto > self.done:
            self.last = self._forward(rows, self.done, upto, logits_to_keep=1)
        self.done = upto
