"""The sampler's contract: exactly the scheduled number of tokens unmasked per step (every remasking strategy), all
masks filled in exactly `steps` steps per block, none ever changed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dftune.diffusion import decode, sample, transfer_schedule, truncate_at_eos

MASK, VOCAB = 7, 11


class RandomLogits(nn.Module):
    """Random logits, whatever the input; mask logits made large so the sampler has to refuse them."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.calls: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        self.calls.append(input_ids.clone())
        logits = torch.randn(*input_ids.shape, VOCAB, generator=self.generator)
        logits[..., MASK] = 100.0
        return SimpleNamespace(logits=logits)


def test_transfer_schedule_splits_evenly_remainder_first():
    schedule = transfer_schedule(torch.tensor([10, 3, 0]), 4)
    assert schedule.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize(
    "max_new_tokens, steps, block_length, remasking, cfg_scale",
    [(12, 12, None, "low_confidence", 0.0), (12, 8, 3, "random", 0.0), (10, 4, 5, "low_confidence", 1.5),
     (9, 2, 9, "random", 0.0), (12, 8, 3, "margin", 0.0), (10, 4, 5, "entropy", 1.5), (12, 12, None, "entropy", 0.0),
     (9, 3, 3, "margin", 0.5)],
)  # fmt: skip
def test_unmasks_the_scheduled_count_and_never_changes_a_token(
    max_new_tokens, steps, block_length, remasking, cfg_scale
):
    prompt = torch.tensor([[1, 2, 3, 4], [5, 6, 1, 2]])
    states: list[torch.Tensor] = []
    out = sample(
        RandomLogits(), prompt, mask_token_id=MASK, max_new_tokens=max_new_tokens, steps=steps,
        block_length=block_length, remasking=remasking, cfg_scale=cfg_scale, temperature=0.7,
        generator=torch.Generator().manual_seed(0), on_step=states.append,
    )  # fmt: skip
    block_length = block_length or max_new_tokens
    steps_per_block = steps // (max_new_tokens // block_length)
    previous = torch.cat([prompt, torch.full((2, max_new_tokens), MASK)], 1)
    for step, state in enumerate(states):
        was_unmasked = previous != MASK
        assert torch.equal(state[was_unmasked], previous[was_unmasked])  # never changes an unmasked token
        newly = (previous == MASK) & (state != MASK)
        expected = transfer_schedule(torch.tensor([block_length] * 2), steps_per_block)[:, step % steps_per_block]
        assert newly.sum(1).tolist() == expected.tolist()
        block = 4 + (step // steps_per_block) * block_length
        assert not newly[:, :block].any() and not newly[:, block + block_length :].any()  # inside its block
        previous = state
    assert len(states) == steps
    assert out.shape == (2, max_new_tokens) and not (out == MASK).any()
    assert torch.equal(out, previous[:, 4:])


def test_cfg_runs_the_unconditional_batch_with_the_prompt_masked():
    model = RandomLogits()
    sample(model, torch.tensor([[1, 2, 3]]), mask_token_id=MASK, max_new_tokens=2, cfg_scale=1.0)
    first = model.calls[0]
    assert first.shape == (2, 5)
    assert first[0, :3].tolist() == [1, 2, 3] and (first[1, :3] == MASK).all()


def test_greedy_is_deterministic_and_stops_after_eos_blocks():
    class AlwaysEos(nn.Module):
        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, VOCAB)
            logits[..., 9] = 1.0
            return SimpleNamespace(logits=logits)

    states: list[torch.Tensor] = []
    out = sample(AlwaysEos(), torch.tensor([[1, 2]]), mask_token_id=MASK, max_new_tokens=8, steps=8,
                 block_length=2, eos_token_id=9, on_step=states.append)
    assert out.tolist() == [[9] * 8] and len(states) == 2  # the first block holds EOS: the rest is skipped
    assert truncate_at_eos([4, 5, 9, 6], 9) == [4, 5] and truncate_at_eos([4, 5], [8, 9]) == [4, 5]


def test_bad_block_layout_is_an_error():
    with pytest.raises(ValueError, match="block_length"):
        sample(RandomLogits(), torch.tensor([[1]]), mask_token_id=MASK, max_new_tokens=10, block_length=3)
    with pytest.raises(ValueError, match="steps"):
        sample(RandomLogits(), torch.tensor([[1]]), mask_token_id=MASK, max_new_tokens=10, block_length=5, steps=3)


class Confident(nn.Module):
    """Logits that make the model sure (p ~ 1) of some positions and unsure (p ~ 1/V) of the others, by position."""

    def __init__(self, sure: set[int]) -> None:
        super().__init__()
        self.sure = sure

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, VOCAB)
        for position in self.sure:
            logits[:, position, 3] = 50.0
        logits[:, :, 5] += 0.01 * torch.arange(input_ids.shape[1])  # ties broken: later positions slightly surer
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("block_length", [None, 4])
def test_threshold_one_equals_one_token_per_step(block_length):
    """No confidence exceeds 1.0: exactly the most confident position each step, as the fixed schedule with one step
    per token (low_confidence, greedy) does."""
    prompt = torch.tensor([[1, 2, 3, 4], [5, 6, 1, 2]])
    fixed = sample(RandomLogits(seed=3), prompt, mask_token_id=MASK, max_new_tokens=8, steps=8,
                   block_length=block_length)  # fmt: skip
    decoded = decode(RandomLogits(seed=3), prompt, mask_token_id=MASK, max_new_tokens=8, threshold=1.0,
                     block_length=block_length)  # fmt: skip
    assert torch.equal(decoded.ids, fixed) and decoded.steps == 8


def test_threshold_unmasks_every_confident_position_at_once_and_reports_its_steps():
    prompt = torch.tensor([[1, 2]])
    states: list[torch.Tensor] = []
    decoded = decode(Confident(sure={2, 3, 5}), prompt, mask_token_id=MASK, max_new_tokens=4, threshold=0.9,
                     on_step=states.append)  # fmt: skip
    first = states[0][0, 2:]
    assert (first != MASK).tolist() == [True, True, False, True]  # the three sure positions in one step
    previous = states[0]
    for state in states[1:]:  # then one per step (none is confident), never changing an unmasked token
        assert torch.equal(state[previous != MASK], previous[previous != MASK])
        assert int(((previous == MASK) & (state != MASK)).sum()) == 1
        previous = state
    assert decoded.steps == len(states) == 2 and not (decoded.ids == MASK).any()


def test_threshold_needs_no_fixed_steps_and_a_probability_for_low_confidence():
    with pytest.raises(ValueError, match="threshold"):
        decode(RandomLogits(), torch.tensor([[1]]), mask_token_id=MASK, max_new_tokens=2, threshold=0.9, steps=2)
    with pytest.raises(ValueError, match="threshold"):
        decode(RandomLogits(), torch.tensor([[1]]), mask_token_id=MASK, max_new_tokens=2, threshold=1.5)
