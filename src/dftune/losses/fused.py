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

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.contract import SEGMENTS, Objective, Statistics
from dftune.losses.core import IGNORE_INDEX, Count, LossOutput, TokenStats, shift_labels, token_metrics
from dftune.losses.registry import get_objective
from dftune.losses.statistics import row_statistics, row_statistics_of, sample_segments
from dftune.losses.unfused import check_sample_ids

LOGITS_PER_CHUNK = 2**23
"""Default chunk: as many tokens as keep one chunk of float32 logits near 32 MiB (55 tokens at V = 151936)."""

CoefficientsOf = Callable[[slice, Tensor, dict[str, Tensor]], Tensor]
"""(rows of this chunk, their detached CE [chunk], their row statistics) -> c [chunk]."""


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
    - chunk_size: valid target tokens per chunk; default ``max(1, 2**23 // V)``.
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
    missing = unfusable_statistics(spec)
    if missing:
        raise DftuneError(f"the fused loss head cannot compute {missing}, which objective {spec.name} needs, one "
                          "chunk of logits at a time: compute it unfused (fused_loss: auto or false)")

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
    wanted = row_statistics_of(spec)
    names = list(wanted)
    statistics_of = (lambda logits: row_statistics(logits, wanted, settings)) if wanted else None  # noqa: E731

    segment, num_samples = None, labels.shape[0]
    if SEGMENTS in spec.needs:
        segment, num_samples = sample_segments(index, labels, sample_ids)

    def weigh(ce: Tensor, extra: dict[str, Tensor], part: slice = slice(None)):
        part_segment = None if segment is None else segment[part]
        stats = Statistics(ce=ce, num_samples=num_samples, segment=part_segment, rows=extra)
        return spec.weigh(stats, num_items, **settings)

    num_items = (target.numel() if spec.normalise_by == "tokens" else num_samples) if count is None else count
    if spec.per_token and needs_grad:
        coefficients_of: CoefficientsOf = lambda part, ce, extra: weigh(ce, extra, part).coefficients  # noqa: E731
        loss, ce, correct, extra = _fused(rows, weight, target, coefficients_of, chunk_size, names, statistics_of)
        weights = weigh(ce, extra)  # the metrics, over every target
    else:
        # Pass 1: the statistics only (all an objective of whole samples needs before any coefficient).
        ce, correct, extra = _chunked_statistics(rows.detach(), weight.detach(), target, chunk_size, names,
                                                 statistics_of)
        weights = weigh(ce, extra)
        if needs_grad:  # pass 2: the gradients, with the coefficients now known
            coefficients = weights.coefficients
            loss, *_ = _fused(rows, weight, target, lambda part, *_: coefficients[part], chunk_size, [], None)
        else:
            loss = (weights.coefficients.to(ce.dtype) * ce).sum()
    metrics = token_metrics(TokenStats(ce=ce, correct=correct, index=index)) | weights.metrics
    return LossOutput(loss, metrics, target.numel(), num_samples, sample_metrics=spec.sample_metrics)


def _normaliser(spec: Objective, global_count: Count | None, num_items: Count | None, num_samples: Count | None):
    """`global_count`, or the objective's own keyword for it; the other unit's keyword is an error."""
    own, other = (num_items, num_samples) if spec.normalise_by == "tokens" else (num_samples, num_items)
    if other is not None:
        wrong = "num_samples_in_batch" if spec.normalise_by == "tokens" else "num_items_in_batch"
        raise DftuneError(f"{spec.name} is normalised by {spec.count_keyword}, not {wrong}")
    if global_count is not None and own is not None:
        raise DftuneError(f"pass global_count or {spec.count_keyword}, not both")
    return global_count if global_count is not None else own


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> float32, float64 stays


RowStatisticsOf = Callable[[Tensor], dict[str, Tensor]]
"""chunk logits [chunk, V] (float32 or wider) -> the row statistics an objective needs, [chunk] each."""


def _chunk_softmax(
    rows: Tensor, weight: Tensor, target: Tensor, out: Tensor, statistics_of: RowStatisticsOf | None
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """Logits of one chunk into the reused buffer `out` [>= chunk, V], their row statistics, then softmax in place.

    Returns (softmax [chunk, V] (a view of `out`), CE [chunk], argmax == target [chunk], row statistics [chunk]
    each). One [chunk, V] buffer serves every chunk and both passes: no per-chunk allocation of logits-sized
    temporaries (but what a row statistic itself allocates).
    """
    logits = out[: rows.shape[0]]
    if rows.dtype == out.dtype:
        torch.mm(rows, weight.T, out=logits)  # [chunk, V]
    else:
        logits.copy_(rows @ weight.T)  # bf16/fp16 matmul, upcast into the float32 buffer
    extra = statistics_of(logits) if statistics_of is not None else {}
    correct = logits.argmax(dim=-1) == target
    target_logit = logits.gather(1, target[:, None])  # [chunk, 1]
    top = logits.amax(dim=-1, keepdim=True)  # [chunk, 1]
    total = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)  # [chunk, 1]
    ce = (total.log() + top - target_logit).squeeze(1)  # logsumexp - target logit
    return logits.div_(total), ce, correct, extra


def _logits_buffer(rows: Tensor, weight: Tensor, chunk_size: int) -> Tensor:
    return torch.empty(min(chunk_size, rows.shape[0]), weight.shape[0],
                       dtype=_accumulation_dtype(rows.dtype), device=rows.device)


class _Collected:
    """CE [N], correct [N] and row statistics [N] each, filled chunk by chunk."""

    def __init__(self, n: int, names: list[str], like: Tensor) -> None:
        acc = _accumulation_dtype(like.dtype)
        self.ce = torch.empty(n, dtype=acc, device=like.device)
        self.correct = torch.empty(n, dtype=torch.bool, device=like.device)
        self.rows = {name: torch.empty(n, dtype=acc, device=like.device) for name in names}

    def put(self, part: slice, ce: Tensor, correct: Tensor, extra: dict[str, Tensor]) -> None:
        self.ce[part], self.correct[part] = ce, correct
        for name, value in extra.items():
            self.rows[name][part] = value


@torch.no_grad()
def _chunked_statistics(
    rows: Tensor, weight: Tensor, target: Tensor, chunk_size: int, names: list[str], statistics_of: RowStatisticsOf
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """CE [N], argmax == target [N] and the row statistics [N] of the valid rows, chunk by chunk, no gradient."""
    out = _Collected(target.numel(), names, rows)
    buffer = _logits_buffer(rows, weight, chunk_size)
    for start in range(0, target.numel(), chunk_size):
        part = slice(start, start + chunk_size)
        out.put(part, *_chunk_softmax(rows[part], weight, target[part], buffer, statistics_of)[1:])
    return out.ce, out.correct, out.rows


def _fused(
    rows: Tensor, weight: Tensor, target: Tensor, coefficients_of: CoefficientsOf, chunk_size: int,
    names: list[str], statistics_of: RowStatisticsOf | None,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """(loss, CE [N], correct [N], row statistics) with both gradients computed chunk by chunk."""
    out = _Collected(target.numel(), names, rows)
    loss = _FusedLinearObjective.apply(rows, weight, target, coefficients_of, chunk_size, statistics_of, out)
    return loss, out.ce, out.correct, out.rows


class _FusedLinearObjective(torch.autograd.Function):
    """loss = sum_i c_i * CE_i of ``rows @ weight.T``, gradients computed in the forward pass chunk by chunk.

    d loss / d logits_i = c_i * (softmax_i - onehot_i), so per chunk: grad_rows = grad_logits @ W and
    grad_W += grad_logits.T @ rows; only one [chunk, V] block is alive at a time. CE, correct and the row
    statistics go to `out` (detached, no gradient).
    """

    @staticmethod
    def forward(ctx, rows, weight, target, coefficients_of, chunk_size, statistics_of, out: _Collected):  # type: ignore[override]
        acc = _accumulation_dtype(rows.dtype)
        loss = torch.zeros((), dtype=acc, device=rows.device)
        grad_rows = torch.zeros(rows.shape, dtype=acc, device=rows.device) if rows.requires_grad else None
        # The weight gradient accumulates in float32 (or float64): summing many chunks in bf16 would lose bits.
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if weight.requires_grad else None
        buffer = _logits_buffer(rows, weight, chunk_size)
        for start in range(0, target.numel(), chunk_size):
            part = slice(start, start + chunk_size)
            h = rows[part]  # [chunk, H]
            tgt = target[part, None]  # [chunk, 1]
            softmax, chunk_ce, correct, extra = _chunk_softmax(h, weight, target[part], buffer, statistics_of)
            out.put(part, chunk_ce, correct, extra)
            c = coefficients_of(part, chunk_ce, extra).to(acc)  # [chunk], detached by construction
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
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_rows, grad_weight = ctx.saved_tensors
        # The trainer's backward passes exactly 1: skip a full pass over the [V, H] weight gradient then.
        if not torch.equal(grad_output, torch.ones_like(grad_output)):
            grad_rows = None if grad_rows is None else grad_rows * grad_output
            grad_weight = None if grad_weight is None else grad_weight * grad_output
        return grad_rows, grad_weight, None, None, None, None, None
