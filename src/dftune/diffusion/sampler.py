"""Reverse process of a masked-diffusion LM: start from masks, unmask a fixed number of tokens per step.

LLaDA's sampler (Nie et al. 2025, Sec. 2.4 and Appendix B.3, "semi-autoregressive remasking"): the answer is
`max_new_tokens` mask tokens after the prompt, cut into blocks of `block_length` filled left to right; each
block gets `steps / num_blocks` steps. At every step the model predicts all masked positions at once, and the
`k` most confident predictions in the current block are kept, the others go back to masks. Confidence is the
`remasking` strategy's (`remasking.py`: low_confidence, margin, entropy, random). k follows a linear schedule:
the block's masks split evenly over its steps, the remainder to the first steps. Tokens once unmasked are never
changed.

Confidence-threshold parallel unmasking (Fast-dLLM, Wu et al. 2025): with `threshold`, a step keeps every masked
position of the current block whose confidence passes it, and at least the most confident one, until the block
is filled; the number of steps follows from the model's confidence (`decode` reports it). threshold 1.0 is
one token per step for low_confidence and margin.

A block-diffusion model (trained with `diffusion_block_size`) decodes its own blocks, each seeing only the finished
ones before it, with or without their cached keys and values (`block_decoding.py`: exact). A full-attention model
with `cache: prefix | dual` reuses keys and values computed at each block's first step (`approximate_cache.py`:
Fast-dLLM's approximation).

The decoding keys and their checks are `dftune.config.decoding_args.DecodingArguments`, shared by `dftune
generate`, `dftune eval` and stage dllm's evaluation samples.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from dftune.config.decoding_args import DecodingArguments
from dftune.diffusion.approximate_cache import ApproximateCache, check_full_attention_cache, model_logits
from dftune.diffusion.block_decoding import BlockDecoder, answer_blocks, model_block_size
from dftune.diffusion.remasking import confidence, cutoff
from dftune.errors import DftuneError

logger = logging.getLogger(__name__)


def transfer_schedule(num_masked: Tensor, steps: int) -> Tensor:
    """[B, steps] tokens to unmask at each step: num_masked // steps each, plus one for the first
    num_masked % steps steps. Rows sum to num_masked [B]."""
    base = (num_masked // steps)[:, None].expand(-1, steps)  # [B, steps]
    extra = torch.arange(steps, device=num_masked.device)[None] < (num_masked % steps)[:, None]
    return base + extra.long()


@dataclass(frozen=True)
class Decoded:
    """What `decode` returns: the generated ids [B, max_new_tokens] and the denoising steps it took in all."""

    ids: Tensor
    steps: int


def sample(model: nn.Module, prompt_ids: Tensor, **kwargs) -> Tensor:
    """[B, max_new_tokens] generated ids after `prompt_ids` [B, P]: `decode(...).ids` (see `decode`)."""
    return decode(model, prompt_ids, **kwargs).ids


@torch.no_grad()
def decode(
    model: nn.Module,
    prompt_ids: Tensor,
    *,
    mask_token_id: int,
    options: DecodingArguments | None = None,
    shift_logits: bool = False,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[Tensor], None] | None = None,
    **keys: Any,
) -> Decoded:
    """Generated ids [B, max_new_tokens] after `prompt_ids` [B, P] (same-length prompts, no padding), and the steps.

    options: the decoding keys (`DecodingArguments`: max_new_tokens, min_new_tokens, steps, block_length,
    temperature, remasking, threshold, cfg_scale; their checks); `keys` override single ones (`steps=8`).
    temperature: 0 = argmax, else Gumbel-max sampling from softmax(logits / temperature).
    remasking: the confidence that orders the masked positions (`remasking.confidence`); with `threshold`, a step
    keeps every position past `remasking.cutoff` (and at least the most confident one): `steps` is not used.
    cfg_scale: classifier-free guidance (`guided_logits`); 0 = off.
    min_new_tokens: the logits of every `eos_token_id` are -inf at the first min_new_tokens answer positions.
    eos_token_id: once every row has an EOS in its finished blocks, the remaining blocks are skipped and filled
    with EOS (what full decoding converges to after a trained model's EOS). The output is not truncated:
    see `truncate_at_eos`.
    shift_logits: the model predicts position i from position i - 1 (`model_logits`).
    A model trained with `diffusion_block_size` (its config says so) decodes its training blocks block-causally,
    `cache: prefix` (or `dual`, the same there) keeping the finished blocks' keys and values (`block_decoding`,
    exact); a full-attention model's `cache: prefix | dual` is Fast-dLLM's approximate cache (`approximate_cache`).
    on_step: called with the current [B, P + max_new_tokens] ids after every step (tests, visualisation).
    """
    options = replace(options, **keys) if options is not None else DecodingArguments(**keys)
    eos = torch.as_tensor([] if eos_token_id is None else eos_token_id, device=prompt_ids.device).flatten().long()
    if options.min_new_tokens and not eos.numel():
        raise ValueError("min_new_tokens needs an eos_token_id: the token it holds back")
    threshold, block_size = options.threshold, model_block_size(model)
    batch, prompt_length = prompt_ids.shape
    total = prompt_length + options.max_new_tokens
    blocks, steps_per_block = _blocks(options, prompt_length, total, block_size)
    cached = _cached_logits(model, options.cache, block_size, shift_logits)

    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    x = torch.full((batch, total), mask_token_id, dtype=torch.long, device=prompt_ids.device)
    x[:, :prompt_length] = prompt_ids
    taken = 0
    try:
        for start, end in blocks:
            # The logits cover [lo, end): the current block for a block-diffusion model or a cache, else the row.
            lo = 0 if cached is None else start
            forward = None if cached is None else (lambda rows: cached.logits(rows, start, end))  # noqa: B023
            no_eos = slice(max(prompt_length - lo, 0), max(prompt_length + options.min_new_tokens - lo, 0))
            masks = (x[:, start:end] == mask_token_id).sum(1)  # a block-diffusion block: at most a step per mask
            steps = steps_per_block if block_size is None else min(steps_per_block, max(int(masks.max()), 1))
            schedule = transfer_schedule(masks, steps)
            step = 0  # schedule: [B, steps per block]
            while (x[:, start:end] == mask_token_id).any() if threshold is not None else step < schedule.shape[1]:
                masked = x[:, lo:] == mask_token_id  # [B, L - lo]
                logits = guided_logits(model, x, prompt_length, mask_token_id, options.cfg_scale, shift_logits,
                                       forward=forward).float()  # fmt: skip
                logits[..., mask_token_id] = -torch.inf  # a prediction must be a real token
                logits[:, no_eos, eos] = -torch.inf  # min_new_tokens: no EOS there
                x0 = _pick(logits, options.temperature, generator)  # [B, end - lo] or [B, L]
                score = confidence(logits, x0, options.remasking, generator)
                score[:, end - lo :] = -torch.inf  # later blocks wait for their turn
                score = score.masked_fill(~masked[:, : score.shape[1]], -torch.inf)  # unmasked tokens stay
                bar = None if threshold is None else cutoff(options.remasking, threshold)
                for row in range(batch):
                    keep = _kept(score[row], bar, None if bar is not None else int(schedule[row, step]))
                    x[row, keep + lo] = x0[row, keep]
                step += 1
                if on_step is not None:
                    on_step(x.clone())
            taken += step
            answer = x[:, prompt_length:end]
            if eos.numel() and bool(torch.isin(answer, eos).any(1).all()) and end < x.shape[1]:
                x[:, end:] = eos[0]
                break
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return Decoded(x[:, prompt_length:], taken)


def _blocks(options: DecodingArguments, prompt_length: int, total: int,
            block_size: int | None) -> tuple[list[tuple[int, int]], int]:  # fmt: skip
    """The blocks [(start, end)] filled in turn and the steps of a full one. A block-diffusion model decodes its
    training blocks (`answer_blocks`), `steps` per token as given (steps * block_size / max_new_tokens per block,
    at least 1); any other, `block_length` blocks after the prompt, `steps_per_block` each."""
    if block_size is None:
        length = options.block_length_or_all()
        starts = range(prompt_length, total, length)
        return [(start, start + length) for start in starts], options.steps_per_block()
    if options.block_length is not None and options.block_length != block_size:
        raise DftuneError(f"block_length {options.block_length}: a block-diffusion model decodes the blocks it was "
                         f"trained on (diffusion_block_size {block_size}); leave block_length out")
    steps = options.steps or options.max_new_tokens
    return answer_blocks(prompt_length, total, block_size), max(1, steps * block_size // options.max_new_tokens)


def _cached_logits(model: nn.Module, cache: str, block_size: int | None,
                   shift: bool) -> BlockDecoder | ApproximateCache | None:  # fmt: skip
    """What computes a block's logits: a block-diffusion model's own blocks (`cache: dual` is `prefix` there: a block
    never sees the blocks after it, so there is no suffix to cache), Fast-dLLM's approximate cache for a
    full-attention model, or nothing (`model_logits` of the whole row, `cache: none` of a full-attention model)."""
    if block_size is not None:
        if cache == "dual":
            _note_once("cache: dual on a block-diffusion model is cache: prefix (a block never sees the blocks after "
                       "it): the same tokens as cache: none")
        return BlockDecoder(model, block_size, cache != "none", shift)
    if cache == "none":
        return None
    check_full_attention_cache(model, cache)
    _note_once(f"cache: {cache} on a full-attention diffusion LM is Fast-dLLM's approximate cache (refreshed at each "
               "block's first step): the tokens may differ from cache: none")
    return ApproximateCache(model, cache == "dual", shift)


@functools.cache
def _note_once(message: str) -> None:
    """One log line per process, not one per batch of `decode_replies`."""
    logger.info(message)


def _kept(confidence: Tensor, threshold: float | None, k: int | None) -> Tensor:
    """Positions of one row to unmask: the `k` most confident, or (threshold) every one whose confidence exceeds
    `threshold` and at least the most confident; none when the row has no masked position left in the block.
    `confidence` [L]: -inf where a position is not a candidate."""
    candidates = torch.isfinite(confidence)
    if threshold is None:
        return torch.topk(confidence, k).indices if k else confidence.new_empty(0, dtype=torch.long)
    if not candidates.any():
        return confidence.new_empty(0, dtype=torch.long)
    above = (confidence > threshold) & candidates
    above[confidence.argmax()] = True
    return above.nonzero().squeeze(1)


def truncate_at_eos(ids: Sequence[int], eos_token_id: int | Sequence[int] | None) -> list[int]:
    """`ids` up to (without) the first EOS."""
    stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    out: list[int] = []
    for token in ids:
        if token in stops:
            break
        out.append(int(token))
    return out


def guided_logits(
    model: nn.Module, x: Tensor, prompt_length: int, mask_token_id: int, cfg_scale: float, shift: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """[B, L, V] logits of `x` [B, L]; with `cfg_scale` > 0, classifier-free guidance in LLaDA's form (Appendix
    B.3, Eq. 16): u + (cfg_scale + 1) * (c - u), c = the logits of `x`, u = those of `x` with its first
    `prompt_length` tokens (the prompt) replaced by the mask token, both from one batch of 2B rows. `forward`:
    rows -> their logits, in place of `model_logits` (a block-diffusion model's current block: [B, block, V])."""
    forward = forward or (lambda rows: model_logits(model, rows, shift))
    if cfg_scale <= 0.0:
        return forward(x)
    unconditional = x.clone()
    unconditional[:, :prompt_length] = mask_token_id
    both = forward(torch.cat([x, unconditional]))  # [2B, L, V]
    cond, uncond = both.chunk(2)
    return uncond + (cfg_scale + 1.0) * (cond - uncond)


def _pick(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """argmax of logits / temperature + Gumbel noise: a sample from softmax(logits / temperature)."""
    if temperature <= 0.0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
    return (logits.double() / temperature + gumbel).argmax(-1)


def sample_replies(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    **kwargs,
) -> list[str]:
    """The reply to each conversation prefix: `decode_replies(...)[0]`."""
    return decode_replies(model, tokenizer, prompts, **kwargs)[0]


def decode_replies(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    *,
    mask_token_id: int,
    eos_token_id: int | Sequence[int] | None = None,
    batch_size: int = 64,
    **kwargs,
) -> tuple[list[str], list[int]]:
    """The reply to each conversation prefix, through its chat template's generation prompt, cut at the first
    EOS (default: the tokenizer's), and the denoising steps its batch took. Prompts are batched by token length,
    since rows carry no padding. `kwargs` go to `decode`."""
    eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    encoded = [
        tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in encoded]
    by_length: dict[int, list[int]] = {}
    for index, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(index)
    replies, steps = [""] * len(prompts), [0] * len(prompts)
    device = next(model.parameters()).device
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            prompt_ids = torch.tensor([ids[i] for i in chunk], device=device)
            out = decode(model, prompt_ids, mask_token_id=mask_token_id, eos_token_id=eos_token_id, **kwargs)
            for i, row in zip(chunk, out.ids.tolist()):
                kept = truncate_at_eos(row, eos_token_id)
                replies[i] = tokenizer.decode(kept, skip_special_tokens=True).strip()
                steps[i] = out.steps
    return replies, steps
