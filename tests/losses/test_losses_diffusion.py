"""masked_diffusion_loss against the loop reference in loss_reference.py: value, gradient and metrics."""

from __future__ import annotations

import pytest
import torch

import loss_reference as ref
from dftune.losses import masked_diffusion_loss


@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_masked_diffusion_matches_reference(scale):
    """Prompt positions (the first 4) are never masked; answer positions are masked with ratio t_b."""
    batch, length, vocab, prompt = 3, 17, 29, 4
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64) * scale).requires_grad_()
    tokens = torch.randint(0, vocab, (batch, length), generator=gen)
    t = torch.tensor([0.9, 0.05, 0.4], dtype=torch.float64)
    masked = torch.rand(batch, length, generator=gen, dtype=torch.float64) < t[:, None]
    masked[:, :prompt] = False
    masked[1] = False  # a sample with nothing masked
    labels = tokens.masked_fill(~masked, -100)
    num_answer_tokens = batch * (length - prompt)

    out = masked_diffusion_loss(logits, labels, t, num_answer_tokens=num_answer_tokens)
    ref_loss, ref_metrics = ref.masked_diffusion(logits, labels, t, num_answer_tokens)
    (grad,) = torch.autograd.grad(out.loss, logits)
    (ref_grad,) = torch.autograd.grad(ref_loss, logits)
    torch.testing.assert_close(out.loss.detach(), ref_loss.detach(), rtol=1e-9, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-9 * float(ref_grad.abs().max()))
    assert out.metrics.keys() == ref_metrics.keys()
    for name, value in ref_metrics.items():
        assert float(out.metrics[name]) == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert out.num_tokens == int(masked.sum()) and out.num_samples == batch


def test_shifted_logits_match_a_loop_reference():
    """AR-to-diffusion (Dream-style): the masked token at position i is predicted by logits[:, i - 1]. Loop reference:
    sum over masked i of CE(logits[b, i - 1], labels[b, i]) / t_b / num_answer_tokens; fused equals it too."""
    from dftune.losses import diffusion_objective, fused_diffusion_objective

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (2, 9), generator=gen).masked_fill(torch.rand(2, 9, generator=gen) < 0.5, -100)
    labels[:, :3] = -100  # the prompt
    t = torch.tensor([0.3, 0.8])
    logits = hidden @ weight.T
    expected = sum(
        -torch.log_softmax(logits[b, i - 1], dim=-1)[labels[b, i]] / t[b].double()
        for b in range(2) for i in range(1, 9) if labels[b, i] != -100
    ) / 12  # fmt: skip
    out = diffusion_objective("sft", logits, labels, t, num_answer_tokens=12, shift=True)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=0)
    fused = fused_diffusion_objective("sft", hidden, weight, labels, t, num_answer_tokens=12, shift=True, chunk_size=3)
    torch.testing.assert_close(fused.loss, expected, rtol=1e-12, atol=0)
    for got, want in zip(torch.autograd.grad(fused.loss, (hidden, weight)), torch.autograd.grad(expected, (hidden, weight))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("shift", [False, True])
def test_a_ratio_per_position_weighs_each_target_by_its_own(shift):
    """Block diffusion's t [B, T] (one ratio per block): each masked label i adds CE / t[b, i], its own position's
    ratio (also when the logits are shifted: the weight moves with the label). Fused and unfused equal the loop."""
    from dftune.losses import diffusion_objective, fused_diffusion_objective

    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 10, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 10), generator=gen).masked_fill(torch.rand(3, 10, generator=gen) < 0.4, -100)
    labels[:, :2] = -100
    t = (0.1 + 0.8 * torch.rand(3, 5, generator=gen, dtype=torch.float64)).repeat_interleave(2, dim=1)  # blocks of 2
    logits = hidden @ weight.T
    expected = sum(
        -torch.log_softmax(logits[b, i - shift], dim=-1)[labels[b, i]] / t[b, i]
        for b in range(3) for i in range(10) if labels[b, i] != -100
    ) / 17  # fmt: skip
    out = diffusion_objective("sft", logits, labels, t, num_answer_tokens=17, shift=shift)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=0)
    fused = fused_diffusion_objective("sft", hidden, weight, labels, t, num_answer_tokens=17, shift=shift,
                                      row_weight=1.0 / t, chunk_size=4)  # fmt: skip
    torch.testing.assert_close(fused.loss, expected, rtol=1e-12, atol=0)
    wanted = torch.autograd.grad(expected, (hidden, weight), retain_graph=True)
    for got, want in zip(torch.autograd.grad(out.loss, (hidden, weight), retain_graph=True), wanted):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    for got, want in zip(torch.autograd.grad(fused.loss, (hidden, weight)), wanted):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
