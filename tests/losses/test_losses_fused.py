"""`fused_linear_loss` equals the unfused objective on ``hidden @ weight.T``: value, metrics and both gradients.

The naive reference is the line the fused head replaces: ``compute_objective(name, hidden @ weight.T, labels)``
(itself checked against loop references in test_losses_objectives.py). float64 makes the comparison exact
up to summation order; bf16 is judged against a float32 ground truth, Cut Cross-Entropy style.
"""

from __future__ import annotations

import pytest
import torch

from dftune.errors import DftuneError
from dftune.losses import LogitTransform, compute_objective, default_chunk_size, fused_linear_loss

CASES = {
    "sft": {},
    "dft": {"alpha": 1.0},
    "dft-0.7": {"alpha": 0.7},
    "bft": {"group_size": 3, "gamma": 1.0},
    "bft-gamma2": {"group_size": 2, "gamma": 2.0},
}


def make_batch(dtype=torch.float64, B=3, T=13, H=8, V=37, seed=0):
    """Awkward shapes, a prompt without targets, a whole row ignored (so some chunks hold only its neighbours)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) / H**0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = -100
    labels[1] = -100  # a sample with no target token
    labels[-1, 7:9] = -100
    return hidden, weight, labels


def reference(name, hidden, weight, labels, **kwargs):
    out = compute_objective(name, hidden @ weight.T, labels, **kwargs)
    grads = torch.autograd.grad(out.loss, (hidden, weight))
    return out, grads


def fused(name, hidden, weight, labels, **kwargs):
    out = fused_linear_loss(hidden, weight, labels, objective=name, **kwargs)
    grads = torch.autograd.grad(out.loss, (hidden, weight))
    return out, grads


def assert_same(got, expected, rtol=1e-10, atol=1e-12):
    (out, grads), (ref, ref_grads) = got, expected
    torch.testing.assert_close(out.loss, ref.loss, rtol=rtol, atol=atol)
    assert out.metrics.keys() == ref.metrics.keys()
    for key in ref.metrics:
        torch.testing.assert_close(torch.as_tensor(out.metrics[key]).double(),
                                   torch.as_tensor(ref.metrics[key]).double(), rtol=rtol, atol=atol, msg=key)
    assert (out.num_tokens, out.num_samples) == (ref.num_tokens, ref.num_samples)
    assert torch.equal(out.target_index, ref.target_index)
    torch.testing.assert_close(out.target_ce, ref.target_ce, rtol=rtol, atol=atol)
    for g, r, what in zip(grads, ref_grads, ("hidden", "weight")):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol, msg=what)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000, None])  # 7 does not divide the 15 targets
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_equals_unfused_float64(case, chunk_size):
    name = case.split("-")[0]
    hidden, weight, labels = make_batch()
    expected = reference(name, hidden, weight, labels, **CASES[case])
    assert_same(fused(name, hidden, weight, labels, chunk_size=chunk_size, **CASES[case]), expected)


@pytest.mark.parametrize("case", ["sft", "dft-0.7", "bft"])
def test_global_count_and_its_keyword(case):
    """The normaliser passes through under either name; the wrong unit's keyword is refused."""
    name = case.split("-")[0]
    hidden, weight, labels = make_batch()
    expected = reference(name, hidden, weight, labels, global_count=40, **CASES[case])
    assert_same(fused(name, hidden, weight, labels, chunk_size=4, global_count=40, **CASES[case]), expected)
    key = "num_samples_in_batch" if name == "bft" else "num_items_in_batch"
    assert_same(fused(name, hidden, weight, labels, chunk_size=4, **{key: 40}, **CASES[case]), expected)
    wrong = "num_items_in_batch" if name == "bft" else "num_samples_in_batch"
    with pytest.raises(DftuneError, match=wrong):
        fused_linear_loss(hidden, weight, labels, objective=name, **{wrong: 40})


def test_bft_packed_sample_ids():
    """Two rows holding 2 and 3 samples each: the per-sample weights need the ids, as in `bft_loss`."""
    hidden, weight, labels = make_batch(B=2, T=15)
    labels = torch.randint(0, 37, (2, 15), generator=torch.Generator().manual_seed(1))
    starts = [[0, 6], [0, 4, 10]]
    sample_ids = torch.zeros(2, 15, dtype=torch.long)
    for row, row_starts in enumerate(starts):
        for start in row_starts:
            sample_ids[row, start:] = row * 15 + start
            labels[row, start] = -100  # each sample's first label is ignored
    kwargs = {"group_size": 2, "gamma": 1.0, "sample_ids": sample_ids}
    expected = reference("bft", hidden, weight, labels, **kwargs)
    assert expected[0].num_samples == 5
    assert_same(fused("bft", hidden, weight, labels, chunk_size=3, **kwargs), expected)


def test_all_ignored():
    """No target at all: loss 0, zero gradients, metrics 0, like the unfused objectives."""
    hidden, weight, labels = make_batch()
    labels[:] = -100
    for name in ("sft", "bft"):
        assert_same(fused(name, hidden, weight, labels, chunk_size=4), reference(name, hidden, weight, labels))


def test_incoming_gradient_is_applied():
    """backward with grad_output != 1 scales both gradients (the == 1 fast path skips the multiply)."""
    hidden, weight, labels = make_batch()
    ref = compute_objective("dft", hidden @ weight.T, labels, alpha=0.7)
    expected = torch.autograd.grad(3.0 * ref.loss, (hidden, weight))
    out = fused_linear_loss(hidden, weight, labels, objective="dft", alpha=0.7, chunk_size=5)
    got = torch.autograd.grad(3.0 * out.loss, (hidden, weight))
    for g, r in zip(got, expected):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_no_grad_and_frozen_weight():
    """Evaluation (no grad) gives the same value; a frozen head (LoRA) gets no weight gradient."""
    hidden, weight, labels = make_batch()
    ref = compute_objective("bft", hidden @ weight.T, labels, group_size=3)
    with torch.no_grad():
        out = fused_linear_loss(hidden, weight, labels, objective="bft", group_size=3, chunk_size=4)
    torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-10, atol=1e-12)
    frozen = weight.detach()
    out = fused_linear_loss(hidden, frozen, labels, objective="sft", chunk_size=4)
    (grad,) = torch.autograd.grad(out.loss, hidden)
    (expected,) = torch.autograd.grad(compute_objective("sft", hidden @ frozen.T, labels).loss, hidden)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sft", "dft", "bft"])
def test_bf16_close_to_float32(name):
    """bf16 inputs: the fused head's error against a float32 ground truth is no worse than the unfused bf16
    path's error (logits rounded to bf16 by the matmul either way) plus a small tolerance."""
    kwargs = {"group_size": 3} if name == "bft" else {}
    hidden, weight, labels = make_batch(torch.float32, B=4, T=33, H=32, V=301)
    truth, truth_grads = reference(name, hidden, weight, labels, **kwargs)
    low_h, low_w = (hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_())
    naive, naive_grads = reference(name, low_h, low_w, labels, **kwargs)
    out, grads = fused(name, low_h, low_w, labels, chunk_size=16, **kwargs)
    assert out.loss.dtype == torch.float32 and grads[0].dtype == grads[1].dtype == torch.bfloat16

    def error(a, b):
        return (a.float() - b.float()).abs().max().item()

    assert error(out.loss, truth.loss) <= error(naive.loss, truth.loss) + 1e-3
    for g, n, t in zip(grads, naive_grads, truth_grads):
        scale = t.abs().max().item()
        assert error(g, t) <= error(n, t) + 1e-2 * scale


def test_bad_inputs():
    hidden, weight, labels = make_batch()
    with pytest.raises(DftuneError, match="unknown objective"):
        fused_linear_loss(hidden, weight, labels, objective="nope")
    with pytest.raises(DftuneError, match="takes no keyword"):
        fused_linear_loss(hidden, weight, labels, objective="sft", alpha=0.5)
    with pytest.raises(ValueError, match="do not fit"):
        fused_linear_loss(hidden, weight.T, labels)


@pytest.mark.parametrize("transform", [LogitTransform(scale=0.0625), LogitTransform(softcap=2.5),
                                       LogitTransform(scale=1.7, softcap=3.0)], ids=["scale", "softcap", "both"])
@pytest.mark.parametrize("case", ["sft", "dft-0.7", "bft"])
def test_logit_transform_equals_the_transformed_logits(case, transform):
    """Cohere/Granite/Falcon-H1 scale the logits, Gemma 2/3 soft-cap them: fused == unfused on the transformed
    logits, values and gradients, with the chunk boundaries falling anywhere."""
    name = case.split("-")[0]
    hidden, weight, labels = make_batch()
    z = transform.scale * (hidden @ weight.T)
    logits = z if transform.softcap is None else transform.softcap * torch.tanh(z / transform.softcap)
    expected = compute_objective(name, logits, labels, **CASES[case])
    expected_grads = torch.autograd.grad(expected.loss, (hidden, weight))
    out = fused_linear_loss(hidden, weight, labels, objective=name, chunk_size=4, logit_transform=transform,
                            **CASES[case])  # fmt: skip
    assert_same((out, torch.autograd.grad(out.loss, (hidden, weight))), (expected, expected_grads))


def test_default_chunk_by_device_and_free_memory(monkeypatch):
    """CPU: 32 MiB of float32 logits. CUDA: 5% of the free memory, at most 1 GiB, for all of one chunk's buffers."""
    assert default_chunk_size(151936, torch.device("cpu")) == 2**23 // 151936 == 55
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100 * gib, 141 * gib))
    assert default_chunk_size(151936, torch.device("cuda")) == gib // (151936 * 4) == 1766  # the 1 GiB cap
    assert default_chunk_size(151936, torch.device("cuda"), buffers=3) == gib // (151936 * 12)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (4 * gib, 80 * gib))
    assert default_chunk_size(151936, torch.device("cuda")) == int(0.05 * 4 * gib) // (151936 * 4)  # 5% of free
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 80 * gib))
    assert default_chunk_size(151936, torch.device("cuda")) == 1  # never zero
