"""Dynamic Entropy Fine-Tuning (arXiv 2602.11424, "DEFT: Dynamic Entropy Fine-Tuning for Adaptive Gradient
Allocation in LLM Training"), its parameter-free variant as the authors' trainer computes it (objective "DEFT").

Per target, the Tsallis q-log loss ``-(p ** a - 1) / a`` with its order a set by the model's own concentration at
that position, ``a = sg(sum_v softmax_v ** 2)`` (exp of minus the Renyi-2 entropy, in [1/V, 1]). Its gradient is
``p ** a`` times CE's: a diffuse prediction (a near 0) trains like SFT, a concentrated one (a near 1) like DFT.
Here as the contract's coefficient, ``c_i = sg(p_i ** a_i) / N``; the reported loss is ``sum_i c_i CE_i``, not the
q-log value. The authors' code divides by ``a + 1e-6``, which scales the gradient by ``a / (a + 1e-6)``; we leave
the 1e-6 out (a >= 1/V > 0 needs no guard), a difference under 5% only for near-uniform rows of a 50k vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dftune.losses.contract import CE, Objective, RowStatistic, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.unfused import objective_loss

CONCENTRATION = "concentration"


def concentration(rows: Tensor, **_settings: Any) -> Tensor:
    """sum_v q_v ** 2 of q = softmax(row), per row [n]: ``rows.softmax(-1).pow(2).sum(-1)``."""
    return rows.softmax(dim=-1).square().sum(dim=-1)


def deft_coefficients(ce: Tensor, concentration: Tensor, num_items: Count) -> Tensor:
    """c_i = sg(p_i ** a_i) / N = exp(-a_i * CE_i) / N, a_i the concentration at target i."""
    return torch.exp(-concentration.to(ce.dtype) * ce) / num_items


def weigh(stats: Statistics, count: Count) -> Weights:
    a = stats.rows[CONCENTRATION]
    metrics = {"deft_order": a.sum() / max(a.numel(), 1)}
    return Weights(deft_coefficients(stats.ce, a, count), metrics)


OBJECTIVE = Objective(
    name="deft",
    formula="CE_i * sg(p_i^a_i), a_i = sg(sum_v softmax_v^2) (Tsallis q-log, parameter-free)",
    weigh=weigh, normalise_by="tokens", needs=frozenset({CE, CONCENTRATION}),
    statistics={CONCENTRATION: RowStatistic(concentration)}, stages=frozenset({"sft", "dllm"}),
)


def deft_loss(logits: Tensor, labels: Tensor, *, num_items_in_batch: Count | None = None) -> LossOutput:
    """DEFT. With ``ce`` the per-target cross-entropy and N as in `sft_loss`, its gradient equals that of the
    paper's q-log loss ``sum(-(exp(-a * ce) - 1) / a) / N`` and its value is::

        a = logits_i.detach().float().softmax(-1).pow(2).sum(-1)     # at each target position i
        loss = sum(ce * exp(-a * ce).detach()) / N
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch)
