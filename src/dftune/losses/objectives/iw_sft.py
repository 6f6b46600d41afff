"""Importance-weighted SFT (Qin & Springenberg 2025, "Supervised Fine Tuning on Curated Data is Reinforcement
Learning (and can be improved)", arXiv 2507.12856), as the authors' LLM code computes it.

SFT on curated data maximises a loose lower bound of the RL objective; weighting each sequence by the importance
ratio of the policy to the reference that produced the data tightens it. The authors smooth the ratio by taking
the per-token mean of the log-ratio over the sequence (times a temperature) and clip it to [0, max_weight]::

    w_b = clamp(exp(temperature * mean_{i in b}(log p_theta_i - log p_ref_i)), 0, max_weight)   # detached

Their LLM run uses temperature 1 and max_weight 16, with the starting model as the frozen reference; the loss is
``sum_i w_b(i) * CE_i / N`` over the target tokens. A sequence the policy now finds likelier than the reference
did weighs more.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.losses.contract import CE, REF_LOGP, SEGMENTS, Objective, Setting, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.unfused import objective_loss

TEMPERATURE = Setting("iw_sft_temperature", "temperature", float, 1.0, low=0.0,
                      help="iw-SFT: sequence weight exp(temperature * mean log(p/p_ref)); 0 is SFT (the authors' "
                      "LLM run: 1).")
MAX_WEIGHT = Setting("iw_sft_max_weight", "max_weight", float, 16.0, low=0.0,
                     help="iw-SFT: the sequence weight is clipped to [0, iw_sft_max_weight] (the authors' 16).")


def iw_sft_weights(
    ce: Tensor, ref_logp: Tensor, segment: Tensor, num_samples: int, *, temperature: float, max_weight: float
) -> Tensor:
    """w [S] (float64): clamp(exp(temperature * mean over the sample's targets of (log p - log p_ref)), 0,
    max_weight); 1 for a sample with no target (it has no token to weigh)."""
    log_ratio = (-ce - ref_logp.to(ce.dtype)).double()  # [N]
    sums = torch.zeros(num_samples, dtype=torch.float64, device=ce.device).index_add_(0, segment, log_ratio)
    counts = torch.bincount(segment, minlength=num_samples).clamp(min=1)
    return torch.exp(temperature * sums / counts).clamp(0.0, max_weight)


def weigh(stats: Statistics, count: Count, *, temperature: float, max_weight: float) -> Weights:
    weights = iw_sft_weights(stats.ce, stats.rows[REF_LOGP], stats.segment, stats.num_samples,
                             temperature=temperature, max_weight=max_weight)
    coefficients = weights[stats.segment] / count  # [N]
    has_target = torch.bincount(stats.segment, minlength=stats.num_samples) > 0
    metrics = {"iw_sft_weight": weights[has_target].sum().to(stats.ce.dtype) / max(int(has_target.sum()), 1)}
    return Weights(coefficients, metrics)


OBJECTIVE = Objective(
    name="iw_sft",
    formula="CE_i * w_b, w_b = min(exp(T * mean over sample b of log(p_i / p_ref,i)), w_max), detached",
    weigh=weigh, normalise_by="tokens", settings=(TEMPERATURE, MAX_WEIGHT),
    needs=frozenset({CE, SEGMENTS, REF_LOGP}), per_token=False,
)


def iw_sft_loss(
    logits: Tensor, labels: Tensor, ref_logits: Tensor, *, temperature: float = 1.0, max_weight: float = 16.0,
    num_items_in_batch: Count | None = None, sample_ids: Tensor | None = None,
) -> LossOutput:
    """iw-SFT against a reference's logits [B, T, V]. Equals, looping over the samples b (rows, or `sample_ids`
    as in `bft_loss`), with ``ce`` and N as in `sft_loss`::

        lr_i = log_softmax(logits_i)[y_i] - log_softmax(ref_logits_i)[y_i]       # detached, target i of b
        w_b = min(exp(temperature * mean(lr_i for i in b)), max_weight)
        loss = sum(w_b * ce_i for every target i of every b) / N
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch, ref_logits=ref_logits,
                          sample_ids=sample_ids, temperature=temperature, max_weight=max_weight)
