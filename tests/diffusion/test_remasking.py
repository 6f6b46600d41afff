"""Each remasking strategy on what it must guarantee: its confidence equals the formula (float64 reference), a step
unmasks the position it ranks first, threshold decoding per strategy, random is seeded and blind to the model;
min_new_tokens holds EOS back; classifier-free guidance is LLaDA's formula."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dftune.config.decoding_args import REMASKING, DecodingArguments
from dftune.diffusion import decode
from dftune.diffusion.remasking import confidence
from dftune.diffusion.sampler import guided_logits, model_logits

MASK, VOCAB, EOS = 7, 11, 9
REAL = [v for v in range(VOCAB) if v != MASK]  # the 10 tokens a prediction may be


def distribution(probabilities: list[float]) -> torch.Tensor:
    """Logits [VOCAB] (log p, -inf for p = 0) of a distribution over the real tokens, in order."""
    logits = torch.full((VOCAB,), -torch.inf)
    for token, p in zip(REAL, probabilities):
        logits[token] = math.log(p)
    return logits


# Three answer positions, ranked differently by each confidence (hand-computed):
#   Y = (0.55, 0.05 x 9): top-1 0.55, margin 0.50, entropy 1.677 nats
#   Z = (0.52, 0.48):     top-1 0.52, margin 0.04, entropy 0.692
#   X = (0.6, 0.2, 0.2):  top-1 0.60, margin 0.40, entropy 0.950
# low_confidence: X, Y, Z (answer positions 2, 0, 1); margin: Y, X, Z (0, 2, 1); entropy: Z, X, Y (1, 2, 0).
RANKED = torch.stack([distribution([0.55] + [0.05] * 9), distribution([0.52, 0.48]), distribution([0.6, 0.2, 0.2])])
ORDER = {"low_confidence": [2, 0, 1], "margin": [0, 2, 1], "entropy": [1, 2, 0]}


class Ranked(nn.Module):
    """The same RANKED logits at the three answer positions after a prompt of 2, whatever the input."""

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits[:, 2:] = RANKED
        return SimpleNamespace(logits=logits)


def unmask_order(states: list[torch.Tensor], prompt_length: int = 2) -> list[list[int]]:
    """The answer positions each step unmasked (row 0)."""
    order, previous = [], None
    for state in states:
        now = state[0, prompt_length:] != MASK
        newly = now if previous is None else now & ~previous
        order.append(newly.nonzero().squeeze(1).tolist())
        previous = now
    return order


def reference_confidence(logits: torch.Tensor, x0: torch.Tensor, remasking: str) -> torch.Tensor:
    """The formulas of remasking.py's table, in float64, one position at a time."""
    out = torch.empty(x0.shape, dtype=torch.float64)
    for index in itertools.product(*map(range, x0.shape)):
        p = torch.softmax(logits[index].double(), -1)
        ranked = sorted(p.tolist(), reverse=True)
        out[index] = {"low_confidence": float(p[x0[index]]), "margin": ranked[0] - ranked[1],
                      "entropy": sum(q * math.log(q) for q in p.tolist() if q > 0)}[remasking]  # fmt: skip
    return out


@pytest.mark.parametrize("remasking", ["low_confidence", "margin", "entropy"])
def test_confidence_equals_the_formula_in_float64(remasking):
    logits = torch.randn(3, 5, VOCAB, generator=torch.Generator().manual_seed(1)) * 3
    logits[..., MASK] = -torch.inf  # as the sampler hands them over
    x0 = torch.randint(0, VOCAB - 1, (3, 5), generator=torch.Generator().manual_seed(2))
    ours = confidence(logits, x0, remasking)
    torch.testing.assert_close(ours.double(), reference_confidence(logits, x0, remasking), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("remasking", ["low_confidence", "margin", "entropy"])
def test_each_step_unmasks_the_position_its_confidence_ranks_first(remasking):
    """One token per step: the largest top-1 probability, the largest top1 - top2 gap, the lowest entropy first."""
    states: list[torch.Tensor] = []
    decode(Ranked(), torch.tensor([[1, 2]]), mask_token_id=MASK, max_new_tokens=3, remasking=remasking,
           on_step=states.append)  # fmt: skip
    assert unmask_order(states) == [[position] for position in ORDER[remasking]]


@pytest.mark.parametrize(
    "remasking, threshold, first_step",
    [("low_confidence", 0.54, [0, 2]), ("margin", 0.3, [0, 2]), ("margin", 0.45, [0]), ("entropy", 0.8, [1]),
     ("entropy", 1.0, [1, 2]), ("entropy", 2.0, [0, 1, 2]), ("margin", 0.99, [0])],
)  # fmt: skip
def test_threshold_keeps_every_position_past_it_for_each_strategy(remasking, threshold, first_step):
    """margin: top1 - top2 above the threshold; entropy: entropy below it, in nats; at least the best one."""
    states: list[torch.Tensor] = []
    out = decode(Ranked(), torch.tensor([[1, 2]]), mask_token_id=MASK, max_new_tokens=3, remasking=remasking,
                 threshold=threshold, on_step=states.append)  # fmt: skip
    assert unmask_order(states)[0] == first_step
    assert not (out.ids == MASK).any() and out.steps == len(states)


@pytest.mark.parametrize("remasking", ["margin", "entropy"])
def test_threshold_unreachable_is_one_token_per_step(remasking):
    """No margin exceeds 1 and no entropy is below 1e-9 nats here: the best position each step, as fixed steps."""
    fixed: list[torch.Tensor] = []
    decode(Ranked(), torch.tensor([[1, 2]]), mask_token_id=MASK, max_new_tokens=3, remasking=remasking,
           on_step=fixed.append)  # fmt: skip
    by_threshold: list[torch.Tensor] = []
    decode(Ranked(), torch.tensor([[1, 2]]), mask_token_id=MASK, max_new_tokens=3, remasking=remasking,
           threshold=1.0 if remasking == "margin" else 1e-9, on_step=by_threshold.append)  # fmt: skip
    assert len(by_threshold) == 3 and all(torch.equal(a, b) for a, b in zip(fixed, by_threshold))


def test_threshold_refuses_random_and_probability_thresholds_above_one():
    with pytest.raises(ValueError, match="random remasking has none"):
        DecodingArguments(remasking="random", threshold=0.5)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\] with remasking margin"):
        DecodingArguments(remasking="margin", threshold=1.5)
    assert DecodingArguments(remasking="entropy", threshold=3.0).threshold == 3.0  # nats: any positive number


class Scaled(nn.Module):
    """Fixed random logits times `scale`: another confidence for every position (and, negated, other tokens)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        base = torch.randn(*input_ids.shape, VOCAB, generator=torch.Generator().manual_seed(5))
        return SimpleNamespace(logits=self.scale * base)


def random_order(model: nn.Module, seed: int) -> list[list[int]]:
    states: list[torch.Tensor] = []
    decode(model, torch.tensor([[1, 2]]), mask_token_id=MASK, max_new_tokens=12, steps=6, remasking="random",
           generator=torch.Generator().manual_seed(seed), on_step=states.append)  # fmt: skip
    return unmask_order(states)


def test_random_is_seeded_reproducible_and_blind_to_confidence():
    order = random_order(Scaled(1.0), seed=0)
    assert [len(step) for step in order] == [2] * 6
    assert random_order(Scaled(1.0), seed=0) == order  # the same seed, the same order
    assert random_order(Scaled(-4.0), seed=0) == order  # other confidences (and tokens): the same order
    assert random_order(Scaled(1.0), seed=1) != order  # another seed: another order (12! of them)


class EosLover(nn.Module):
    """EOS far ahead everywhere, random logits for the rest."""

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        logits = torch.randn(*input_ids.shape, VOCAB, generator=torch.Generator().manual_seed(input_ids.shape[1]))
        logits[..., EOS] = 50.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("remasking", REMASKING)
@pytest.mark.parametrize("min_new_tokens, block_length, temperature", [(3, None, 0.0), (5, 2, 0.8), (8, 4, 0.0)])
def test_min_new_tokens_never_lets_eos_in_before_it(remasking, min_new_tokens, block_length, temperature):
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = decode(EosLover(), prompt, mask_token_id=MASK, max_new_tokens=8, block_length=block_length,
                 remasking=remasking, temperature=temperature, min_new_tokens=min_new_tokens, eos_token_id=[EOS, 10],
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.isin(out.ids[:, :min_new_tokens], torch.tensor([EOS, 10])).any()
    assert (out.ids[:, min_new_tokens:] == EOS).all()  # the model's EOS after it: held back, not taken away
    assert not (out.ids == MASK).any()


def test_min_new_tokens_needs_an_eos_and_fits_in_max_new_tokens():
    with pytest.raises(ValueError, match="needs an eos_token_id"):
        decode(EosLover(), torch.tensor([[1]]), mask_token_id=MASK, max_new_tokens=4, min_new_tokens=2)
    with pytest.raises(ValueError, match="above max_new_tokens"):
        DecodingArguments(max_new_tokens=4, min_new_tokens=5)


class Mixer(nn.Module):
    """A bidirectional toy LM: logits_i = W (e(x_i) + mean_j e(x_j)), so every logit depends on the prompt."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():  # the same weights for every Mixer, torch's global RNG left as it was
            torch.manual_seed(0)
            self.embed, self.out = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        h = self.embed(input_ids)
        return SimpleNamespace(logits=self.out(h + h.mean(1, keepdim=True)))


@pytest.mark.parametrize("cfg_scale", [0.5, 2.0])
def test_guided_logits_equal_llada_formula_on_a_float64_reference(cfg_scale):
    """u + (cfg_scale + 1) (c - u), c the logits of x, u those of x with its prompt (3 tokens) masked."""
    model = Mixer()
    x = torch.tensor([[1, 2, 3, MASK, 4, MASK], [5, 6, 1, 2, MASK, MASK]])
    ours = guided_logits(model, x, 3, MASK, cfg_scale)
    reference = Mixer().double()
    unconditional = x.clone()
    unconditional[:, :3] = MASK
    c, u = reference(x).logits, reference(unconditional).logits
    torch.testing.assert_close(ours.double(), u + (cfg_scale + 1) * (c - u), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, model(x).logits)  # guidance changed them


def test_cfg_scale_zero_is_unguided_exactly():
    model, x = Mixer(), torch.tensor([[1, 2, 3, MASK, MASK]])
    assert torch.equal(guided_logits(model, x, 3, MASK, 0.0), model_logits(model, x))
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(decode(model, prompt, mask_token_id=MASK, max_new_tokens=4, cfg_scale=0.0).ids,
                       decode(model, prompt, mask_token_id=MASK, max_new_tokens=4).ids)  # fmt: skip


class PromptSensitive(nn.Module):
    """Answer logits: token 1 at 1.0 and token 2 at 0.9 given the prompt; token 2 at 0.0 with the prompt masked.
    Guided at scale 1: token 1 at 1 + 2 (1 - 1) = 1, token 2 at 0 + 2 (0.9 - 0) = 1.8: guidance flips the choice."""

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits[..., 1] = 1.0
        logits[..., 2] = torch.where(input_ids[:, :1] == MASK, 0.0, 0.9)  # [B, 1]: the prompt's first token
        return SimpleNamespace(logits=logits)


def test_cfg_reaches_the_choices_of_decode():
    prompt = torch.tensor([[3, 4]])
    assert decode(PromptSensitive(), prompt, mask_token_id=MASK, max_new_tokens=3).ids.tolist() == [[1, 1, 1]]
    guided = decode(PromptSensitive(), prompt, mask_token_id=MASK, max_new_tokens=3, cfg_scale=1.0)
    assert guided.ids.tolist() == [[2, 2, 2]]
