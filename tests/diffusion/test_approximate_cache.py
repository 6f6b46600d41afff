"""Fast-dLLM's approximate caches of a full-attention diffusion LM (`cache: prefix | dual`): each block's first step
is the uncached one exactly, a cache of an unchanged row is no cache, each cache holds what it says (prefix: the
positions before the block; dual: those after it too), and every mask is filled in the steps of `cache: none`."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from dftune.diffusion import decode
from dftune.diffusion.approximate_cache import ApproximateCache, model_logits
from dftune.diffusion.sampler import _note_once
from dftune.models.presets import init_model

MASK_ID, EOS = 7, 2
PROMPT = torch.tensor([[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26]])


@pytest.fixture(scope="module")
def full_model(tmp_path_factory):
    """The tiny-dllm preset (bidirectional Llama, every position sees the whole row) in float64."""
    torch.manual_seed(0)
    model_dir = init_model("tiny-dllm", tmp_path_factory.mktemp("tiny-dllm"))
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()


def row(*answer: int) -> torch.Tensor:
    """[2, 14]: PROMPT, the given answer tokens, then masks."""
    x = torch.full((2, 14), MASK_ID)
    x[:, :6] = PROMPT
    x[:, 6 : 6 + len(answer)] = torch.tensor(answer)
    return x


@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("shift", [False, True])
@torch.no_grad()
def test_each_blocks_first_step_is_the_uncached_one(full_model, dual, shift):
    """Blocks [6, 10) then [10, 14): the first call of a block refreshes the cache from the whole row, so its logits
    are `model_logits` of that row bit for bit; a later step of the block, after tokens changed, is not."""
    cache = ApproximateCache(full_model, dual, shift)
    x = row()
    assert torch.equal(cache.logits(x, 6, 10), model_logits(full_model, x, shift)[:, 6:10])
    x = row(30, 31)
    assert not torch.allclose(cache.logits(x, 6, 10), model_logits(full_model, x, shift)[:, 6:10])
    x = row(30, 31, 32, 33)
    assert torch.equal(cache.logits(x, 10, 14), model_logits(full_model, x, shift)[:, 10:14])


@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("shift", [False, True])
@torch.no_grad()
def test_a_cache_of_an_unchanged_row_is_no_cache(full_model, dual, shift):
    """Nothing is stale when the row is the one the cache was filled from: a later step's logits (the block, or the
    block and the suffix, run against the cached keys and values) equal the whole row's up to rounding."""
    cache = ApproximateCache(full_model, dual, shift)
    x = row(30)
    cache.logits(x, 6, 10)
    torch.testing.assert_close(cache.logits(x, 6, 10), model_logits(full_model, x, shift)[:, 6:10], rtol=0, atol=1e-12)


@torch.no_grad()
def test_each_cache_holds_what_it_says(full_model):
    """After the block's first step, prefix reads the positions before the block from its cache (a change there is
    not seen) and runs the suffix afresh (a change there is); dual reads both from its cache."""
    changed = {"prefix": row(), "suffix": row()}
    changed["prefix"][:, 3] = 40
    changed["suffix"][:, 12] = 40
    for dual, seen in [(False, {"prefix": False, "suffix": True}), (True, {"prefix": False, "suffix": False})]:
        cache = ApproximateCache(full_model, dual)
        first = cache.logits(row(), 6, 10)
        for where, x in changed.items():
            assert torch.equal(cache.logits(x, 6, 10), first) != seen[where], (dual, where)
        assert not torch.equal(cache.logits(row(30), 6, 10), first)  # the block itself always runs afresh


@pytest.mark.parametrize("keys", [
    {"block_length": 4}, {"block_length": 2, "steps": 4}, {"steps": 3, "block_length": 8, "cfg_scale": 1.5},
    {"block_length": 4, "remasking": "margin", "min_new_tokens": 5}, {"block_length": 4, "threshold": 0.02},
])  # fmt: skip
@pytest.mark.parametrize("shift", [False, True])
def test_every_mask_is_filled_in_the_steps_of_no_cache(full_model, keys, shift):
    """The cache changes the logits, never the schedule: with fixed steps, the same number of masks is left after
    every step as without it, all filled at the end; with a threshold, every mask is filled too."""
    runs = {}
    for cache in ("none", "prefix", "dual"):
        states: list[torch.Tensor] = []
        out = decode(full_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=8, cache=cache, shift_logits=shift,
                     eos_token_id=EOS, on_step=states.append, **keys)  # fmt: skip
        assert not (out.ids == MASK_ID).any()
        runs[cache] = (out.steps, [(state == MASK_ID).sum(1).tolist() for state in states])
    if "threshold" not in keys:
        assert runs["prefix"] == runs["none"] and runs["dual"] == runs["none"]


def test_the_cache_is_approximate_and_says_so(full_model, caplog):
    """A random model is unsure of everything, so stale keys and values change which token wins somewhere: the
    tokens differ from cache: none, and the log says they may (once, not once per call)."""
    plain = decode(full_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=8, block_length=4).ids
    _note_once.cache_clear()  # earlier tests of this process have said it already
    with caplog.at_level(logging.INFO, logger="dftune.diffusion.sampler"):
        for cache in ("prefix", "dual", "dual"):
            cached = decode(full_model, PROMPT, mask_token_id=MASK_ID, max_new_tokens=8, block_length=4, cache=cache)
            assert not torch.equal(cached.ids, plain)
    notes = [r.getMessage() for r in caplog.records if "approximate cache" in r.getMessage()]
    assert len(notes) == 2 and all("may differ from cache: none" in note for note in notes)
