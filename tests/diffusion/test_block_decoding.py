"""Decoding a block-diffusion model block by block: `cache: prefix` (and `dual`, the same there) gives the tokens of
`cache: none` exactly (float64 model), a block never sees the masks after it, and a causal model refuses the cache."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from dftune.diffusion import decode
from dftune.diffusion.block_decoding import answer_blocks
from dftune.errors import DftuneError
from dftune.models.presets import init_model

MASK_ID, EOS = 7, 2


@pytest.fixture(scope="module")
def block_model(tmp_path_factory):
    """The tiny-dllm preset (bidirectional Llama) as a block-diffusion model of blocks of 4, in float64 (random
    weights: confident about nothing, so the order of unmasking hangs on small differences, which is what an
    exactness test wants)."""
    torch.manual_seed(0)
    model_dir = init_model("tiny-dllm", tmp_path_factory.mktemp("tiny-dllm"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    model.config.diffusion_block_size = 4
    return model.eval()


PROMPT = torch.tensor([[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26]])  # 6 tokens: the first block holds 2


def test_answer_blocks_are_the_training_blocks():
    assert answer_blocks(6, 16, 4) == [(4, 8), (8, 12), (12, 16)]
    assert answer_blocks(8, 14, 4) == [(8, 12), (12, 14)]


@pytest.mark.parametrize("keys", [
    {}, {"steps": 5}, {"threshold": 0.02}, {"cfg_scale": 1.5}, {"remasking": "margin", "min_new_tokens": 6},
    {"temperature": 0.7},
])  # fmt: skip
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_prefix_cache_gives_the_tokens_of_no_cache(block_model, keys, shift, mode):
    runs = {}
    for cache in ("none", mode):
        steps: list[torch.Tensor] = []
        out = decode(block_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=10, cache=cache, shift_logits=shift,
                     eos_token_id=EOS, generator=torch.Generator().manual_seed(3), on_step=steps.append, **keys)
        runs[cache] = (out, torch.stack(steps))
    (plain, plain_steps), (cached, cached_steps) = runs["none"], runs[mode]
    assert torch.equal(cached.ids, plain.ids) and cached.steps == plain.steps
    assert torch.equal(cached_steps, plain_steps)  # every intermediate state too
    assert not (plain.ids == MASK_ID).any()


def test_a_block_never_sees_the_blocks_after_it(block_model):
    """Block-causal decoding: the first 6 new tokens do not depend on how many blocks follow (with the whole-row
    sampler they would: every position attends to the later masks)."""
    short = decode(block_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=6, cache="prefix").ids
    long = decode(block_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=14, cache="none").ids
    assert torch.equal(long[:, :6], short)
    block_model.config.diffusion_block_size = None
    try:
        whole = decode(block_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=14, block_length=2).ids
        shorter = decode(block_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=6, block_length=2).ids
    finally:
        block_model.config.diffusion_block_size = 4
    assert not torch.equal(whole[:, :6], shorter)  # the contrast: full attention sees what follows


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_a_causal_model_refuses_the_cache(tiny_model_dir, mode):
    """A causal LM (tiny-llama) decoded as a diffusion LM: its cached steps would attend where its refresh did not."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(DftuneError, match=f"cache: {mode}: .*is_causal.*cache: none"):
        decode(model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=4, cache=mode)


def test_block_length_must_be_the_models(block_model):
    with pytest.raises(DftuneError, match="diffusion_block_size 4"):
        decode(block_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=8, block_length=2)
