"""Remasking strategies: the confidence of each position's prediction, which decides the positions a step unmasks
(the most confident first, or every one past a threshold). Pure functions of the logits; `sampler.decode` uses them.

Our names and Dream's `alg` (Ye et al. 2025, `generation_utils.py`):

| ours | Dream | confidence of position i, with p = softmax(logits_i) |
|---|---|---|
| `low_confidence` | `maskgit_plus` | p[x0_i], the probability of the predicted token (LLaDA) |
| `margin` | `topk_margin` | p_(1) - p_(2), the top-1 minus the top-2 probability |
| `entropy` | `entropy` | sum_v p_v log p_v = -H(p) |
| `random` | `origin` | u ~ U(0, 1), independent of the model (LLaDA's `random`) |

The confidence comes from the model's distribution at temperature 1 (as LLaDA; the temperature only samples x0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dftune.config.decoding_args import Remasking


def confidence(
    logits: Tensor, x0: Tensor, remasking: Remasking, generator: torch.Generator | None = None
) -> Tensor:
    """[B, L] confidence of the predictions `x0` [B, L] under `logits` [B, L, V] (float; -inf logits allowed)."""
    if remasking == "random":
        return torch.rand(x0.shape, generator=generator, device=x0.device)
    probs = torch.softmax(logits, -1)  # [B, L, V]
    if remasking == "low_confidence":
        return probs.gather(-1, x0[..., None]).squeeze(-1)
    if remasking == "margin":
        top = probs.topk(2, dim=-1).values  # [B, L, 2]
        return top[..., 0] - top[..., 1]
    if remasking == "entropy":
        return torch.special.xlogy(probs, probs).sum(-1)  # xlogy(0, 0) = 0: a -inf logit adds nothing
    raise ValueError(f"unknown remasking {remasking!r}")


def cutoff(remasking: Remasking, threshold: float) -> float:
    """The confidence a position must exceed under `threshold`: the threshold itself for a probability
    (low_confidence, margin), minus it for entropy (entropy below `threshold` nats <=> -H above -threshold)."""
    return -threshold if remasking == "entropy" else threshold
