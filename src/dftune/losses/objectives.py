"""SFT, DFT and BFT for causal LMs, and the registry the trainer picks them from.

Each objective is a pure function of detached statistics of the valid targets (cross-entropy, which
sample each token belongs to) returning the per-token coefficients c_i; the public functions apply it
to the logits as ``loss = sum_i c_i * CE_i`` (see `core.py`).

Inputs follow the Hugging Face convention: logits [B, T, V], unshifted labels [B, T] with -100 ignored,
logits[:, t] predicting labels[:, t + 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.core import (
    IGNORE_INDEX,
    Count,
    LossOutput,
    TokenStats,
    shift_labels,
    token_metrics,
    token_stats,
    weighted_ce,
)


# --- coefficients: detached statistics in, c_i out ------------------------------------------------------


def sft_coefficients(ce: Tensor, num_items: Count) -> Tensor:
    """c_i = 1 / N: every target token weighs the same."""
    return torch.ones_like(ce) / num_items


def dft_coefficients(ce: Tensor, num_items: Count, *, alpha: float) -> Tensor:
    """c_i = (alpha * sg(p_i) + 1 - alpha) / N with p_i = exp(-CE_i), the target probability."""
    return (alpha * torch.exp(-ce) + (1.0 - alpha)) / num_items


def lowest_group_confidence(ce: Tensor, segment: Tensor, num_samples: int, group_size: int) -> Tensor:
    """p_conf [S] (float64): per sample, exp of the lowest mean target log-prob over windows of
    `group_size` consecutive target tokens (stride 1); the mean over all of them when the sample has
    fewer; 0 for a sample with no target token.

    Equals, for each sample s with target log-probs v (in order)::

        w = min(group_size, len(v))
        exp(min(mean(v[j:j + w]) for j in range(len(v) - w + 1))) if len(v) else 0.0

    without a loop over samples: window sums are differences of one float64 cumulative sum over all
    tokens, grouped by sample, and the per-sample minimum is a scatter-reduce.
    """
    order = torch.sort(segment, stable=True).indices  # tokens grouped by sample, in order within it
    segment = segment[order]
    logp = -ce[order].double()  # [N]
    counts = torch.bincount(segment, minlength=num_samples)  # [S] target tokens per sample
    starts = counts.cumsum(0) - counts  # [S] position of each sample's first token in `logp`
    width = counts.clamp(max=group_size)[segment]  # [N] window length of each token's sample

    csum = F.pad(logp.cumsum(0), (1, 0))  # [N + 1], csum[k] = sum of the first k log-probs
    end = torch.arange(1, logp.numel() + 1, device=logp.device)  # [N] token i ends window (end - width, end]
    fits = end - starts[segment] >= width  # the window lies within its sample
    window_mean = (csum[end] - csum[(end - width).clamp(min=0)]) / width
    window_mean = window_mean.masked_fill(~fits, torch.inf)

    lowest = torch.full((num_samples,), torch.inf, dtype=logp.dtype, device=logp.device)
    lowest = lowest.scatter_reduce(0, segment, window_mean, reduce="amin")  # [S]
    lowest = lowest.masked_fill(counts == 0, -torch.inf)  # no target token: p_conf = exp(-inf) = 0
    return torch.exp(lowest).clamp(max=1.0)  # log-probs can round a hair above 0


def bft_coefficients(
    ce: Tensor,
    segment: Tensor,
    num_samples: int,
    num_items: Count,
    *,
    group_size: int,
    gamma: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """c_i = s_b * sg(p_i) / n_b / S for token i of sample b with n_b target tokens, where
    s_b = 1 - p_conf_b ** gamma (see `lowest_group_confidence`) and S = `num_items` samples.

    Returns (c [N] float64, p_conf [num_samples], s [num_samples]).
    """
    p_conf = lowest_group_confidence(ce, segment, num_samples, group_size)
    sample_weight = 1.0 - p_conf**gamma  # [S]
    counts = torch.bincount(segment, minlength=num_samples)  # [S]
    coefficients = (sample_weight / counts.clamp(min=1))[segment] * torch.exp(-ce.double()) / num_items
    return coefficients, p_conf, sample_weight


# --- public losses ---------------------------------------------------------------------------------------


def sft_loss(logits: Tensor, labels: Tensor, *, num_items_in_batch: Count | None = None) -> LossOutput:
    """Supervised fine-tuning: token cross-entropy summed over the targets and divided by N.

    Equals ``F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
    reduction="sum") / N`` where N is `num_items_in_batch` (the global number of target tokens across
    accumulation steps and processes, which makes the summed micro-batch gradients exact) or, when None,
    the number of valid targets in this batch.
    """
    stats = token_stats(logits, shift_labels(labels))
    ce = stats.ce.detach()
    num_items = ce.numel() if num_items_in_batch is None else num_items_in_batch
    loss = weighted_ce(stats, sft_coefficients(ce, num_items))
    return LossOutput(loss, token_metrics(stats), num_tokens=ce.numel(), num_samples=labels.shape[0])


def dft_loss(
    logits: Tensor, labels: Tensor, *, alpha: float = 1.0, num_items_in_batch: Count | None = None
) -> LossOutput:
    """Dynamic Fine-Tuning (Wu et al. 2025, "On the Generalization of SFT", Eq. 9), with an SFT mix.

    Equals ``sum(ce * (alpha * exp(-ce).detach() + 1 - alpha)) / N`` with ``ce`` the per-target
    cross-entropy and N as in `sft_loss`. alpha=1 is the paper's DFT (CE times the stop-gradient target
    probability); alpha=0 is exactly SFT.
    """
    stats = token_stats(logits, shift_labels(labels))
    ce = stats.ce.detach()
    num_items = ce.numel() if num_items_in_batch is None else num_items_in_batch
    loss = weighted_ce(stats, dft_coefficients(ce, num_items, alpha=alpha))
    metrics = token_metrics(stats) | {"dft_alpha": float(alpha)}
    return LossOutput(loss, metrics, num_tokens=ce.numel(), num_samples=labels.shape[0])


def bft_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    group_size: int = 256,
    gamma: float = 1.0,
    num_samples_in_batch: Count | None = None,
    sample_ids: Tensor | None = None,
) -> LossOutput:
    """Balanced Fine-Tuning: per-sample DFT (alpha=1) scaled by the sample's lack of confidence.

    Equals, looping over the samples b of the batch::

        dft_b = mean(ce_i * exp(-ce_i).detach() for target tokens i of b)   # 0 with no target
        s_b = 1 - lowest_group_confidence_b ** gamma                         # detached
        loss = sum(s_b * dft_b) / S

    where the lowest group confidence is exp of the minimum, over windows of `group_size` consecutive
    target tokens of the sample (stride 1, ignored positions skipped; one window over all of them when
    there are fewer), of the mean target log-prob, and 0 for a sample with no target. S is
    `num_samples_in_batch` (the global number of samples across accumulation steps and processes) or,
    when None, the number of samples in this batch, counting those with no target token.

    sample_ids [B, T] (long, optional) is for padding-free packed batches where a row holds several
    samples: the id of the sample each label position belongs to. Ids must be unique across the batch
    (e.g. row * T + start of the sample); every position, padding included, carries one, and the number of
    samples is the number of distinct ids. Each sample's first label must be -100 (as Hugging Face's
    `DataCollatorWithFlattening` does) so that no target is predicted from the previous sample's tokens.
    When None, each row is one sample.
    """
    if group_size < 1:
        raise DftuneError(f"bft group_size must be at least 1, got {group_size}")
    stats = token_stats(logits, shift_labels(labels))
    segment, num_samples = _sample_segments(stats, labels, sample_ids)
    ce = stats.ce.detach()
    num_items = num_samples if num_samples_in_batch is None else num_samples_in_batch
    coefficients, p_conf, sample_weight = bft_coefficients(
        ce, segment, num_samples, num_items, group_size=group_size, gamma=gamma
    )
    metrics = token_metrics(stats) | {
        "bft_sample_weight": sample_weight.mean().to(ce.dtype),
        "bft_min_group_conf": p_conf.mean().to(ce.dtype),
    }
    loss = weighted_ce(stats, coefficients)
    return LossOutput(loss, metrics, num_tokens=ce.numel(), num_samples=num_samples)


def _sample_segments(stats: TokenStats, labels: Tensor, sample_ids: Tensor | None) -> tuple[Tensor, int]:
    """Which sample (0..S-1) each valid target belongs to, and S.

    A target at position t is the label at t + 1, so it belongs to the sample of label position t + 1.
    """
    num_positions = labels.shape[1]
    if sample_ids is None:
        return stats.index // num_positions, labels.shape[0]
    distinct, dense = torch.unique(sample_ids, return_inverse=True)  # dense [B, T] in 0..S-1
    target_sample = F.pad(dense[:, 1:], (0, 1), value=0)  # the last position never has a target
    return target_sample.flatten().index_select(0, stats.index), distinct.numel()


# --- registry --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """A causal-LM objective and the global count it normalises by."""

    fn: Callable[..., LossOutput]
    normalise_by: Literal["tokens", "samples"]
    """tokens: fn takes `num_items_in_batch`; samples: fn takes `num_samples_in_batch`."""

    def local_count(self, labels: Tensor, sample_ids: Tensor | None = None) -> Tensor:
        """This micro-batch's share of the global count (0-d long tensor, on labels' device): target
        tokens, or samples (distinct `sample_ids` when packed). Sum it over accumulation steps and
        processes to get the `global_count` of `compute_objective`."""
        if self.normalise_by == "tokens":
            return (labels[:, 1:] != IGNORE_INDEX).sum()
        num_samples = labels.shape[0] if sample_ids is None else torch.unique(sample_ids).numel()
        return torch.tensor(num_samples, device=labels.device)


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective(sft_loss, "tokens"),
    "dft": Objective(dft_loss, "tokens"),
    "bft": Objective(bft_loss, "samples"),
}


def compute_objective(
    name: str, logits: Tensor, labels: Tensor, *, global_count: Count | None = None, **kwargs
) -> LossOutput:
    """Call objective `name`, passing `global_count` as the normaliser keyword it takes."""
    if name not in OBJECTIVES:
        raise DftuneError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    objective = OBJECTIVES[name]
    key = "num_items_in_batch" if objective.normalise_by == "tokens" else "num_samples_in_batch"
    return objective.fn(logits, labels, **{key: global_count}, **kwargs)
