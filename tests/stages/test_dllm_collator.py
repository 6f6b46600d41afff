"""DiffusionCollator: what is masked (answers only, at ratio t), what is padding (EOS answers), what is a label."""

from __future__ import annotations

import pytest
import torch

from dftune.stages.dllm import DiffusionCollator

MASK, EOS = 99, 98


def feature(prompt: list[int], answer: list[int], trailing: list[int] = ()) -> dict[str, list[int]]:
    """A tokenised record: prompt (-100), answer (labelled), then e.g. the template's trailing newline (-100)."""
    ids = prompt + answer + list(trailing)
    return {"input_ids": ids, "labels": [-100] * len(prompt) + answer + [-100] * len(trailing)}


def test_layout_prompt_never_masked_and_eos_padding_is_answer():
    features = [feature([1, 2, 3], [10, 11], trailing=[5]), feature([1, 2], [20, 21, 22, 23, 24])]
    collator = DiffusionCollator(MASK, EOS, generator=torch.Generator().manual_seed(0))
    for _ in range(200):
        batch = collator(features)
        # row 0: trailing newline dropped, padded to 7 with EOS; row 1: 2 prompt + 5 answer tokens.
        clean = torch.tensor([[1, 2, 3, 10, 11, EOS, EOS], [1, 2, 20, 21, 22, 23, 24]])
        answer = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
        assert torch.equal(batch["answer_mask"], answer)
        masked = batch["input_ids"] == MASK
        assert not (masked & ~answer).any()  # prompt tokens are never masked
        assert torch.equal(batch["input_ids"][~masked], clean[~masked])  # unmasked tokens are the clean ones
        assert torch.equal(batch["labels"][masked], clean[masked])  # labels: the clean token where masked
        assert (batch["labels"][~masked] == -100).all()  # and -100 everywhere else
        assert "attention_mask" not in batch  # attention over the whole padded row
        assert batch["t"].shape == (2,) and ((batch["t"] >= 1e-3) & (batch["t"] < 1)).all()


def test_masked_fraction_matches_t():
    """Given t, each of n answer tokens is masked independently with probability t: the masked fraction has
    mean t and standard deviation sqrt(t (1 - t) / n). Over 2000 rows of 64 answer tokens, the mean of
    (fraction - t) is within 5 standard errors of 0, and the t are uniform on [eps, 1) (mean 0.5005)."""
    eps, rows, n = 0.2, 2000, 64
    collator = DiffusionCollator(MASK, EOS, eps=eps, generator=torch.Generator().manual_seed(1))
    batch = collator([feature([1, 2], list(range(10, 10 + n)))] * rows)
    t = batch["t"].double()
    fraction = (batch["input_ids"][:, 2:] == MASK).double().mean(1)
    assert t.min() >= eps and t.max() < 1.0
    assert float(t.mean()) == pytest.approx((1 + eps) / 2, abs=5 * (1 - eps) / (12 * rows) ** 0.5)
    std_error = float((t * (1 - t) / n).mean().sqrt()) / rows**0.5
    assert abs(float((fraction - t).mean())) < 5 * std_error
    # and the masked fraction follows t row by row (correlation of a binomial proportion with its p)
    assert float(torch.corrcoef(torch.stack([fraction, t]))[0, 1]) > 0.95


def test_cosine_schedule_masks_at_its_ratio_with_its_elbo_weight():
    """cosine: t = 1 - cos(pi s / 2) for s uniform on [eps, 1), and the ELBO weight -alpha'(s) / (1 - alpha(s)) =
    (pi / 2) sin(pi s / 2) / t, checked against a finite difference of alpha(s) = cos(pi s / 2); the masked fraction
    still follows t; linear keeps t = s and weight 1 / t."""
    import math

    from dftune.stages.dllm import mask_ratio_and_weight

    collator = DiffusionCollator(MASK, EOS, eps=0.05, noise_schedule="cosine", generator=torch.Generator().manual_seed(2))
    batch = collator([feature([1, 2], list(range(10, 74)))] * 1000)
    t, weight = batch["t"].double(), batch["loss_weight"]
    s = torch.acos(1 - t) * 2 / math.pi  # the diffusion times back
    assert float(s.min()) >= 0.05 - 1e-6 and float(s.max()) < 1.0
    h = 1e-6
    alpha = lambda x: torch.cos(math.pi * x / 2)  # noqa: E731
    finite = -(alpha(s + h) - alpha(s - h)) / (2 * h) / (1 - alpha(s))
    torch.testing.assert_close(weight, finite, rtol=1e-5, atol=0)
    fraction = (batch["input_ids"][:, 2:] == MASK).double().mean(1)
    assert float(torch.corrcoef(torch.stack([fraction, t]))[0, 1]) > 0.95
    linear_t, linear_weight = mask_ratio_and_weight(torch.tensor([0.25, 0.5]), "linear")
    assert linear_t.tolist() == [0.25, 0.5] and linear_weight.tolist() == [4.0, 2.0]
