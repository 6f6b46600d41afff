"""The objectives computed from the hidden states and the output layer, one chunk of logits at a time.

`fused_linear_loss(hidden, weight, labels, objective=...)` equals::

    compute_objective(objective, hidden @ weight.T, labels, global_count=..., **objective_kwargs)

(value, metrics, and gradients w.r.t. `hidden` and `weight`) without ever allocating the [B, T, V] logits:
the valid target rows of `hidden` are selected first, and each chunk of `chunk_size` of them makes its
[chunk, V] logits, its cross-entropy and, in the same forward pass, its share of both gradients (as fused
linear cross-entropy kernels do). Peak memory beyond the weight gradient is one chunk of logits.

Every objective is ``sum_i c_i * CE_i`` with detached c_i (see `core.py`), so the gradient of the logits of
target i is ``c_i * (softmax_i - onehot_i)``. SFT and DFT know c_i from CE_i alone: one pass. BFT needs a
sample's whole confidence before its weights are known: pass 1 computes CE only (no gradient), the
coefficients come from `bft_coefficients`, pass 2 computes the gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.core import IGNORE_INDEX, Count, LossOutput, TokenStats, shift_labels, token_metrics
from dftune.losses.objectives import (
    OBJECTIVES,
    _sample_segments,
    bft_coefficients,
    dft_coefficients,
    sft_coefficients,
)

LOGITS_PER_CHUNK = 2**23
"""Default chunk: as many tokens as keep one chunk of float32 logits near 32 MiB (55 tokens at V = 151936)."""

CoefficientsOf = Callable[[slice, Tensor], Tensor]
"""(rows of this chunk, their detached CE [chunk]) -> c [chunk]."""


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
    **objective_kwargs: float,
) -> LossOutput:
    """`objective` on ``hidden @ weight.T`` without materialising the logits (Cut Cross-Entropy style).

    Equals, in value, metrics and gradients w.r.t. `hidden` [B, T, H] and `weight` [V, H]::

        compute_objective(objective, hidden @ weight.T, labels, global_count=global_count, **objective_kwargs)

    e.g. for sft ``F.cross_entropy((hidden @ weight.T)[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
    reduction="sum") / N``, while holding one [chunk_size, V] block of logits at a time.

    - labels [B, T] unshifted, -100 ignored (those positions are skipped before any matmul).
    - The normaliser is `global_count`, or the objective's own keyword (`num_items_in_batch` for sft/dft,
      `num_samples_in_batch` for bft); None normalises by this call's count, as the unfused objectives do.
    - objective_kwargs: `alpha` (dft), `group_size` and `gamma` (bft); `sample_ids` [B, T] for packed bft.
    - chunk_size: valid target tokens per chunk; default ``max(1, 2**23 // V)``.
    - dtype: the logits of a chunk are computed in the inputs' dtype (`hidden` is cast to `weight`'s) and
      upcast to float32 (float64 stays float64); CE, softmax, the loss and the weight gradient accumulate in
      that precision. Gradients come back in the inputs' dtypes.
    """
    if objective not in OBJECTIVES:
        raise DftuneError(f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)}")
    if hidden.shape[:-1] != labels.shape or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and labels "
                         f"{tuple(labels.shape)} do not fit: expected [B, T, H], [V, H], [B, T]")
    unit_key = "num_items_in_batch" if OBJECTIVES[objective].normalise_by == "tokens" else "num_samples_in_batch"
    wrong_key = "num_samples_in_batch" if unit_key == "num_items_in_batch" else "num_items_in_batch"
    if (num_samples_in_batch if wrong_key == "num_samples_in_batch" else num_items_in_batch) is not None:
        raise DftuneError(f"{objective} is normalised by {unit_key}, not {wrong_key}")
    given = num_items_in_batch if unit_key == "num_items_in_batch" else num_samples_in_batch
    if global_count is not None and given is not None:
        raise DftuneError(f"pass global_count or {unit_key}, not both")
    count = global_count if global_count is not None else given
    if sample_ids is not None and objective != "bft":
        raise DftuneError("sample_ids apply to bft only: sft and dft do not depend on sample boundaries")

    # Valid target rows only: targets[:, t] = labels[:, t + 1] (see `shift_labels`).
    flat_targets = shift_labels(labels).flatten()  # [B*T]
    index = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)  # [N]
    target = flat_targets.index_select(0, index)  # [N]
    rows = hidden.flatten(0, 1).index_select(0, index).to(weight.dtype)  # [N, H]; autograd scatters back
    if chunk_size is None:
        chunk_size = max(1, LOGITS_PER_CHUNK // weight.shape[0])
    if chunk_size < 1:
        raise DftuneError(f"chunk_size must be at least 1, got {chunk_size}")
    needs_grad = torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad)
    num_tokens = target.numel()

    if objective == "bft":
        group_size = int(objective_kwargs.pop("group_size", 256))
        gamma = float(objective_kwargs.pop("gamma", 1.0))
        _reject_extra(objective, objective_kwargs)
        if group_size < 1:
            raise DftuneError(f"bft group_size must be at least 1, got {group_size}")
        # Pass 1: CE only, to know every sample's confidence before any coefficient.
        ce, correct = _chunked_ce(rows.detach(), weight.detach(), target, chunk_size)
        stats = TokenStats(ce=ce, correct=correct, index=index)
        segment, num_samples = _sample_segments(stats, labels, sample_ids)
        coefficients, p_conf, sample_weight = bft_coefficients(
            ce, segment, num_samples, num_samples if count is None else count, group_size=group_size, gamma=gamma
        )
        metrics = token_metrics(stats) | {
            "bft_sample_weight": sample_weight.mean().to(ce.dtype),
            "bft_min_group_conf": p_conf.mean().to(ce.dtype),
        }
        if not needs_grad:
            return LossOutput((coefficients.to(ce.dtype) * ce).sum(), metrics, num_tokens, num_samples)
        # Pass 2: the gradients, with the coefficients now known.
        loss, _, _ = _FusedLinearObjective.apply(
            rows, weight, target, lambda rows_of_chunk, _: coefficients[rows_of_chunk], chunk_size
        )
        return LossOutput(loss, metrics, num_tokens, num_samples)

    num_items = num_tokens if count is None else count
    if objective == "dft":
        alpha = float(objective_kwargs.pop("alpha", 1.0))
        _reject_extra(objective, objective_kwargs)
        coefficients_of: CoefficientsOf = lambda _, ce: dft_coefficients(ce, num_items, alpha=alpha)  # noqa: E731
        extra = {"dft_alpha": alpha}
    else:
        _reject_extra(objective, objective_kwargs)
        coefficients_of, extra = (lambda _, ce: sft_coefficients(ce, num_items)), {}  # noqa: E731
    if needs_grad:
        loss, ce, correct = _FusedLinearObjective.apply(rows, weight, target, coefficients_of, chunk_size)
    else:
        ce, correct = _chunked_ce(rows, weight, target, chunk_size)
        loss = (coefficients_of(slice(None), ce).to(ce.dtype) * ce).sum()
    metrics = token_metrics(TokenStats(ce=ce, correct=correct, index=index)) | extra
    return LossOutput(loss, metrics, num_tokens, labels.shape[0])


def _reject_extra(objective: str, kwargs: dict) -> None:
    if kwargs:
        raise DftuneError(f"{objective} takes no keyword arguments {sorted(kwargs)}")


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> float32, float64 stays


def _chunk_softmax(rows: Tensor, weight: Tensor, target: Tensor, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits of one chunk into the reused buffer `out` [>= chunk, V], then softmax in place.

    Returns (softmax [chunk, V] (a view of `out`), CE [chunk], argmax == target [chunk]). One [chunk, V]
    buffer serves every chunk and both passes: no per-chunk allocation of logits-sized temporaries.
    """
    logits = out[: rows.shape[0]]
    if rows.dtype == out.dtype:
        torch.mm(rows, weight.T, out=logits)  # [chunk, V]
    else:
        logits.copy_(rows @ weight.T)  # bf16/fp16 matmul, upcast into the float32 buffer
    correct = logits.argmax(dim=-1) == target
    target_logit = logits.gather(1, target[:, None])  # [chunk, 1]
    top = logits.amax(dim=-1, keepdim=True)  # [chunk, 1]
    total = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)  # [chunk, 1]
    ce = (total.log() + top - target_logit).squeeze(1)  # logsumexp - target logit
    return logits.div_(total), ce, correct


def _logits_buffer(rows: Tensor, weight: Tensor, chunk_size: int) -> Tensor:
    return torch.empty(min(chunk_size, rows.shape[0]), weight.shape[0],
                       dtype=_accumulation_dtype(rows.dtype), device=rows.device)


@torch.no_grad()
def _chunked_ce(rows: Tensor, weight: Tensor, target: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """CE [N] and argmax == target [N] of the valid rows, chunk by chunk, no gradient."""
    ce = torch.empty(target.numel(), dtype=_accumulation_dtype(rows.dtype), device=rows.device)
    correct = torch.empty(target.numel(), dtype=torch.bool, device=rows.device)
    buffer = _logits_buffer(rows, weight, chunk_size)
    for start in range(0, target.numel(), chunk_size):
        part = slice(start, start + chunk_size)
        _, ce[part], correct[part] = _chunk_softmax(rows[part], weight, target[part], buffer)
    return ce, correct


class _FusedLinearObjective(torch.autograd.Function):
    """loss = sum_i c_i * CE_i of ``rows @ weight.T``, gradients computed in the forward pass chunk by chunk.

    d loss / d logits_i = c_i * (softmax_i - onehot_i), so per chunk: grad_rows = grad_logits @ W and
    grad_W += grad_logits.T @ rows; only one [chunk, V] block is alive at a time.
    """

    @staticmethod
    def forward(ctx, rows, weight, target, coefficients_of: CoefficientsOf, chunk_size: int):  # type: ignore[override]
        acc = _accumulation_dtype(rows.dtype)
        n = target.numel()
        ce = torch.empty(n, dtype=acc, device=rows.device)
        correct = torch.empty(n, dtype=torch.bool, device=rows.device)
        loss = torch.zeros((), dtype=acc, device=rows.device)
        grad_rows = torch.zeros(rows.shape, dtype=acc, device=rows.device) if rows.requires_grad else None
        # The weight gradient accumulates in float32 (or float64): summing many chunks in bf16 would lose bits.
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if weight.requires_grad else None
        buffer = _logits_buffer(rows, weight, chunk_size)
        for start in range(0, n, chunk_size):
            part = slice(start, start + chunk_size)
            h = rows[part]  # [chunk, H]
            tgt = target[part, None]  # [chunk, 1]
            softmax, chunk_ce, correct[part] = _chunk_softmax(h, weight, target[part], buffer)  # [chunk, V]
            ce[part] = chunk_ce
            c = coefficients_of(part, chunk_ce).to(acc)  # [chunk], detached by construction
            loss += (c * chunk_ce).sum()
            # grad_logits = c * (softmax - onehot), in place in the logits buffer: [chunk, V]
            grad_logits = softmax.scatter_add_(1, tgt, torch.full_like(tgt, -1, dtype=acc)).mul_(c[:, None])
            if grad_rows is not None:
                grad_rows[part] = grad_logits.to(weight.dtype) @ weight  # [chunk, H]
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h.to(acc))  # [V, H] += [V, chunk] @ [chunk, H]
        # Gradients in the inputs' dtypes (a no-op for float32/float64): frees the float32 accumulators.
        grad_rows = None if grad_rows is None else grad_rows.to(rows.dtype)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_rows, grad_weight)
        ctx.mark_non_differentiable(ce, correct)
        return loss, ce, correct

    @staticmethod
    def backward(ctx, grad_output, _grad_ce, _grad_correct):  # type: ignore[override]
        grad_rows, grad_weight = ctx.saved_tensors
        # The trainer's backward passes exactly 1: skip a full pass over the [V, H] weight gradient then.
        if not torch.equal(grad_output, torch.ones_like(grad_output)):
            grad_rows = None if grad_rows is None else grad_rows * grad_output
            grad_weight = None if grad_weight is None else grad_weight * grad_output
        return grad_rows, grad_weight, None, None, None
