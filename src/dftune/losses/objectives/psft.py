"""Proximal SFT (Zhu et al. 2025, "Proximal Supervised Fine-Tuning", arXiv 2508.17784, ICLR 2026).

SFT read as a policy gradient with a constant advantage A = 1, then trust-region clipped as PPO clips it: per
target token, ``-min(r, clip(r, 1 - eps_low, 1 + eps_high))`` with ``r = p_theta / p_old``, averaged over the target
tokens. With A = 1 its gradient is ``sg(r) * 1[r <= 1 + eps_high]`` times CE's: a token whose probability has risen
more than eps_high above the old policy's stops pulling, so the policy cannot drift far in one window of updates
(the lower clip never binds with a positive advantage; eps_low only counts in `psft_clipped_low`).

p_old is a snapshot of the policy refreshed every `psft_refresh_steps` optimizer steps: the paper's verl recipe
computes the old log-probs once per batch of 256 and makes 256 / 32 = 8 updates on it, so r = 1 on the first
update after each refresh. Defaults eps_low = 0.2, eps_high = 0.28, refresh every 8 steps, from that recipe.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dftune.losses.contract import CE, REF_LOGP, REFRESH_STEPS, Objective, Setting, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.unfused import objective_loss

EPS_LOW = Setting("psft_eps_low", "eps_low", float, 0.2, low=0.0, high=1.0,
                  help="PSFT: lower clip of the ratio p/p_old (1 - eps_low); with advantage 1 it never binds, and "
                  "only the share of tokens under it is logged (psft_clipped_low).")
EPS_HIGH = Setting("psft_eps_high", "eps_high", float, 0.28, low=0.0,
                   help="PSFT: a target whose ratio p/p_old exceeds 1 + eps_high stops contributing to the gradient "
                   "(the verl recipe's clip_ratio_high 0.28).")
REFRESH = Setting("psft_refresh_steps", REFRESH_STEPS, int, 8, low=1, scheduling=True,
                  help="PSFT: optimizer steps between refreshes of the old policy p_old (a snapshot of the trainable "
                  "weights: with LoRA, of the adapters only); 8 as the paper's recipe (batch 256, mini-batch 32).")


def psft_coefficients(ce: Tensor, ref_logp: Tensor, num_items: Count, *, eps_high: float) -> tuple[Tensor, Tensor]:
    """c_i = sg(r_i) * 1[r_i <= 1 + eps_high] / N with r_i = p_i / p_old_i = exp(-CE_i - log p_old_i); returns
    (c [N], r [N])."""
    ratio = torch.exp(-ce - ref_logp.to(ce.dtype))
    return ratio * (ratio <= 1.0 + eps_high) / num_items, ratio


def weigh(stats: Statistics, count: Count, *, eps_low: float, eps_high: float) -> Weights:
    coefficients, ratio = psft_coefficients(stats.ce, stats.rows[REF_LOGP], count, eps_high=eps_high)
    n = max(ratio.numel(), 1)
    metrics = {
        "psft_ratio": ratio.sum() / n,
        "psft_clipped_high": (ratio > 1.0 + eps_high).sum().to(ratio.dtype) / n,
        "psft_clipped_low": (ratio < 1.0 - eps_low).sum().to(ratio.dtype) / n,
    }
    return Weights(coefficients, metrics)


def without_refresh(kwargs: dict[str, Any], step: int) -> dict[str, Any]:
    """The refresh interval is the trainer's (it refreshes p_old); the loss takes the clip settings only."""
    return {key: value for key, value in kwargs.items() if key != REFRESH_STEPS}


OBJECTIVE = Objective(
    name="psft",
    formula="CE_i * sg(r_i) * 1[r_i <= 1 + eps_high], r_i = p_i / p_old,i, p_old refreshed every N steps "
    "(PPO-clipped SFT)",
    weigh=weigh, normalise_by="tokens", settings=(EPS_LOW, EPS_HIGH, REFRESH),
    needs=frozenset({CE, REF_LOGP}), reference="recent", schedule=without_refresh,
)


def psft_loss(
    logits: Tensor, labels: Tensor, old_logits: Tensor, *, eps_low: float = 0.2, eps_high: float = 0.28,
    num_items_in_batch: Count | None = None,
) -> LossOutput:
    """PSFT against the old policy's logits [B, T, V]. Its gradient equals that of the paper's clipped objective::

        r = exp(log_softmax(logits)[target] - log_softmax(old_logits)[target].detach())   # at each target i
        ppo = -min(r, clamp(r, 1 - eps_low, 1 + eps_high)).sum() / N

    and its value is the coefficient form of the contract, ``sum(ce * r.detach() * (r <= 1 + eps_high)) / N``
    (with r = 1, i.e. old_logits = logits, exactly SFT). N as in `sft_loss`.
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch, ref_logits=old_logits,
                          eps_low=eps_low, eps_high=eps_high)
