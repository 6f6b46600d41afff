"""The shared core of every objective: per-token cross-entropy of the valid targets, and the result type.

Every objective is "cross-entropy times a detached per-token coefficient": ``loss = sum_i c_i * CE_i`` over the
valid target tokens i. This module computes CE_i (with the gradient) from logits and labels; the objectives
(`contract.py`) supply the coefficients c_i from detached statistics only, so the same coefficients serve the
unfused path, the fused chunked head and stage dllm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100

Count = int | Tensor
"""A normaliser: a Python int, or a 0-d tensor (e.g. all-reduced across processes) to avoid a sync."""

@dataclass
class LossOutput:
    """What every objective returns."""

    loss: Tensor
    """Scalar to call `.backward()` on, float32 or wider."""
    metrics: dict[str, Tensor | float]
    """Detached 0-d tensors or floats: means over this call's tokens (or samples, see `sample_metrics`)."""
    num_tokens: int
    """Valid target tokens in this call: the weight of the per-token metrics."""
    num_samples: int
    """Samples in this call, including those with no target token: the weight of the `sample_metrics`."""
    sample_metrics: frozenset[str] = frozenset()
    """The metrics that are means over samples; every other metric is a mean over target tokens. A trainer
    averaging metrics over several calls weighs each call by `num_samples` for these and by `num_tokens` for
    the rest, which gives the exact mean over the whole window."""
    target_ce: Tensor | None = None
    """[N] detached CE of each valid target, and `target_index` [N] its flat position b * T + t in the [B, T] grid
    of the targets (for causal LMs: predicting labels[:, t + 1]): for breakdowns such as CE per data source."""
    target_index: Tensor | None = None


@dataclass(frozen=True)
class TokenStats:
    """Cross-entropy of the N valid targets of a batch, in flat order (row-major over [B, T])."""

    ce: Tensor
    """[N] -log p(target), differentiable, float32 or wider."""
    correct: Tensor
    """[N] bool: argmax of the logits == target."""
    index: Tensor
    """[N] long: flat position b * T + t of each valid target in the [B, T] grid."""
    rows: Mapping[str, Tensor] = field(default_factory=dict)
    """[N] detached row statistics of the targets' logits, as asked of `token_stats`."""
    kl: Tensor | None = None
    """[N] KL(p_ref || p) at each target, differentiable w.r.t. the logits (when reference logits were given)."""
    ref_logp: Tensor | None = None
    """[N] detached log p_ref(target) at each target (when reference logits were given)."""
    entropy: Tensor | None = None
    """[N] detached entropy of the predictive distribution at each target position (a diagnostic)."""


def shift_labels(labels: Tensor) -> Tensor:
    """HF causal-LM alignment: targets[:, t] = labels[:, t + 1], and the last position has no target.

    [B, T] -> [B, T], so that targets line up with logits[:, t] without slicing (and copying) the logits.
    """
    return shifted(labels, IGNORE_INDEX)


def shifted(values: Tensor, fill: float) -> Tensor:
    """A per-position column aligned with the labels [B, T], moved as `shift_labels` moves them (last: `fill`)."""
    return F.pad(values[:, 1:], (0, 1), value=fill)


def at_targets(ref_logps: Tensor, index: Tensor, shift: bool) -> Tensor:
    """[N] the values of a column aligned with the labels [B, T] (`ref_logps`: log p_ref(labels[b, t])) at the
    valid targets' flat `index` into the (shifted when `shift`) targets."""
    return (shifted(ref_logps, float("nan")) if shift else ref_logps).flatten().index_select(0, index)


def token_stats(
    logits: Tensor,
    targets: Tensor,
    row_statistics: Callable[[Tensor], Mapping[str, Tensor]] | None = None,
    reference: Tensor | None = None,
) -> TokenStats:
    """Cross-entropy of each valid target, computed on the valid rows only.

    Equals ``F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")`` at the
    positions where ``targets != -100``, without upcasting the whole [B, T, V] tensor: the [N, V] rows of
    the valid positions are gathered first (in the logits' dtype) and only they are upcast.
    float64 logits stay float64. `row_statistics` maps those upcast [N, V] rows (detached) to statistics [N].
    With `reference` logits [B, T, V] (a reference model's, detached), also the token-level KL divergence
    ``F.kl_div(log_softmax(logits), log_softmax(reference), log_target=True, reduction="none").sum(-1)``, that is
    KL(p_ref || p), and ``log_softmax(reference)`` at the target, at the same positions.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    flat_targets = targets.flatten()  # [B*T]
    index = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)  # [N]
    rows = logits.flatten(0, 1).index_select(0, index)  # [N, V] in the logits' dtype
    rows = rows.to(torch.promote_types(rows.dtype, torch.float32))
    target = flat_targets.index_select(0, index)  # [N]
    ce = F.cross_entropy(rows, target, reduction="none")  # [N]
    correct = rows.detach().argmax(dim=-1) == target
    entropy = predictive_entropy(rows.detach())
    extra = {} if row_statistics is None else row_statistics(rows.detach())
    kl = ref_logp = None
    if reference is not None:
        if reference.shape != logits.shape:
            raise ValueError(f"reference logits {tuple(reference.shape)} do not match logits {tuple(logits.shape)}")
        ref_rows = reference.detach().flatten(0, 1).index_select(0, index).to(rows.dtype)  # [N, V]
        log_p, log_ref = F.log_softmax(rows, dim=-1), F.log_softmax(ref_rows, dim=-1)
        kl = F.kl_div(log_p, log_ref, log_target=True, reduction="none").sum(dim=-1)  # [N]
        ref_logp = log_ref.gather(1, target[:, None]).squeeze(1)  # [N]
    return TokenStats(ce=ce, correct=correct, index=index, rows=extra, kl=kl, entropy=entropy, ref_logp=ref_logp)


def predictive_entropy(rows: Tensor) -> Tensor:
    """-sum_v p_v log p_v of p = softmax(rows), per row [n]; equals ``torch.special.entr(rows.softmax(-1)).sum(-1)``.

    Computed relative to each row's largest logit m, with d_v = z_v - m and r = sum over the other entries of
    exp(d_v): H = log1p(r) - sum_other(exp(d_v) d_v) / (1 + r). This keeps its relative precision when the
    distribution is nearly one-hot (H ~ 1e-10), where ``-(p * log_softmax).sum()`` keeps only its absolute one.
    """
    with torch.no_grad():
        d = rows - rows.amax(dim=-1, keepdim=True)  # [n, V], <= 0
        others = torch.exp(d).scatter(-1, d.argmax(dim=-1, keepdim=True), 0.0)  # exp(d), 0 at one largest entry
        r = others.sum(dim=-1)
        return torch.log1p(r) - (others * d).sum(dim=-1) / (1.0 + r)


def token_metrics(stats: TokenStats) -> dict[str, Tensor | float]:
    """Per-token means that every objective reports, so runs with different objectives stay comparable.

    avg_p_correct: mean target probability; token_accuracy: mean of argmax == target; ce: plain mean
    cross-entropy; entropy: mean predictive entropy at the target positions. All 0.0 when there is no valid target.
    """
    ce = stats.ce.detach()
    count = max(ce.numel(), 1)  # no target: sums are 0, and so are the means
    metrics = {
        "avg_p_correct": torch.exp(-ce).sum() / count,
        "token_accuracy": stats.correct.sum().to(ce.dtype) / count,
        "ce": ce.sum() / count,
    }
    if stats.entropy is not None:
        metrics["entropy"] = stats.entropy.sum() / count
    return metrics


def target_scale(scale: Tensor, index: Tensor, labels: Tensor, shift: bool) -> Tensor:
    """[N] each valid target's scale (stage dllm's ELBO weight), detached: `scale` [B] per row, or [B, T] per label
    position (block diffusion: per block). `index` [N] is the targets' flat positions in the (shifted, when `shift`)
    targets [B, T], where target t is labels[:, t + 1]: a per-position scale moves with its label."""
    scale = scale.detach()
    if scale.ndim == 1:
        return scale[index // labels.shape[1]]
    if scale.shape != labels.shape:
        raise ValueError(f"a per-token scale {tuple(scale.shape)} must match labels {tuple(labels.shape)}")
    return (F.pad(scale[:, 1:], (0, 1)) if shift else scale).flatten()[index]


def weighted_ce(stats: TokenStats, coefficients: Tensor) -> Tensor:
    """sum_i c_i * CE_i, with the coefficients [N] detached: the gradient flows through CE only."""
    return (coefficients.detach().to(stats.ce.dtype) * stats.ce).sum()
