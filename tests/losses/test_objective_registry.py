"""Every registered objective, on every path that computes it: an objective added later is covered by being
registered, and cannot silently replace another.

- fused == unfused (value, metrics, gradients of hidden and weight), float64, odd shapes, ignored tokens, with its
  default settings and with every setting moved off its default;
- packed == padded for the objectives of stage sft (the stage that packs);
- batch 8 == 4 micro-batches of 2 normalised by the summed `local_count` (the trainer-level version of this,
  batch 8 x accumulation 1 == batch 2 x accumulation 4, is tests/stages/test_objective_registry_training.py);
- stage dllm: each objective registered for it gives, on unshifted labels, the same coefficients as on shifted
  ones, scaled by 1 / t.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import loss_reference as ref
from dftune.errors import DftuneError
from dftune.losses import (
    CE,
    ENTROPY,
    OBJECTIVES,
    SEGMENTS,
    Objective,
    Statistics,
    Weights,
    compute_objective,
    diffusion_objective,
    fused_diffusion_objective,
    fused_linear_loss,
    register,
)
from dftune.losses.contract import RowStatistic
from dftune.losses.statistics import entropy_of_logits, row_statistics, row_statistics_of
from test_losses_fused import assert_same, fused, make_batch, reference
from objective_cases import cases
from test_losses_objectives import assert_rel_close, pack


@pytest.mark.parametrize("chunk_size", [1, 7, None])
@pytest.mark.parametrize("name, settings", cases())
def test_fused_equals_unfused(name, settings, chunk_size):
    hidden, weight, labels = make_batch(B=4, T=11, H=6, V=23, seed=3)
    unfused_ref, fused_ref = ref.reference_model(name, hidden, 23)
    expected = reference(name, hidden, weight, labels, **unfused_ref, **settings)
    assert_same(fused(name, hidden, weight, labels, chunk_size=chunk_size, **fused_ref, **settings), expected)


@pytest.mark.parametrize("name, settings", cases("sft"))
def test_packed_equals_padded(name, settings):
    """Four samples (one with no target) padded to [4, 11] or packed into [2, 18]: same loss, metrics, gradient,
    unfused and fused (the fused head takes the packed hidden states as they come)."""
    objective = OBJECTIVES[name]
    lengths = [11, 6, 9, 4]
    padded_logits, padded_labels = ref.make_batch(4, 11, 13, seed=5)
    padded_labels[:, 0] = -100  # a sample's first label is never a target, padded or packed
    for b, n in enumerate(lengths):
        padded_labels[b, n:] = -100
    count = objective.local_count(padded_labels)
    padded_ref, _ = ref.reference_model(name, padded_logits, 13)
    padded = compute_objective(name, padded_logits, padded_labels, global_count=count, **padded_ref, **settings)
    logits, labels, ids = pack(padded_logits, padded_labels, lengths, rows=[[0, 1], [3, 2]], width=18)
    packing = {"sample_ids": ids} if SEGMENTS in objective.needs else {}
    if padded_ref:  # the reference's logits packed the same way
        packing["ref_logits"] = pack(padded_ref["ref_logits"], padded_labels, lengths, [[0, 1], [3, 2]], 18)[0]
    packed = compute_objective(name, logits, labels, global_count=count, **packing, **settings)
    assert packed.num_tokens == padded.num_tokens
    assert_rel_close(packed.loss, padded.loss, rel=1e-12)
    for metric, value in padded.metrics.items():
        assert_rel_close(torch.as_tensor(packed.metrics[metric]), torch.as_tensor(value), rel=1e-12)
    (grad_packed,) = torch.autograd.grad(packed.loss, padded_logits)
    (grad_padded,) = torch.autograd.grad(padded.loss, padded_logits)
    assert_rel_close(grad_packed, grad_padded, rel=1e-12)

    # Fused on the packed layout: hidden states whose product with an identity "head" are the packed logits.
    hidden = logits.detach().requires_grad_()
    eye = torch.eye(logits.shape[-1], dtype=torch.float64, requires_grad=True)
    fused_packing = dict(packing)
    if "ref_logits" in fused_packing:
        fused_packing |= {"ref_hidden": fused_packing.pop("ref_logits"), "ref_weight": eye.detach()}
    got = fused(name, hidden, eye, labels, chunk_size=5, global_count=count, **fused_packing, **settings)
    assert_same(got, reference(name, hidden, eye, labels, global_count=count, **packing, **settings))


@pytest.mark.parametrize("name, settings", cases())
def test_micro_batches_with_the_global_count_equal_one_batch(name, settings):
    objective = OBJECTIVES[name]
    logits, labels = ref.make_batch(8, 15, 11, seed=6, empty_row=5)
    reference_inputs, _ = ref.reference_model(name, logits, 11)
    whole = compute_objective(name, logits, labels, **reference_inputs, **settings)
    (whole_grad,) = torch.autograd.grad(whole.loss, logits)
    micro = [slice(i, i + 2) for i in range(0, 8, 2)]
    count = sum(objective.local_count(labels[s]) for s in micro)
    total = sum(
        compute_objective(name, logits[s], labels[s], global_count=count, **settings,
                          **{key: value[s] for key, value in reference_inputs.items()}).loss
        for s in micro
    )
    (grad,) = torch.autograd.grad(total, logits)
    assert_rel_close(total, whole.loss, rel=1e-12)
    assert_rel_close(grad, whole_grad, rel=1e-12)


@pytest.mark.parametrize("name, settings", cases("dllm"))
def test_stage_dllm_scales_the_same_coefficients_by_one_over_t(name, settings):
    """Unshifted labels, each sample's coefficients times 1 / t_b, normalised by the answer tokens."""
    logits, labels = ref.make_batch(3, 9, 7, seed=2)
    t = torch.tensor([0.9, 0.05, 0.4], dtype=torch.float64)
    out = diffusion_objective(name, logits, labels, t, num_answer_tokens=20, **settings)
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100).view(3, 9)
    mask = labels != -100  # the masked positions, in flat order
    row = mask.nonzero()[:, 0]
    objective = OBJECTIVES[name]
    resolved = objective.resolve(settings)
    rows = row_statistics(logits.detach().flatten(0, 1)[mask.flatten()], row_statistics_of(objective), resolved)
    stats = Statistics(ce=ce.detach()[mask], num_samples=3, segment=row, rows=rows)
    weights = objective.weigh(stats, 20, **resolved)
    expected = (weights.coefficients * (1 / t)[row] * ce[mask]).sum()
    assert_rel_close(out.loss, expected, rel=1e-12)
    (grad,) = torch.autograd.grad(out.loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert_rel_close(grad, expected_grad, rel=1e-12)


# --- the registry itself ------------------------------------------------------------------------------------


def entropy_weighted() -> Objective:
    """A test objective on a row statistic: c_i = H_i / N, H_i the predictive entropy at target i."""
    return Objective(
        name="test-entropy", normalise_by="tokens", needs=frozenset({CE, ENTROPY}),
        weigh=lambda stats, count: Weights(stats.rows[ENTROPY] / count),
    )


def test_a_name_or_key_cannot_be_registered_twice():
    with pytest.raises(DftuneError, match="registered already"):
        register(OBJECTIVES["dft"])
    clash = Objective(name="dft2", weigh=OBJECTIVES["dft"].weigh, normalise_by="tokens",
                      settings=OBJECTIVES["dft"].settings)
    with pytest.raises(DftuneError, match=r"config keys \['dft_alpha', .*\] belong to another objective"):
        register(clash)
    assert "dft2" not in OBJECTIVES


def test_a_statistic_no_path_computes_is_refused():
    unknown = Objective(name="test-unknown", weigh=OBJECTIVES["sft"].weigh, normalise_by="tokens",
                        needs=frozenset({CE, "curvature"}))
    with pytest.raises(DftuneError, match=r"no path computes: \['curvature'\]"):
        register(unknown)


def test_row_statistic_objective_is_exact_fused_and_unfused(scratch_objectives):
    """c_i = H_i / N against a float64 loop: entropy of softmax(logits) at each target, times its CE."""
    register(entropy_weighted())
    hidden, weight, labels = make_batch(B=3, T=9, H=5, V=17, seed=4)
    logits = hidden @ weight.T
    total, n = 0.0, 0
    for b in range(3):
        for t in range(8):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            p = torch.softmax(logits[b, t], dim=-1)
            entropy = float(-(p * p.log()).sum().detach())
            total = total + entropy * -torch.log_softmax(logits[b, t], dim=-1)[y]
            n += 1
    expected = total / n
    out = compute_objective("test-entropy", logits, labels)
    assert_rel_close(out.loss, expected, rel=1e-12)
    assert_same(fused("test-entropy", hidden, weight, labels, chunk_size=4),
                reference("test-entropy", hidden, weight, labels))


def unchunked() -> Objective:
    """A test objective on a statistic of its own that the fused head cannot compute chunk by chunk."""
    return Objective(
        name="test-unchunked", normalise_by="tokens", needs=frozenset({CE, "whole-row-only"}),
        statistics={"whole-row-only": RowStatistic(entropy_of_logits, chunked=False)},
        weigh=lambda stats, count: Weights(stats.rows["whole-row-only"] / count),
    )


def test_a_statistic_the_fused_head_cannot_chunk_is_an_error_naming_it(scratch_objectives):
    register(unchunked())
    hidden, weight, labels = make_batch()
    compute_objective("test-unchunked", hidden @ weight.T, labels)  # the unfused path computes it
    with pytest.raises(DftuneError, match=r"cannot compute \['whole-row-only'\], which objective test-unchunked"):
        fused_linear_loss(hidden, weight, labels, objective="test-unchunked")


@pytest.mark.parametrize("chunk_size", [1, 7, None])
@pytest.mark.parametrize("name, settings", cases("dllm"))
def test_stage_dllm_fused_equals_unfused(name, settings, chunk_size):
    """The fused masked-diffusion head: no shift, 1 / t per sample, the answer-token count: value, metrics and the
    gradients of hidden and weight as `diffusion_objective` on the materialised logits."""
    hidden, weight, labels = make_batch(B=3, T=11, H=6, V=23, seed=8)
    t = torch.tensor([0.9, 0.05, 0.4], dtype=torch.float32)  # float32, as the collator draws it
    expected = diffusion_objective(name, hidden @ weight.T, labels, t, num_answer_tokens=25, **settings)
    expected_grads = torch.autograd.grad(expected.loss, (hidden, weight))
    out = fused_diffusion_objective(name, hidden, weight, labels, t, num_answer_tokens=25, chunk_size=chunk_size,
                                    **settings)  # fmt: skip
    assert_same((out, torch.autograd.grad(out.loss, (hidden, weight))), (expected, expected_grads))
