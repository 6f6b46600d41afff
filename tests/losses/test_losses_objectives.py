"""SFT, DFT and BFT against the loop references in loss_reference.py: value, gradient and metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import loss_reference as ref
from dftune.errors import DftuneError
from dftune.losses import (
    OBJECTIVES,
    bft_loss,
    compute_objective,
    dft_loss,
    lowest_group_confidence,
    sft_loss,
)

SHAPES = [(3, 17, 29), (4, 12, 5)]  # odd shapes; row 1 of each batch has no target
SCALES = [1.0, 50.0]  # 50: very confident logits, p_correct near 0 or 1


def assert_rel_close(actual: Tensor, expected: Tensor, rel: float = 1e-9) -> None:
    """Elementwise within rel of each value, or of the tensor's largest value for entries near zero."""
    expected = expected.detach()
    atol = rel * float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual.detach(), expected, rtol=rel, atol=atol)


def assert_same_loss_and_grad(fn, ref_fn, logits: Tensor, labels: Tensor) -> None:
    out = fn(logits, labels)
    (grad,) = torch.autograd.grad(out.loss, logits)
    ref_loss, ref_metrics = ref_fn(logits, labels)
    (ref_grad,) = torch.autograd.grad(ref_loss, logits)
    assert out.loss.dtype == torch.float64
    assert_rel_close(out.loss, ref_loss)
    assert_rel_close(grad, ref_grad)
    assert out.metrics.keys() == ref_metrics.keys()
    for name, value in ref_metrics.items():
        assert float(out.metrics[name]) == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert out.num_tokens == int((labels[:, 1:] != -100).sum())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("num_items", [None, 40])
def test_sft_matches_reference(shape, scale, num_items):
    logits, labels = ref.make_batch(*shape, scale=scale)
    assert_same_loss_and_grad(
        lambda x, y: sft_loss(x, y, num_items_in_batch=num_items),
        lambda x, y: ref.dft(x, y, alpha=0.0, num_items=num_items),
        logits,
        labels,
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("num_items", [None, 40])
def test_dft_matches_reference(shape, scale, alpha, num_items):
    logits, labels = ref.make_batch(*shape, scale=scale, seed=1)

    def reference(x, y):
        loss, metrics = ref.dft(x, y, alpha=alpha, num_items=num_items)
        return loss, metrics | {"dft_alpha": alpha}

    assert_same_loss_and_grad(
        lambda x, y: dft_loss(x, y, alpha=alpha, num_items_in_batch=num_items), reference, logits, labels
    )


def test_dft_alpha_zero_is_sft():
    logits, labels = ref.make_batch(3, 17, 29, seed=2)
    dft = dft_loss(logits, labels, alpha=0.0)
    sft = sft_loss(logits, labels)
    assert_rel_close(dft.loss, sft.loss, rel=1e-15)
    (dft_grad,) = torch.autograd.grad(dft.loss, logits)
    (sft_grad,) = torch.autograd.grad(sft.loss, logits)
    assert_rel_close(dft_grad, sft_grad, rel=1e-15)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("group_size", [1, 3, 4, 100])
@pytest.mark.parametrize("gamma", [1.0, 2.5])
@pytest.mark.parametrize("num_samples", [None, 7])
def test_bft_matches_reference(shape, scale, group_size, gamma, num_samples):
    logits, labels = ref.make_batch(*shape, scale=scale, seed=3)
    assert_same_loss_and_grad(
        lambda x, y: bft_loss(x, y, group_size=group_size, gamma=gamma, num_samples_in_batch=num_samples),
        lambda x, y: ref.bft(x, y, group_size=group_size, gamma=gamma, num_samples=num_samples),
        logits,
        labels,
    )


def test_bft_group_longer_than_sample_uses_mean_confidence():
    """group_size > every sample's target count: p_conf = exp(mean target log-prob) of the sample."""
    logits, labels = ref.make_batch(3, 17, 29, seed=4)
    out = bft_loss(logits, labels, group_size=1000)
    logps = [[float(logp.detach()) for _, logp, *_ in row] for row in ref.targets_by_row(logits, labels)]
    p_conf = [math.exp(sum(row) / len(row)) if row else 0.0 for row in logps]
    assert float(out.metrics["bft_min_group_conf"]) == pytest.approx(sum(p_conf) / 3, rel=1e-12)
    assert out.num_samples == 3


def test_lowest_group_confidence_ignores_token_order_across_samples():
    """Tokens of two samples interleaved: each sample's windows still follow its own tokens in order."""
    ce = torch.tensor([0.1, 2.0, 0.2, 3.0, 0.3, 0.1, 5.0], dtype=torch.float64)
    segment = torch.tensor([0, 1, 0, 1, 0, 2, 0])
    p_conf = lowest_group_confidence(ce, segment, num_samples=4, group_size=2)
    expected = [
        ref.lowest_group_confidence([-0.1, -0.2, -0.3, -5.0], 2),
        ref.lowest_group_confidence([-2.0, -3.0], 2),
        ref.lowest_group_confidence([-0.1], 2),
        0.0,  # sample 3 has no token
    ]
    torch.testing.assert_close(p_conf, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def pack(padded_logits: Tensor, padded_labels: Tensor, lengths: list[int], rows: list[list[int]], width: int):
    """Pack samples (row b of the padded batch, first lengths[b] positions) into `rows` of `width`
    positions, padding at the end of a row with ignored labels and the id of the row's last sample."""
    vocab = padded_logits.shape[-1]
    logits_rows, label_rows, id_rows = [], [], []
    for r, samples in enumerate(rows):
        parts = [padded_logits[b, : lengths[b]] for b in samples]
        labels = [padded_labels[b, : lengths[b]] for b in samples]
        starts = [r * width + sum(lengths[c] for c in samples[:i]) for i in range(len(samples))]
        ids = [torch.full((lengths[b],), start) for b, start in zip(samples, starts)]
        pad = width - sum(lengths[b] for b in samples)
        parts.append(torch.zeros(pad, vocab, dtype=padded_logits.dtype))
        labels.append(torch.full((pad,), -100))
        ids.append(ids[-1][:1].expand(pad))
        logits_rows.append(torch.cat(parts))
        label_rows.append(torch.cat(labels))
        id_rows.append(torch.cat(ids))
    return torch.stack(logits_rows), torch.stack(label_rows), torch.stack(id_rows)


@pytest.mark.parametrize("group_size", [2, 5])
def test_bft_packed_equals_padded(group_size):
    """Four samples (one with no target) padded to [4, 11] or packed into [2, 16] with sample_ids."""
    lengths = [11, 6, 9, 4]
    padded_logits, padded_labels = ref.make_batch(4, 11, 13, seed=5)
    padded_labels[:, 0] = -100  # a sample's first label is never a target, padded or packed
    for b, n in enumerate(lengths):
        padded_labels[b, n:] = -100
    padded = bft_loss(padded_logits, padded_labels, group_size=group_size, gamma=1.5)
    logits, labels, ids = pack(padded_logits, padded_labels, lengths, rows=[[0, 1], [3, 2]], width=18)
    packed = bft_loss(logits, labels, group_size=group_size, gamma=1.5, sample_ids=ids)

    assert packed.num_samples == padded.num_samples == 4
    assert packed.num_tokens == padded.num_tokens
    assert_rel_close(packed.loss, padded.loss, rel=1e-12)
    for name, value in padded.metrics.items():
        assert_rel_close(packed.metrics[name], value, rel=1e-12)
    (grad_packed,) = torch.autograd.grad(packed.loss, padded_logits)
    (grad_padded,) = torch.autograd.grad(padded.loss, padded_logits)
    assert_rel_close(grad_packed, grad_padded, rel=1e-12)


@pytest.mark.parametrize("name, kwargs", [("sft", {}), ("dft", {"alpha": 0.7}), ("bft", {"group_size": 3})])
def test_gradient_accumulation_matches_one_batch(name, kwargs):
    """One batch of 8 == 4 micro-batches of 2 whose losses use the global count, summed (as backward
    accumulates); the metrics averaged with the LossOutput weights equal the whole batch's."""
    objective = OBJECTIVES[name]
    gen = torch.Generator().manual_seed(6)
    _, labels = ref.make_batch(8, 15, 11, seed=6, empty_row=5)
    hidden = torch.randn(8, 15, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)

    whole = compute_objective(name, hidden @ weight.T, labels, **kwargs)
    (whole_grad,) = torch.autograd.grad(whole.loss, weight)

    micro = [slice(i, i + 2) for i in range(0, 8, 2)]
    global_count = sum(objective.local_count(labels[s]) for s in micro)
    outs = [
        compute_objective(name, hidden[s] @ weight.T, labels[s], global_count=global_count, **kwargs)
        for s in micro
    ]
    for out in outs:
        out.loss.backward()
    assert_rel_close(sum(out.loss for out in outs), whole.loss, rel=1e-12)
    assert_rel_close(weight.grad, whole_grad, rel=1e-12)

    for metric, value in whole.metrics.items():
        count = "num_samples" if metric in whole.sample_metrics else "num_tokens"
        total = sum(getattr(out, count) for out in outs)
        assert sum(float(out.metrics[metric]) * getattr(out, count) for out in outs) / total == pytest.approx(
            float(value), rel=1e-12
        ), metric


def test_uniform_logits_closed_form():
    """Uniform logits over V: every target has p = 1/V and CE = log V, and d CE / d z_j = 1/V - [j = y].

    With N targets: SFT = log V, with gradient (1/V - onehot) / N at each target position;
    DFT = sum(CE * p) / N = log V / V, with gradient (1/V - onehot) / (V N);
    BFT: every window's mean log-prob is -log V, so p_conf = 1/V and s = 1 - 1/V; each sample's DFT is
    log V / V, so BFT = (1 - 1/V) log V / V (every sample has a target here).
    """
    vocab = 8
    logits = torch.zeros(2, 5, vocab, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[-100, 3, 4, -100, 5], [-100, -100, 1, 1, -100]])
    n = 5
    log_v = math.log(vocab)
    assert float(sft_loss(logits, labels).loss.detach()) == pytest.approx(log_v, rel=1e-15)
    assert float(dft_loss(logits, labels).loss.detach()) == pytest.approx(log_v / vocab, rel=1e-15)
    bft = bft_loss(logits, labels, group_size=2)
    assert float(bft.loss.detach()) == pytest.approx((1 - 1 / vocab) * log_v / vocab, rel=1e-15)
    assert float(bft.metrics["bft_min_group_conf"]) == pytest.approx(1 / vocab, rel=1e-15)

    (grad,) = torch.autograd.grad(dft_loss(logits, labels).loss, logits)
    expected = torch.zeros_like(logits)
    for b, t in [(0, 0), (0, 1), (0, 3), (1, 1), (1, 2)]:  # positions whose next label is a target
        expected[b, t] = 1 / vocab
        expected[b, t, labels[b, t + 1]] -= 1
    torch.testing.assert_close(grad, expected / (vocab * n), rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("name, kwargs", [("sft", {}), ("dft", {"alpha": 0.5}), ("bft", {"group_size": 3})])
def test_bf16_logits_give_float32_close_to_float32(name, kwargs):
    """bf16 logits are upcast after selecting the valid rows: the loss is float32 and equals the float32
    computation on the same (bf16-rounded) values; the gradient comes back in bf16."""
    logits64, labels = ref.make_batch(3, 17, 29, seed=7)
    logits = logits64.detach().to(torch.bfloat16).requires_grad_()
    out = compute_objective(name, logits, labels, **kwargs)
    expected_input = logits.detach().float().requires_grad_()
    expected = compute_objective(name, expected_input, labels, **kwargs)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(out.loss, logits)
    (expected_grad,) = torch.autograd.grad(expected.loss, expected_input)
    assert grad.dtype == torch.bfloat16
    assert_rel_close(grad.float(), expected_grad, rel=1e-2)
    exact = compute_objective(name, logits64, labels, **kwargs).loss
    torch.testing.assert_close(out.loss.double(), exact, rtol=2e-2, atol=0)  # bf16 rounding of the logits


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_no_target_gives_zero_loss_and_zero_metrics(name):
    logits = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.full((2, 6), -100)
    out = compute_objective(name, logits, labels, **ref.reference_model(name, logits, 5)[0])
    out.loss.backward()  # still connected to the logits, so every parameter gets a (zero) gradient
    assert float(out.loss.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0
    assert out.num_tokens == 0 and out.num_samples == 2
    for metric in ("avg_p_correct", "token_accuracy", "ce"):
        assert float(out.metrics[metric]) == 0.0


def test_compute_objective_routes_global_count_and_rejects_unknown_names():
    logits, labels = ref.make_batch(3, 17, 29, seed=8)
    routed = compute_objective("dft", logits, labels, global_count=40, alpha=0.5)
    assert_rel_close(routed.loss, dft_loss(logits, labels, alpha=0.5, num_items_in_batch=40).loss, rel=0)
    routed = compute_objective("bft", logits, labels, global_count=7)
    assert_rel_close(routed.loss, bft_loss(logits, labels, num_samples_in_batch=7).loss, rel=0)
    with pytest.raises(DftuneError, match="unknown objective"):
        compute_objective("ppo", logits, labels)
    with pytest.raises(DftuneError, match="group_size"):
        bft_loss(logits, labels, group_size=0)
