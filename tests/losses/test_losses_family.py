"""The objective family beyond SFT/DFT/BFT against loop references written from their formulas (float64)."""

from __future__ import annotations

import math

import pytest
import torch

import loss_reference as ref
from dftune.losses import asft_loss, chord_loss, deft_loss, dft_loss, fused_linear_loss, iw_sft_loss, psft_loss, sft_loss
from dftune.losses.objectives.eaft import eaft_loss
from test_losses_objectives import SCALES, SHAPES, assert_same_loss_and_grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("alpha", "top_k"), [(1.0, 20), (0.5, 3), (2.0, 100)])  # 100 > V: all the logits
@pytest.mark.parametrize("num_items", [None, 40])
def test_eaft_matches_reference(shape, scale, alpha, top_k, num_items):
    logits, labels = ref.make_batch(*shape, scale=scale)
    assert_same_loss_and_grad(
        lambda x, y: eaft_loss(x, y, alpha=alpha, top_k=top_k, num_items_in_batch=num_items),
        lambda x, y: ref.eaft(x, y, alpha=alpha, top_k=top_k, num_items=num_items),
        logits,
        labels,
    )


def test_eaft_uniform_logits_closed_form():
    """Uniform logits: the top-k softmax is uniform over k, H = log k, so EAFT = (log k / 3) ** alpha * log V."""
    vocab, k = 8, 5
    logits = torch.zeros(2, 5, vocab, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, 4, -100, 5], [-100, -100, 1, 1, -100]])
    out = eaft_loss(logits, labels, alpha=2.0, top_k=k)
    assert float(out.loss) == pytest.approx((math.log(k) / 3.0) ** 2 * math.log(vocab), rel=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("alpha", "power"), [(1.0, 2.0), (0.7, 3.0), (1.0, 0.5)])
def test_dft_power_matches_reference(shape, scale, alpha, power):
    logits, labels = ref.make_batch(*shape, scale=scale)

    def reference(x, y):
        loss, metrics = ref.dft(x, y, alpha=alpha, power=power)
        return loss, metrics | {"dft_alpha": alpha}

    assert_same_loss_and_grad(lambda x, y: dft_loss(x, y, alpha=alpha, power=power), reference, logits, labels)


def test_dft_power_zero_is_sft():
    """sg(p) ** 0 = 1: every weight is alpha + 1 - alpha = 1, whatever alpha."""
    logits, labels = ref.make_batch(3, 17, 29)
    torch.testing.assert_close(dft_loss(logits, labels, alpha=0.4, power=0.0).loss, sft_loss(logits, labels).loss,
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("alpha", [0.1, 1.5])
@pytest.mark.parametrize("num_items", [None, 40])
def test_asft_matches_reference(shape, scale, alpha, num_items):
    logits, labels = ref.make_batch(*shape, scale=scale)
    ref_logits = ref.make_batch(*shape, scale=scale, seed=9)[0].detach()
    assert_same_loss_and_grad(
        lambda x, y: asft_loss(x, y, ref_logits, alpha=alpha, num_items_in_batch=num_items),
        lambda x, y: ref.asft(x, y, ref_logits, alpha=alpha, num_items=num_items),
        logits,
        labels,
    )


def test_asft_against_itself_is_dft():
    """KL(p || p) = 0 and its gradient p - p = 0: with the model as its own reference ASFT is DFT, fused too."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(17, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 17, (3, 9), generator=gen)
    labels[:, :2] = -100
    logits = hidden @ weight.T
    dft = dft_loss(logits, labels)
    asft = asft_loss(logits, labels, logits.detach(), alpha=0.5)
    assert float(asft.metrics["asft_kl"]) == 0.0
    torch.testing.assert_close(asft.loss, dft.loss, rtol=1e-15, atol=0)
    fused = fused_linear_loss(hidden, weight, labels, objective="asft", alpha=0.5, chunk_size=4,
                              ref_hidden=hidden.detach(), ref_weight=weight.detach())
    assert abs(float(fused.metrics["asft_kl"])) < 1e-15
    for got, expected in zip(torch.autograd.grad(fused.loss, (hidden, weight)), torch.autograd.grad(dft.loss, (hidden, weight))):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_linear_alpha_schedule_rises_from_sft_to_dft():
    """dft_alpha_schedule linear over 4 steps: alpha 0 (SFT) at step 0, alpha / 2 at step 2, alpha from step 4."""
    from dftune.losses import OBJECTIVES

    dft = OBJECTIVES["dft"]
    kwargs = {"alpha": 0.8, "alpha_schedule": "linear", "alpha_warmup_steps": 4}
    assert [dft.kwargs_at(kwargs, step)["alpha"] for step in (0, 2, 4, 9)] == [0.0, 0.4, 0.8, 0.8]
    assert dft.kwargs_at({"alpha": 0.8}, 0) == {"alpha": 0.8}  # constant: as given, nothing else passed on
    logits, labels = ref.make_batch(3, 17, 29)
    at_start = dft_loss(logits, labels, **dft.kwargs_at(kwargs, 0))
    torch.testing.assert_close(at_start.loss, sft_loss(logits, labels).loss, rtol=1e-15, atol=0)


def test_alpha_schedule_edges():
    """Constant ignores a warmup; linear over 0 steps is alpha from the start (no division by 0), over 1 step SFT
    at step 0 then alpha; an alpha not given rises to the default's. (mutmut's survivors in `alpha_in_force`.)"""
    from dftune.losses import OBJECTIVES
    from dftune.losses.objectives.dft import ALPHA

    def alpha_at(step: int, **kwargs) -> float:
        return OBJECTIVES["dft"].kwargs_at(kwargs, step)["alpha"]

    assert alpha_at(0, alpha=0.8, alpha_schedule="constant", alpha_warmup_steps=4) == 0.8
    assert [alpha_at(s, alpha=0.8, alpha_schedule="linear", alpha_warmup_steps=0) for s in (0, 1)] == [0.8, 0.8]
    assert [alpha_at(s, alpha=0.8, alpha_schedule="linear", alpha_warmup_steps=1) for s in (0, 1, 2)] == [0, 0.8, 0.8]
    assert alpha_at(2, alpha_schedule="linear", alpha_warmup_steps=4) == ALPHA.default / 2


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("alpha", "min_weight"), [(1.0, 0.1), (0.8, 0.5), (1.0, 1.0)])
def test_dft_min_weight_matches_reference(shape, scale, alpha, min_weight):
    logits, labels = ref.make_batch(*shape, scale=scale)

    def reference(x, y):
        loss, metrics = ref.dft(x, y, alpha=alpha, min_weight=min_weight)
        return loss, metrics | {"dft_alpha": alpha}

    assert_same_loss_and_grad(lambda x, y: dft_loss(x, y, alpha=alpha, min_weight=min_weight), reference,
                              logits, labels)


def test_dft_min_weight_one_is_sft_and_floors_a_starved_token():
    """Floor 1 makes every weight 1 (SFT); floor 0.1 gives a token at p = 1e-3 weight 0.1 instead of 1e-3."""
    logits, labels = ref.make_batch(3, 17, 29)
    torch.testing.assert_close(dft_loss(logits, labels, min_weight=1.0).loss, sft_loss(logits, labels).loss,
                               rtol=1e-15, atol=0)
    starved = torch.full((1, 2, 2), 0.0, dtype=torch.float64)
    starved[0, 0, 0] = math.log(999.0)  # p(token 1) = 1 / 1000 at position 0
    labels = torch.tensor([[-100, 1]])
    out = dft_loss(starved, labels, min_weight=0.1)
    assert float(out.metrics["mean_token_weight"]) == pytest.approx(0.1, rel=1e-14)
    assert float(out.loss) == pytest.approx(0.1 * math.log(1000.0), rel=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("num_items", [None, 40])
def test_chord_matches_reference(shape, scale, num_items):
    logits, labels = ref.make_batch(*shape, scale=scale)
    assert_same_loss_and_grad(lambda x, y: chord_loss(x, y, num_items_in_batch=num_items),
                              lambda x, y: ref.chord(x, y, num_items=num_items), logits, labels)


def test_chord_uniform_logits_closed_form():
    """Uniform logits over V: p = 1 / V at every target, so CHORD = (1/V)(1 - 1/V) log V."""
    vocab = 8
    logits = torch.zeros(2, 5, vocab, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, 4, -100, 5], [-100, -100, 1, 1, -100]])
    expected = (1 / vocab) * (1 - 1 / vocab) * math.log(vocab)
    assert float(chord_loss(logits, labels).loss) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.3])  # 0.3: policy and old policy close, few ratios clipped
@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, 0.28), (0.5, 0.05)])
@pytest.mark.parametrize("num_items", [None, 40])
def test_psft_matches_reference_and_the_clipped_objective_gradient(shape, scale, eps_low, eps_high, num_items):
    logits, labels = ref.make_batch(*shape, scale=scale)
    old = (logits.detach() + 0.3 * ref.make_batch(*shape, seed=9)[0].detach())  # a nearby old policy
    assert_same_loss_and_grad(
        lambda x, y: psft_loss(x, y, old, eps_low=eps_low, eps_high=eps_high, num_items_in_batch=num_items),
        lambda x, y: ref.psft(x, y, old, eps_low=eps_low, eps_high=eps_high, num_items=num_items), logits, labels)
    # The gradient is the paper's: d/dlogits of -min(r, clip(r, 1 - eps_low, 1 + eps_high)) / N.
    out = psft_loss(logits, labels, old, eps_low=eps_low, eps_high=eps_high, num_items_in_batch=num_items)
    (grad,) = torch.autograd.grad(out.loss, logits)
    (paper,) = torch.autograd.grad(ref.psft_clipped(logits, labels, old, eps_low, eps_high, num_items), logits)
    torch.testing.assert_close(grad, paper, rtol=1e-10, atol=1e-14)
    assert 0.0 < float(out.metrics["psft_clipped_high"]) < 1.0 or scale == 0.3


def test_psft_against_itself_is_sft():
    """p_old = p: every ratio is 1, inside the clip: PSFT is SFT (value and gradient)."""
    logits, labels = ref.make_batch(3, 17, 29)
    out, sft = psft_loss(logits, labels, logits.detach()), sft_loss(logits, labels)
    torch.testing.assert_close(out.loss, sft.loss, rtol=1e-14, atol=0)
    assert float(out.metrics["psft_ratio"]) == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("temperature", "max_weight"), [(1.0, 16.0), (2.0, 1.5), (0.5, 100.0)])
@pytest.mark.parametrize("num_items", [None, 40])
def test_iw_sft_matches_reference(shape, scale, temperature, max_weight, num_items):
    logits, labels = ref.make_batch(*shape, scale=scale)
    ref_logits = ref.make_batch(*shape, scale=scale, seed=9)[0].detach()
    assert_same_loss_and_grad(
        lambda x, y: iw_sft_loss(x, y, ref_logits, temperature=temperature, max_weight=max_weight,
                                 num_items_in_batch=num_items),
        lambda x, y: ref.iw_sft(x, y, ref_logits, temperature=temperature, max_weight=max_weight, num_items=num_items),
        logits, labels)


def test_iw_sft_temperature_zero_or_itself_is_sft():
    logits, labels = ref.make_batch(3, 17, 29)
    other = ref.make_batch(3, 17, 29, seed=4)[0].detach()
    sft = sft_loss(logits, labels).loss
    torch.testing.assert_close(iw_sft_loss(logits, labels, other, temperature=0.0).loss, sft, rtol=1e-14, atol=0)
    torch.testing.assert_close(iw_sft_loss(logits, labels, logits.detach()).loss, sft, rtol=1e-14, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("num_items", [None, 40])
def test_deft_matches_reference_and_the_qlog_gradient(shape, scale, num_items):
    logits, labels = ref.make_batch(*shape, scale=scale)
    assert_same_loss_and_grad(lambda x, y: deft_loss(x, y, num_items_in_batch=num_items),
                              lambda x, y: ref.deft(x, y, num_items=num_items), logits, labels)
    (grad,) = torch.autograd.grad(deft_loss(logits, labels, num_items_in_batch=num_items).loss, logits)
    (paper,) = torch.autograd.grad(ref.deft_qlog(logits, labels, num_items), logits)
    torch.testing.assert_close(grad, paper, rtol=1e-10, atol=1e-14)


def test_deft_uniform_logits_closed_form():
    """Uniform logits over V: a = 1/V and p = 1/V, so DEFT's value is (1/V) ** (1/V) * log V."""
    vocab = 8
    logits = torch.zeros(2, 5, vocab, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, 4, -100, 5], [-100, -100, 1, 1, -100]])
    expected = (1 / vocab) ** (1 / vocab) * math.log(vocab)
    assert float(deft_loss(logits, labels).loss) == pytest.approx(expected, rel=1e-14)
