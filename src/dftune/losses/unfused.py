"""Any objective on materialised logits: the reference path, and the one used where the fused head cannot apply.

``objective_loss(objective, logits, labels, ...)`` gathers the valid target rows, computes CE (with its
gradient) and the detached statistics the objective declares, asks the objective for its coefficients and
returns ``sum_i c_i * CE_i``. Causal LMs shift the labels (logits[:, t] predicts labels[:, t + 1]); stage dllm
does not, and scales each sample's coefficients by `row_scale` (its 1 / t).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.contract import REF_KL, REF_LOGP, SEGMENTS, Objective, Statistics, Weights
from dftune.losses.core import (
    Count, LossOutput, at_targets, shift_labels, target_scale, token_metrics, token_stats, weighted_ce,
)
from dftune.losses.statistics import row_statistics, row_statistics_of, sample_segments


def check_sample_ids(objective: Objective, sample_ids: Tensor | None) -> None:
    if sample_ids is not None and SEGMENTS not in objective.needs:
        raise DftuneError(f"sample_ids apply to objectives that weigh whole samples; {objective.name} does not "
                          "depend on sample boundaries")


def objective_metrics(
    objective: Objective, weights: Weights, count: Count, num_tokens: int, num_samples: int
) -> tuple[dict[str, Tensor | float], frozenset[str]]:
    """The objective's metrics plus `mean_token_weight`, and which of them are means over samples.

    mean_token_weight = sum_i c_i * count / (this call's tokens, or samples for an objective normalised by
    samples), a mean over that unit: averaged over a logging window it is sum_i c_i * count over the window, the
    share of SFT's gradient mass (1.0) the objective keeps: alpha * mean(p) + 1 - alpha for DFT.
    """
    per_sample = objective.normalise_by == "samples"
    units = num_samples if per_sample else num_tokens
    mass = weights.coefficients.detach().sum() * count / max(units, 1)
    metrics = weights.metrics | {"mean_token_weight": mass}
    return metrics, objective.sample_metrics | ({"mean_token_weight"} if per_sample else frozenset())


def check_reference(objective: Objective, reference: object | None, ref_logps: Tensor | None = None) -> None:
    """A reference is given exactly when the objective needs one (`REF_KL`, `REF_LOGP`): its outputs, or for an
    objective that only needs log p_ref(target) of the starting model its precomputed `ref_logps`."""
    if ref_logps is not None:
        if not objective.precomputable:
            raise DftuneError(f"objective {objective.name} cannot use precomputed reference log-probs (ref_logps, "
                              f"precompute_ref_log_probs): {objective.not_precomputable()}")
        if reference is not None:
            raise DftuneError(f"objective {objective.name}: give the reference's outputs or ref_logps, not both")
        return
    if objective.needs_reference and reference is None:
        raise DftuneError(f"objective {objective.name} compares the model with a reference model: pass the "
                          "reference's logits (ref_logits), or its hidden states and output layer to the fused head")
    if not objective.needs_reference and reference is not None:
        raise DftuneError(f"objective {objective.name} uses no reference model, but one was given")


def objective_loss(
    objective: Objective,
    logits: Tensor,
    labels: Tensor,
    *,
    count: Count | None = None,
    sample_ids: Tensor | None = None,
    shift: bool = True,
    row_scale: Tensor | None = None,
    ref_logits: Tensor | None = None,
    ref_logps: Tensor | None = None,
    whole: Callable[[Statistics], tuple[Statistics, Tensor]] | None = None,
    **settings: Any,
) -> LossOutput:
    """`objective` on logits [B, T, V] and labels [B, T] (-100 ignored).

    Equals, with ce_i = ``F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")`` at
    the valid targets (``targets = labels[:, 1:]`` when `shift`, else `labels`)::

        c = objective.weigh(Statistics(ce.detach(), ...), count, **settings).coefficients   # detached
        loss = sum(c_i * row_scale[b_i] * ce_i)  (+ sum(d_i * KL_i) for an objective with a distribution term)

    `count` is the normaliser (global across accumulation steps and processes); None: this call's own.
    `row_scale`: [B] (b_i the row of target i), or [B, T] per label position (then row_scale[b_i, t_i]).
    `ref_logits` [B, T, V]: a reference model's logits, for objectives that need `REF_KL` or `REF_LOGP`.
    `ref_logps` [B, T]: instead, for an objective whose reference is only `REF_LOGP` of the starting model
    (`Objective.precomputable`), ``log_softmax(ref_logits[b, t - 1])[labels[b, t]]`` aligned with the labels
    (any value where labels are -100): the same loss without running the reference.
    `whole`: for a call on sequence shards, maps this call's statistics to those of the whole sequences and this
    call's targets' positions among them; `weigh` (and the metrics) then see whole samples.
    """
    settings = objective.resolve(settings)
    check_sample_ids(objective, sample_ids)
    targets = shift_labels(labels) if shift else labels
    wanted = row_statistics_of(objective)
    check_reference(objective, ref_logits, ref_logps)
    stats = token_stats(logits, targets, partial(row_statistics, wanted=wanted, settings=settings), ref_logits)
    ce = stats.ce.detach()
    segment, num_samples = None, labels.shape[0]
    if SEGMENTS in objective.needs:
        segment, num_samples = sample_segments(stats.index, labels, sample_ids)
    rows = stats.rows if stats.kl is None else {**stats.rows, REF_KL: stats.kl.detach(), REF_LOGP: stats.ref_logp}
    if ref_logps is not None:
        rows = {**rows, REF_LOGP: at_targets(ref_logps.detach(), stats.index, shift)}
    detached = Statistics(ce=ce, num_samples=num_samples, segment=segment, rows=rows)
    count = objective.default_count(detached) if count is None else count
    seen, mine = (detached, None) if whole is None else whole(detached)
    weights = objective.weigh(seen, count, **settings)
    metrics, sample_metrics = objective_metrics(objective, weights, count, seen.ce.numel(), num_samples)
    coefficients = weights.coefficients if mine is None else weights.coefficients[mine]
    if mine is not None and weights.kl_coefficients is not None:
        weights = Weights(coefficients, weights.metrics, weights.kl_coefficients[mine])
    if row_scale is not None:
        coefficients = coefficients * target_scale(row_scale, stats.index, labels, shift).to(coefficients.dtype)
    loss = weighted_ce(stats, coefficients)
    if weights.kl_coefficients is not None:
        loss = loss + (weights.kl_coefficients.detach().to(stats.kl.dtype) * stats.kl).sum()
    return LossOutput(
        loss, token_metrics(stats) | metrics, num_tokens=ce.numel(), num_samples=num_samples,
        sample_metrics=sample_metrics, target_ce=ce, target_index=stats.index,
    )
