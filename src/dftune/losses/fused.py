"""Any registered objective computed from the hidden states and the output layer, one chunk of logits at a time.

`fused_linear_loss(hidden, weight, labels, objective=...)` equals::

    compute_objective(objective, hidden @ weight.T, labels, global_count=..., **objective_kwargs)

(value, metrics, and gradients w.r.t. `hidden` and `weight`) without ever allocating the [B, T, V] logits:
the valid target rows of `hidden` are selected first, and each chunk of `chunk_size` of them makes its
[chunk, V] logits, its cross-entropy and, in the same forward pass, its share of both gradients (as fused
linear cross-entropy kernels do). Peak memory beyond the weight gradient is one chunk of logits.

Every objective is ``sum_i c_i * CE_i`` with detached c_i (see `contract.py`), so the gradient of the logits of
target i is ``c_i * (softmax_i - onehot_i)``. An objective whose c_i depends on target i alone (`per_token`) is
weighed chunk by chunk: one pass. Any other (BFT needs a sample's whole confidence) takes two: pass 1 computes
the statistics only (no gradient), the objective weighs them, pass 2 computes the gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.chunks import Chunks, FusedLinearObjective, LogitTransform, Reference, chunked_statistics
from dftune.losses.contract import REF_LOGP, SEGMENTS, Objective, Statistics, Weights
from dftune.losses.core import (
    IGNORE_INDEX, Count, LossOutput, TokenStats, at_targets, shift_labels, target_scale, token_metrics,
)
from dftune.losses.registry import get_objective
from dftune.losses.statistics import row_statistics, row_statistics_of, sample_segments
from dftune.losses.unfused import check_reference, check_sample_ids, objective_metrics

LOGITS_PER_CHUNK = 2**23
"""Default chunk off an accelerator: as many tokens as keep one chunk of float32 logits near 32 MiB (55 tokens at
V = 151936): larger chunks buy nothing on a CPU, whose matmuls are already efficient at that size."""
ACCELERATOR_FREE_FRACTION = 0.05
"""On an accelerator each chunk is a few kernel launches, so chunks are large: the [chunk, V] buffers of one chunk
take at most this fraction of the device's free memory ..."""
ACCELERATOR_MAX_BYTES = 2**30
"""... and at most 1 GiB (1766 tokens of float32 logits at V = 151936)."""


def default_chunk_size(vocab: int, device: torch.device, buffers: int = 1) -> int:
    """Valid target tokens per chunk when `chunk_size` is not given: by device type and free memory.

    `buffers` is how many [chunk, V] float32 blocks one chunk keeps alive (1; 2 with soft-capping; 3 with a
    reference). CPU: ``2**23 // V`` tokens of one buffer. CUDA: the largest chunk whose buffers fit in both
    `ACCELERATOR_FREE_FRACTION` of the free memory and `ACCELERATOR_MAX_BYTES`.
    """
    if device.type != "cuda":
        return max(1, LOGITS_PER_CHUNK // vocab)
    free, _ = torch.cuda.mem_get_info(device)
    budget = min(free * ACCELERATOR_FREE_FRACTION, ACCELERATOR_MAX_BYTES)
    return max(1, int(budget // (vocab * 4 * buffers)))

def unfusable_statistics(objective: Objective) -> list[str]:
    """The statistics `objective` needs that the fused head cannot compute chunk by chunk (empty: it can)."""
    return [name for name, statistic in row_statistics_of(objective).items() if not statistic.chunked]


def fused_linear_loss(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    objective: str = "sft",
    chunk_size: int | None = None,
    global_count: Count | None = None,
    num_items_in_batch: Count | None = None,
    num_samples_in_batch: Count | None = None,
    sample_ids: Tensor | None = None,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    ref_logps: Tensor | None = None,
    logit_transform: LogitTransform = LogitTransform(),
    shift: bool = True,
    row_scale: Tensor | None = None,
    **objective_kwargs: Any,
) -> LossOutput:
    """`objective` on ``hidden @ weight.T`` without materialising the logits (Cut Cross-Entropy style).

    Equals, in value, metrics and gradients w.r.t. `hidden` [B, T, H] and `weight` [V, H]::

        compute_objective(objective, hidden @ weight.T, labels, global_count=global_count, **objective_kwargs)

    e.g. for sft ``F.cross_entropy((hidden @ weight.T)[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
    reduction="sum") / N``, while holding one [chunk_size, V] block of logits at a time.

    - labels [B, T] unshifted, -100 ignored (those positions are skipped before any matmul).
    - The normaliser is `global_count`, or the objective's own keyword (`num_items_in_batch` for objectives
      normalised by tokens, `num_samples_in_batch` for those normalised by samples); None normalises by this
      call's count, as the unfused objectives do.
    - objective_kwargs: the objective's settings by keyword (`alpha`, `group_size`, ...); `sample_ids` [B, T]
      for packed batches of objectives that weigh whole samples.
    - ref_hidden [B, T, H_ref] and ref_weight [V, H_ref]: a reference model's final hidden states and output
      layer, for objectives with a KL term (`ref_logits=ref_hidden @ ref_weight.T` unfused); no gradient.
    - ref_logps [B, T]: instead, the reference's log p(target) precomputed, as `unfused.objective_loss` takes it.
    - logit_transform: what the model does to ``hidden @ weight.T`` before its logits (scale, soft-capping; the
      reference's too); then the equality holds with ``logit_transform(hidden @ weight.T)`` as the logits.
    - shift, row_scale: as `unfused.objective_loss` takes them: stage dllm passes ``shift=False`` (position i
      predicts labels[:, i]) and ``row_scale = 1 / t`` (each sample's coefficients times the inverse of its mask
      ratio; [B, T] per position with diffusion_block_size), so that this equals `diffusion_objective` on
      ``hidden @ weight.T``.
    - chunk_size: valid target tokens per chunk; default by device and free memory (`default_chunk_size`).
    - dtype: the logits of a chunk are computed in the inputs' dtype (`hidden` is cast to `weight`'s) and
      upcast to float32 (float64 stays float64); CE, softmax, the loss and the weight gradient accumulate in
      that precision. Gradients come back in the inputs' dtypes.
    - A statistic the objective needs that cannot be computed chunk by chunk is an error naming it.
    """
    spec = get_objective(objective)
    if hidden.shape[:-1] != labels.shape or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and labels "
                         f"{tuple(labels.shape)} do not fit: expected [B, T, H], [V, H], [B, T]")
    count = _normaliser(spec, global_count, num_items_in_batch, num_samples_in_batch)
    settings = spec.resolve(objective_kwargs)
    check_sample_ids(spec, sample_ids)
    check_reference(spec, ref_hidden if ref_weight is not None else None, ref_logps)
    missing = unfusable_statistics(spec)
    if missing:
        raise DftuneError(f"the fused loss head cannot compute {missing}, which objective {spec.name} needs, one "
                          "chunk of logits at a time: compute it unfused (fused_loss: auto or false)")

    if SEGMENTS in spec.needs and not shift:
        raise DftuneError(f"{spec.name} weighs whole samples of causal (shifted) targets; it has no unshifted form")
    # Valid target rows only: targets[:, t] = labels[:, t + 1] (see `shift_labels`), or labels[:, t] unshifted.
    flat_targets = (shift_labels(labels) if shift else labels).flatten()  # [B*T]
    index = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)  # [N]
    target = flat_targets.index_select(0, index)  # [N]
    rows = hidden.flatten(0, 1).index_select(0, index).to(weight.dtype)  # [N, H]; autograd scatters back
    if chunk_size is None:
        buffers = 1 + (logit_transform.softcap is not None) + 2 * (ref_hidden is not None)
        chunk_size = default_chunk_size(weight.shape[0], rows.device, buffers)
    if chunk_size < 1:
        raise DftuneError(f"chunk_size must be at least 1, got {chunk_size}")
    needs_grad = torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad)
    wanted = row_statistics_of(spec)
    statistics_of = (lambda logits: row_statistics(logits, wanted, settings)) if wanted else None  # noqa: E731
    reference = None
    if ref_hidden is not None:
        ref_rows = ref_hidden.detach().flatten(0, 1).index_select(0, index).to(ref_weight.dtype)  # [N, H_ref]
        reference = Reference(ref_rows, ref_weight.detach(), logit_transform)

    segment, num_samples = None, labels.shape[0]
    if SEGMENTS in spec.needs:
        segment, num_samples = sample_segments(index, labels, sample_ids)

    num_items = (target.numel() if spec.normalise_by == "tokens" else num_samples) if count is None else count

    given_ref_logp = None if ref_logps is None else at_targets(ref_logps.detach(), index, shift)  # [N]

    def weigh(ce: Tensor, extra: dict[str, Tensor], part: slice = slice(None)) -> Weights:
        part_segment = None if segment is None else segment[part]
        if given_ref_logp is not None:
            extra = {**extra, REF_LOGP: given_ref_logp[part]}
        stats = Statistics(ce=ce, num_samples=num_samples, segment=part_segment, rows=extra)
        return spec.weigh(stats, num_items, **settings)

    # Each target's share of its row's scale (stage dllm: 1 / t), applied to the coefficients of the loss only.
    scale_of_target = None if row_scale is None else target_scale(row_scale, index, labels, shift)

    def scaled(weights: Weights, part: slice = slice(None)) -> Weights:
        if scale_of_target is None:
            return weights
        factor = scale_of_target[part].to(weights.coefficients.dtype)
        return dataclasses.replace(weights, coefficients=weights.coefficients * factor)

    chunks = Chunks(rows, weight, chunk_size, list(wanted), reference, logit_transform)
    if spec.per_token and needs_grad:
        loss = FusedLinearObjective.apply(
            rows, weight, target, lambda part, ce, extra: scaled(weigh(ce, extra, part), part), chunks, statistics_of
        )
        weights = weigh(chunks.ce, chunks.stats)  # the metrics, over every target
    else:
        # Pass 1: the statistics only (all an objective of whole samples needs before any coefficient).
        chunked_statistics(rows.detach(), weight.detach(), target, chunks, statistics_of)
        weights = weigh(chunks.ce, chunks.stats)
        if needs_grad:  # pass 2: the gradients, with the coefficients now known
            fixed = _fixed(scaled(weights))
            pass2 = Chunks(rows, weight, chunk_size, [], reference, logit_transform)
            loss = FusedLinearObjective.apply(rows, weight, target, fixed, pass2, None)
        else:
            loss = _loss_of(scaled(weights), chunks)
    metrics, sample_metrics = objective_metrics(spec, weights, num_items, target.numel(), num_samples)
    stats = TokenStats(ce=chunks.ce, correct=chunks.correct, index=index, entropy=chunks.entropy)
    return LossOutput(loss, token_metrics(stats) | metrics, target.numel(), num_samples, sample_metrics=sample_metrics,
                      target_ce=chunks.ce, target_index=index)


def _fixed(weights: Weights):
    """The chunk slices of coefficients known for every target (pass 2)."""
    kl = weights.kl_coefficients
    return lambda part, *_: Weights(weights.coefficients[part], kl_coefficients=None if kl is None else kl[part])


def _loss_of(weights: Weights, chunks: Chunks) -> Tensor:
    """sum_i c_i CE_i + d_i KL_i from stored statistics (no gradient needed)."""
    loss = (weights.coefficients.to(chunks.ce.dtype) * chunks.ce).sum()
    if weights.kl_coefficients is not None:
        loss = loss + (weights.kl_coefficients.to(chunks.ce.dtype) * chunks.stats["ref_kl"]).sum()
    return loss


def _normaliser(spec: Objective, global_count: Count | None, num_items: Count | None, num_samples: Count | None):
    """`global_count`, or the objective's own keyword for it; the other unit's keyword is an error."""
    own, other = (num_items, num_samples) if spec.normalise_by == "tokens" else (num_samples, num_items)
    if other is not None:
        wrong = "num_samples_in_batch" if spec.normalise_by == "tokens" else "num_items_in_batch"
        raise DftuneError(f"{spec.name} is normalised by {spec.count_keyword}, not {wrong}")
    if global_count is not None and own is not None:
        raise DftuneError(f"pass global_count or {spec.count_keyword}, not both")
    return global_count if global_count is not None else own
