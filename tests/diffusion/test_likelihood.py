"""The masked-diffusion ELBO (`dftune.diffusion.likelihood`) against float64 references written from the formula:
a loop over the same draws, and the exact expectation enumerated over every mask set of a short answer."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dftune.diffusion.likelihood import elbo, masked_answer_terms, sample_masks

VOCAB, MASK = 5, 5  # ids 0..4 are tokens, 5 is the mask


class TinyBidirectional(nn.Module):
    """A float64 bidirectional toy LM: every position's logits depend on its own token, its position and the mean
    embedding of the whole row, so masking any position changes every prediction."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(VOCAB + 1, 8, generator=g, dtype=torch.float64))
        self.position = nn.Parameter(torch.randn(16, 8, generator=g, dtype=torch.float64))
        self.out = nn.Parameter(torch.randn(8, VOCAB + 1, generator=g, dtype=torch.float64))
        self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        h = self.embed[input_ids] + self.position[: input_ids.shape[1]]  # [B, S, 8]
        h = torch.tanh(h + h.mean(1, keepdim=True))
        return SimpleNamespace(logits=h @ self.out)  # [B, S, V + 1]


def _answer_log_probs(model: nn.Module, prompt: list[int], row: list[int], shift: bool) -> torch.Tensor:
    """[L, V + 1] float64 log-probabilities at the answer positions of one noised row, from the formula."""
    logits = model(torch.tensor([prompt + row])).logits[0]
    if shift:  # position i predicted from i - 1
        logits = torch.cat([logits[:1], logits[:-1]])
    return torch.log_softmax(logits[len(prompt) :], -1)


def test_terms_are_the_weighted_sums_of_masked_log_probs() -> None:
    """Awkward shape (N=7, L=5, V=11), some rows with nothing masked: each term is the loop sum."""
    g = torch.Generator().manual_seed(1)
    log_probs = torch.log_softmax(torch.randn(7, 5, 11, generator=g, dtype=torch.float64), -1)
    answer = torch.randint(0, 11, (5,), generator=g)
    masked = torch.rand(7, 5, generator=g) < 0.4
    masked[0] = False
    weight = torch.rand(7, generator=g, dtype=torch.float64) * 3
    expected = [
        sum(float(weight[n]) * float(log_probs[n, i, answer[i]]) for i in range(5) if masked[n, i]) for n in range(7)
    ]
    got = masked_answer_terms(log_probs, answer, masked, weight)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert got[0] == 0.0


@pytest.mark.parametrize(("scheme", "shift"), [("l", False), ("t", True)])
def test_elbo_is_the_mean_of_its_draws(scheme: str, shift: bool) -> None:
    """The same seeded draws, recomputed row by row in float64 (batch_size 7 splits 30 samples unevenly)."""
    model, prompt, answer = TinyBidirectional(), [1, 4], [2, 0, 3]
    masked, weight = sample_masks(3, 30, scheme, torch.Generator().manual_seed(3))
    terms = []
    for n in range(30):
        row = [MASK if masked[n, i] else answer[i] for i in range(3)]
        logp = _answer_log_probs(model, prompt, row, shift)
        terms.append(float(weight[n]) * sum(float(logp[i, answer[i]]) for i in range(3) if masked[n, i]))
    got = elbo(model, torch.tensor(prompt), torch.tensor(answer), mask_token_id=MASK, samples=30, scheme=scheme,
               batch_size=7, shift_logits=shift, generator=torch.Generator().manual_seed(3))
    assert got == pytest.approx(sum(terms) / 30, abs=1e-12)


@pytest.mark.parametrize(("scheme", "rel"), [("l", 0.02), ("t", 0.04)])
def test_each_mask_set_weighs_its_expectation_coefficient(scheme: str, rel: float) -> None:
    """E[weight * 1{masked == m}] = int_0^1 t^k (1-t)^(L-k) / t dt = 1 / (k * C(L, k)) for every set m of size
    k >= 1 (L = 3: 1/3 for one position, 1/6 for two, 1/3 for all three), for both schemes."""
    masked, weight = sample_masks(3, 400_000, scheme, torch.Generator().manual_seed(5))
    for bits in itertools.product([False, True], repeat=3):
        k = sum(bits)
        if k == 0:
            continue
        hit = (masked == torch.tensor(bits)).all(1)
        assert float((weight * hit).mean()) == pytest.approx(1 / (k * math.comb(3, k)), rel=rel), bits


def test_elbo_converges_to_the_enumerated_expectation() -> None:
    """Exact ELBO = sum over non-empty mask sets m of 1 / (|m| * C(L, |m|)) * sum_{i in m} log p(a_i | p, a_m),
    each term from a float64 forward; the estimate with 20000 draws lies within 4 standard errors of it."""
    model, prompt, answer = TinyBidirectional(), [3], [1, 1, 4]
    exact = 0.0
    for bits in itertools.product([False, True], repeat=3):
        k = sum(bits)
        if k:
            logp = _answer_log_probs(model, prompt, [MASK if b else a for b, a in zip(bits, answer)], False)
            exact += sum(float(logp[i, answer[i]]) for i in range(3) if bits[i]) / (k * math.comb(3, k))
    masked, weight = sample_masks(3, 20_000, "l", torch.Generator().manual_seed(7))
    x = torch.cat([torch.tensor(prompt).expand(20_000, -1), torch.where(masked, MASK, torch.tensor(answer))], 1)
    terms = masked_answer_terms(torch.log_softmax(model(x).logits[:, 1:], -1), torch.tensor(answer), masked, weight)
    estimate = elbo(model, torch.tensor(prompt), torch.tensor(answer), mask_token_id=MASK, samples=20_000,
                    batch_size=5000, generator=torch.Generator().manual_seed(7))
    assert estimate == pytest.approx(float(terms.mean()), abs=1e-9)
    assert abs(estimate - exact) < 4 * float(terms.std()) / math.sqrt(20_000)
    assert exact < 0.0


def test_an_empty_answer_has_likelihood_zero() -> None:
    assert elbo(TinyBidirectional(), torch.tensor([1]), torch.tensor([], dtype=torch.long), mask_token_id=MASK) == 0.0
