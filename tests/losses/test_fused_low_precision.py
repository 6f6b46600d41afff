"""The fused head on bf16 and fp16 inputs against a float64 reference written from the formula (loss_reference).

The reference sees the same rounded inputs, upcast to float64, so the error measured is the head's own: its one
rounding of the [chunk, V] logits to the inputs' dtype (the matmul's output) and of the returned gradients; CE,
softmax, the loss and the weight gradient accumulate in float32. Tolerances are multiples of the dtype's unit
roundoff u (bf16: 2**-8, fp16: 2**-11):

- loss: relative error <= 4u. Measured at most 1.8u (dft, whose loss is small because its weights are p);
- each gradient: max |error| <= 8u * max |reference|. Measured at most 5.5u (bft's hidden gradient).

A head that computed softmax or CE in the inputs' dtype, or lost the float32 accumulation, exceeds these.
"""

from __future__ import annotations

import loss_reference as ref
import pytest
import torch

from dftune.losses import fused_linear_loss

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}

# objective -> (the float64 reference from its formula, on logits and labels; the objective's keyword settings)
REFERENCES = {
    "sft": (lambda logits, labels: ref.dft(logits, labels, alpha=0.0), {}),
    "dft": (lambda logits, labels: ref.dft(logits, labels, alpha=1.0), {}),
    "bft": (lambda logits, labels: ref.bft(logits, labels, group_size=3), {"group_size": 3}),
    "chord": (ref.chord, {}),
    "deft": (ref.deft, {}),
    "eaft": (lambda logits, labels: ref.eaft(logits, labels, alpha=1.0, top_k=20), {}),
}


def low_precision_batch(dtype: torch.dtype, B=3, T=21, H=32, V=301, scale=3.0, seed=0):
    """hidden [B, T, H] and weight [V, H] rounded to `dtype` (logits up to ~14: confident rows), labels with a
    prompt and an ignored span; a chunk of 16 does not divide the targets."""
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(B, T, H, generator=g, dtype=torch.float64) * scale).to(dtype)
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) / H**0.5).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = -100
    labels[1, 10:14] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_fused_low_precision_against_float64_formula(name, dtype):
    formula, settings = REFERENCES[name]
    u = UNIT_ROUNDOFF[dtype]
    hidden, weight, labels = low_precision_batch(dtype)
    exact_hidden, exact_weight = hidden.double().requires_grad_(), weight.double().requires_grad_()
    expected, _ = formula(exact_hidden @ exact_weight.T, labels)
    expected_grads = torch.autograd.grad(expected, (exact_hidden, exact_weight))

    hidden.requires_grad_(), weight.requires_grad_()
    out = fused_linear_loss(hidden, weight, labels, objective=name, chunk_size=16, **settings)
    grads = torch.autograd.grad(out.loss, (hidden, weight))

    assert out.loss.dtype == torch.float32 and grads[0].dtype == grads[1].dtype == dtype
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=4 * u, atol=0.0)
    for got, want, what in zip(grads, expected_grads, ("hidden", "weight")):
        torch.testing.assert_close(got.double(), want, rtol=0.0, atol=8 * u * want.abs().max().item(), msg=what)
