"""Balanced Fine-Tuning: per-sample DFT (alpha = 1) scaled by the sample's lack of confidence in its weakest span."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dftune.losses.contract import CE, SEGMENTS, Objective, Setting, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.unfused import objective_loss

GROUP_SIZE = Setting(
    "bft_group_size", "group_size", int, 256, low=1, env="BFT_GROUP_SIZE",
    help="BFT: target tokens per confidence window (default: $BFT_GROUP_SIZE, else 256).",
)
GAMMA = Setting(
    "bft_gamma", "gamma", float, 1.0, low=0.0, low_open=True, env="BFT_CONF_GAMMA",
    help="BFT: sample weight 1 - confidence ** gamma, gamma above 0 (default: $BFT_CONF_GAMMA, else 1.0).",
)


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


def weigh(stats: Statistics, count: Count, *, group_size: int, gamma: float) -> Weights:
    coefficients, p_conf, sample_weight = bft_coefficients(
        stats.ce, stats.segment, stats.num_samples, count, group_size=group_size, gamma=gamma
    )
    metrics = {
        "bft_sample_weight": sample_weight.mean().to(stats.ce.dtype),
        "bft_min_group_conf": p_conf.mean().to(stats.ce.dtype),
    }
    return Weights(coefficients, metrics)


OBJECTIVE = Objective(
    name="bft",
    formula="per sample: mean of CE_i * sg(p_i), times 1 - p_conf^gamma of its weakest window of group_size targets",
    weigh=weigh, normalise_by="samples", settings=(GROUP_SIZE, GAMMA),
    needs=frozenset({CE, SEGMENTS}), per_token=False, sample_metrics=frozenset({"bft_sample_weight", "bft_min_group_conf"}),
    alias="use_bft_loss",
)


def bft_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    group_size: int = 256,
    gamma: float = 1.0,
    num_samples_in_batch: Count | None = None,
    sample_ids: Tensor | None = None,
) -> LossOutput:
    """BFT. Equals, looping over the samples b of the batch::

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
    return objective_loss(OBJECTIVE, logits, labels, count=num_samples_in_batch, sample_ids=sample_ids,
                          group_size=group_size, gamma=gamma)
