"""Anchored SFT (Zhu et al., arXiv 2509.23753), as LLaMA-Factory computes it (`use_asft_loss`, `asft_alpha`).

DFT (alpha = 1) plus a KL anchor to the starting model: `asft_alpha` times the token-level KL(pi_ref || pi_theta)
over the full vocabulary, both terms normalised by the global count of target tokens (LLaMA-Factory averages the
KL per micro-batch, which gradient accumulation distorts; here both terms take the same global N). The anchor
keeps DFT's reweighting from drifting away from the reference distribution.
"""

from __future__ import annotations

from torch import Tensor

from dftune.losses.contract import CE, REF_KL, Objective, Setting, Statistics, Weights
from dftune.losses.core import Count, LossOutput
from dftune.losses.objectives.dft import dft_coefficients
from dftune.losses.unfused import objective_loss

ALPHA = Setting("asft_alpha", "alpha", float, 0.1, low=0.0, selects=True,
                help="ASFT: weight of the KL(reference || model) anchor added to DFT (LLaMA-Factory's asft_alpha).")


def weigh(stats: Statistics, count: Count, *, alpha: float) -> Weights:
    """c_i = sg(p_i) / N (DFT), d_i = asft_alpha / N; reports the mean KL over this call's targets."""
    kl = stats.rows[REF_KL]
    metrics = {"asft_kl": kl.sum() / max(kl.numel(), 1)}
    return Weights(dft_coefficients(stats.ce, count, alpha=1.0), metrics, kl_coefficients=kl.new_full(kl.shape, alpha) / count)


OBJECTIVE = Objective(
    name="asft",
    formula="CE_i * sg(p_i) + alpha * KL(p_ref,i || p_i) over the vocabulary, to the starting model (use_asft_loss)",
    weigh=weigh, normalise_by="tokens", settings=(ALPHA,), needs=frozenset({CE, REF_KL}),
    alias="use_asft_loss",
)


def asft_loss(
    logits: Tensor, labels: Tensor, ref_logits: Tensor, *, alpha: float = 0.1, num_items_in_batch: Count | None = None
) -> LossOutput:
    """ASFT. Equals, with ``ce`` the per-target cross-entropy and N as in `sft_loss`, at each target position i::

        kl_i = (softmax(ref_logits_i) * (log_softmax(ref_logits_i) - log_softmax(logits_i))).sum()
        loss = sum(ce * exp(-ce).detach()) / N + alpha * sum(kl) / N
    """
    return objective_loss(OBJECTIVE, logits, labels, count=num_items_in_batch, ref_logits=ref_logits, alpha=alpha)
