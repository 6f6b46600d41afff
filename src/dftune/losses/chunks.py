"""The chunk loop of the fused head: [chunk, V] logits, their statistics and both gradients, one block at a time.

`fused.py` decides what to compute (which objective, one pass or two); this module computes it. For rows
`h` [N, H] of the valid targets and the output layer `W` [V, H], each chunk makes ``z = h @ W.T`` in one reused
[chunk, V] float32 (or float64) buffer, applies the model's logit transform (scale, soft-capping; its slope is
kept for the backward), takes its CE, argmax, row statistics and, with a reference, the KL to
``p_ref = softmax(h_ref @ W_ref.T)``, and turns the buffer into ``grad_z = c (softmax - onehot) + d (softmax -
p_ref)`` in place. Then ``grad_h = grad_z @ W`` and ``grad_W += grad_z.T @ h``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dftune.losses.contract import REF_KL, REF_LOGP, Weights

RowStatisticsOf = Callable[[Tensor], dict[str, Tensor]]
"""chunk logits [chunk, V] (float32 or wider) -> the row statistics an objective needs, [chunk] each."""

WeightsOf = Callable[[slice, Tensor, dict[str, Tensor]], Weights]
"""(rows of this chunk, their detached CE [chunk], their statistics) -> the chunk's coefficients (c and d)."""


@dataclass(frozen=True)
class LogitTransform:
    """What a model does to ``z = hidden @ W.T`` to make its logits: ``softcap * tanh(scale * z / softcap)``, or
    ``scale * z`` without soft-capping. Gemma 2/3: `final_logit_softcapping`; Cohere: `logit_scale`; Granite:
    1 / `logits_scaling`; Falcon-H1: `lm_head_multiplier`. The identity by default."""

    scale: float = 1.0
    softcap: float | None = None

    def apply_(self, logits: Tensor, slope_out: Tensor | None = None) -> Tensor | float:
        """Transform `logits` in place; return d logits' / d z: `scale`, or, soft-capped, ``scale * (1 - tanh^2)``
        written into `slope_out` (pass None where no gradient is needed: then 1.0 is returned)."""
        if self.scale != 1.0:
            logits.mul_(self.scale)
        if self.softcap is None:
            return self.scale
        tanh = logits.div_(self.softcap).tanh_()
        slope: Tensor | float = 1.0
        if slope_out is not None:
            slope = torch.mul(tanh, tanh, out=slope_out[: logits.shape[0]]).neg_().add_(1.0).mul_(self.scale)
        logits.mul_(self.softcap)
        return slope


@dataclass(frozen=True)
class Reference:
    """A reference model's final hidden states at the valid targets [N, H] (detached), its output layer [V, H] and
    its logit transform."""

    rows: Tensor
    weight: Tensor
    transform: LogitTransform = LogitTransform()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> float32, float64 stays


def _logits_into(out: Tensor, rows: Tensor, weight: Tensor) -> Tensor:
    """``rows @ weight.T`` into the first rows of the buffer `out` (upcast when the inputs are bf16/fp16)."""
    logits = out[: rows.shape[0]]
    if rows.dtype == out.dtype:
        torch.mm(rows, weight.T, out=logits)  # [chunk, V]
    else:
        logits.copy_(rows @ weight.T)  # bf16/fp16 matmul, upcast into the float32 buffer
    return logits


class Chunks:
    """Buffers reused by every chunk, and CE, correct, entropy and statistics ([N] each), filled chunk by chunk."""

    def __init__(
        self, rows: Tensor, weight: Tensor, chunk_size: int, names: list[str], reference: Reference | None,
        transform: LogitTransform = LogitTransform(),
    ) -> None:  # fmt: skip
        n, acc = rows.shape[0], accumulation_dtype(rows.dtype)
        self.chunk_size, self.reference, self.transform = chunk_size, reference, transform
        self.buffer = torch.empty(min(chunk_size, n), weight.shape[0], dtype=acc, device=rows.device)
        self.ref_buffer = None if reference is None else torch.empty_like(self.buffer)
        self.slope_buffer = None if transform.softcap is None else torch.empty_like(self.buffer)
        self.slope: Tensor | float = 1.0  # d logits / d z of the current chunk
        self.ce = torch.empty(n, dtype=acc, device=rows.device)
        self.correct = torch.empty(n, dtype=torch.bool, device=rows.device)
        self.entropy = torch.empty(n, dtype=acc, device=rows.device)
        names = names + ([REF_KL, REF_LOGP] if reference is not None else [])
        self.stats = {name: torch.empty(n, dtype=acc, device=rows.device) for name in names}

    def parts(self) -> range:
        return range(0, self.ce.numel(), self.chunk_size)

    def softmax(
        self, part: slice, rows: Tensor, weight: Tensor, target: Tensor, statistics_of: RowStatisticsOf | None
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """One chunk: (softmax [chunk, V] in the buffer, p_ref [chunk, V] or None, its statistics); CE, correct and
        statistics are stored at `part`."""
        logits = _logits_into(self.buffer, rows, weight)
        self.slope = self.transform.apply_(logits, self.slope_buffer)
        extra = statistics_of(logits) if statistics_of is not None else {}
        p_ref = None
        if self.reference is not None:
            # KL(p_ref || p) = sum p_ref * (log p_ref - log p), elementwise, before the buffer turns into softmax;
            # log p_ref - log p = (z_ref - z) - (lse_ref - lse): exactly 0 where the two models agree.
            ref_logits = _logits_into(self.ref_buffer, self.reference.rows[part], self.reference.weight)
            self.reference.transform.apply_(ref_logits)  # no gradient reaches the reference
            ref_lse = torch.logsumexp(ref_logits, dim=-1, keepdim=True)  # [chunk, 1]
            ref_logp = (ref_logits.gather(1, target[:, None]) - ref_lse).squeeze(1)  # [chunk] log p_ref(target)
            p_ref = (ref_logits - ref_lse).exp_()  # [chunk, V]
            lse_gap = ref_lse - torch.logsumexp(logits, dim=-1, keepdim=True)
            log_ratio = ref_logits.sub_(logits).sub_(lse_gap)  # in the reference's buffer
            extra = {**extra, REF_KL: torch.linalg.vecdot(p_ref, log_ratio), REF_LOGP: ref_logp}
        self.correct[part] = logits.argmax(dim=-1) == target
        target_logit = logits.gather(1, target[:, None])  # [chunk, 1]
        top = logits.amax(dim=-1, keepdim=True)  # [chunk, 1]
        total = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)  # [chunk, 1]
        self.ce[part] = (total.log() + top - target_logit).squeeze(1)  # logsumexp - target logit
        for name, value in extra.items():
            self.stats[name][part] = value
        softmax = logits.div_(total)
        self.entropy[part] = -torch.special.xlogy(softmax, softmax).sum(dim=-1)  # a diagnostic: 0 log 0 = 0
        return softmax, p_ref, extra


@torch.no_grad()
def chunked_statistics(
    rows: Tensor, weight: Tensor, target: Tensor, chunks: Chunks, statistics_of: RowStatisticsOf | None
) -> Chunks:
    """CE, correct and statistics of every valid row, chunk by chunk, no gradient."""
    for start in chunks.parts():
        part = slice(start, start + chunks.chunk_size)
        chunks.softmax(part, rows[part], weight, target[part], statistics_of)
    return chunks


def target_statistics(
    hidden: Tensor, weight: Tensor, target: Tensor, index: Tensor, chunk_size: int, transform: LogitTransform | None
) -> Chunks:
    """CE and entropy ([N]) of the targets `target` [N] at the flat positions `index` [N] of `hidden` [B, T, H],
    through the output layer `weight` [V, H] one chunk of logits at a time, no gradient. Equals
    ``F.cross_entropy(hidden.flatten(0, 1)[index] @ weight.T, target, reduction="none")`` without [N, V] logits."""
    rows = hidden.flatten(0, 1).index_select(0, index).to(weight.dtype)  # [N, H]
    return chunked_statistics(rows, weight, target, Chunks(rows, weight, chunk_size, [], None, transform), None)


class FusedLinearObjective(torch.autograd.Function):
    """loss = sum_i c_i CE_i + d_i KL_i of ``rows @ weight.T``, gradients computed in the forward pass per chunk.

    d loss / d logits_i = c_i (softmax_i - onehot_i) + d_i (softmax_i - p_ref_i), so per chunk grad_rows =
    grad_logits @ W and grad_W += grad_logits.T @ rows; only one [chunk, V] block of logits (two with a
    reference) is alive at a time. CE, correct and the statistics land in `chunks` (no gradient).
    """

    @staticmethod
    def forward(ctx, rows, weight, target, weights_of: WeightsOf, chunks: Chunks, statistics_of):  # type: ignore
        acc = accumulation_dtype(rows.dtype)
        loss = torch.zeros((), dtype=acc, device=rows.device)
        grad_rows = torch.zeros(rows.shape, dtype=acc, device=rows.device) if rows.requires_grad else None
        # The weight gradient accumulates in float32 (or float64): summing many chunks in bf16 would lose bits.
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if weight.requires_grad else None
        for start in chunks.parts():
            part = slice(start, start + chunks.chunk_size)
            h, tgt = rows[part], target[part, None]  # [chunk, H], [chunk, 1]
            softmax, p_ref, extra = chunks.softmax(part, h, weight, target[part], statistics_of)  # [chunk, V]
            weights = weights_of(part, chunks.ce[part], extra)
            c = weights.coefficients.to(acc)  # [chunk], detached by construction
            loss += (c * chunks.ce[part]).sum()
            kl_term = None
            if weights.kl_coefficients is not None:
                d = weights.kl_coefficients.to(acc)[:, None]  # [chunk, 1]
                loss += (d[:, 0] * extra[REF_KL]).sum()
                kl_term = p_ref.sub_(softmax).mul_(-d)  # d (softmax - p_ref), in p_ref's memory
            # grad_logits = c (softmax - onehot) [+ d (softmax - p_ref)], in place in the logits buffer: [chunk, V]
            grad_logits = softmax.scatter_add_(1, tgt, torch.full_like(tgt, -1, dtype=acc)).mul_(c[:, None])
            if kl_term is not None:
                grad_logits.add_(kl_term)
            if not isinstance(chunks.slope, float) or chunks.slope != 1.0:
                grad_logits.mul_(chunks.slope)  # back through the logit transform: d loss / d z
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
        return grad_rows, grad_weight, None, None, None, None
