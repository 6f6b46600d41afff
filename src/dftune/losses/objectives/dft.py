"""Dynamic Fine-Tuning (Wu et al. 2025, "On the Generalization of SFT", Eq. 9), with an SFT mix and a power.

`power` k generalises the weight sg(p) to sg(p) ** k: k = 0 is SFT, k = 1 the paper's DFT, k > 1 the -p^k family
of "Beyond Log-Likelihood" (Li et al., arXiv 2510.00526), which leans further towards what the model already
finds probable. `min_weight` floors the coefficient, ``max(alpha * sg(p) ** k + 1 - alpha, min_weight)``: the DFT
author's suggestion for long texts, where tokens the model finds improbable would otherwise never be learned.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dftune.losses.contract import Objective, Setting, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.unfused import objective_loss

ALPHA = Setting(
    "dft_alpha", "alpha", float, 1.0, low=0.0, high=1.0, selects=True,
    help="DFT token weight alpha*p + 1 - alpha (1: the paper's DFT, 0: SFT).",
)
SCHEDULE = Setting(
    "dft_alpha_schedule", "alpha_schedule", str, "constant", choices=("constant", "linear"), scheduling=True,
    help="DFT: constant, or linear: alpha rises from 0 (SFT) to dft_alpha over dft_alpha_warmup_steps, so tokens "
    "the base model finds improbable are learned before DFT's weighting takes over.",
)
WARMUP = Setting(
    "dft_alpha_warmup_steps", "alpha_warmup_steps", int, 0, low=0, scheduling=True,
    help="DFT: optimizer steps over which a linear dft_alpha_schedule rises from 0 to dft_alpha.",
)
POWER = Setting(
    "dft_power", "power", float, 1.0, low=0.0, selects=True,
    help="DFT token weight alpha*p**k + 1 - alpha: k = 0 is SFT, 1 the paper's DFT, above 1 the -p^k family.",
)
MIN_WEIGHT = Setting(
    "dft_min_weight", "min_weight", float, 0.0, low=0.0, high=1.0,
    help="DFT: floor of the token weight, max(alpha*p**k + 1 - alpha, dft_min_weight), so that no target token "
    "(a rare format token, say) is left untrained; 0 (the default) is the paper's DFT.",
)


def dft_coefficients(
    ce: Tensor, num_items: Count, *, alpha: float, power: float = 1.0, min_weight: float = 0.0
) -> Tensor:
    """c_i = max(alpha * sg(p_i) ** k + 1 - alpha, min_weight) / N with p_i = exp(-CE_i), the target probability,
    k = `power`."""
    return (alpha * torch.exp(-power * ce) + (1.0 - alpha)).clamp(min=min_weight) / num_items


def alpha_in_force(kwargs: dict[str, Any], step: int) -> dict[str, Any]:
    """`linear`: alpha * min(1, step / warmup) at optimizer step `step` (0 at the first step: SFT)."""
    kwargs = dict(kwargs)
    schedule, warmup = kwargs.pop("alpha_schedule"), kwargs.pop("alpha_warmup_steps")
    if schedule == "linear" and warmup > 0:
        kwargs["alpha"] = kwargs.get("alpha", ALPHA.default) * min(1.0, step / warmup)
    return kwargs


def weigh(stats: Statistics, count: Count, *, alpha: float, power: float, min_weight: float) -> Weights:
    coefficients = dft_coefficients(stats.ce, count, alpha=alpha, power=power, min_weight=min_weight)
    return Weights(coefficients, {"dft_alpha": float(alpha)})


OBJECTIVE = Objective(
    name="dft",
    formula="CE_i * max(alpha * sg(p_i)^k + 1 - alpha, m) (alpha = k = 1, m = 0: the DFT paper's Eq. 9; "
    "k > 1: the -p^k family)",
    weigh=weigh, normalise_by="tokens", settings=(ALPHA, POWER, MIN_WEIGHT, SCHEDULE, WARMUP),
    stages=frozenset({"sft", "dllm"}),
    alias="use_dft_loss", schedule=alpha_in_force,
)


def dft_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    power: float = 1.0,
    min_weight: float = 0.0,
    num_items_in_batch: Count | None = None,
) -> LossOutput:
    """DFT: every target's cross-entropy times its own detached probability (to the power k), mixed with SFT.

    Equals ``sum(ce * (alpha * exp(-ce).detach() ** power + 1 - alpha).clamp(min=min_weight)) / N`` with ``ce``
    the per-target cross-entropy and N as in `sft_loss`. alpha=1, power=1, min_weight=0 is the paper's DFT (CE
    times the stop-gradient target probability); alpha=0 or power=0 is exactly SFT.
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch, alpha=alpha, power=power,
                          min_weight=min_weight)
