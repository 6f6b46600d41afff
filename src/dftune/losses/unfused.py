"""Any objective on materialised logits: the reference path, and the one used where the fused head cannot apply.

``objective_loss(objective, logits, labels, ...)`` gathers the valid target rows, computes CE (with its
gradient) and the detached statistics the objective declares, asks the objective for its coefficients and
returns ``sum_i c_i * CE_i``. Causal LMs shift the labels (logits[:, t] predicts labels[:, t + 1]); stage dllm
does not, and scales each sample's coefficients by `row_scale` (its 1 / t).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.contract import SEGMENTS, Objective, Statistics
from dftune.losses.core import Count, LossOutput, shift_labels, token_metrics, token_stats, weighted_ce
from dftune.losses.statistics import row_statistics, row_statistics_of, sample_segments


def check_sample_ids(objective: Objective, sample_ids: Tensor | None) -> None:
    if sample_ids is not None and SEGMENTS not in objective.needs:
        raise DftuneError(f"sample_ids apply to objectives that weigh whole samples; {objective.name} does not "
                          "depend on sample boundaries")


def objective_loss(
    objective: Objective,
    logits: Tensor,
    labels: Tensor,
    *,
    count: Count | None = None,
    sample_ids: Tensor | None = None,
    shift: bool = True,
    row_scale: Tensor | None = None,
    **settings: Any,
) -> LossOutput:
    """`objective` on logits [B, T, V] and labels [B, T] (-100 ignored).

    Equals, with ce_i = ``F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")`` at
    the valid targets (``targets = labels[:, 1:]`` when `shift`, else `labels`)::

        c = objective.weigh(Statistics(ce.detach(), ...), count, **settings).coefficients   # detached
        loss = sum(c_i * row_scale[b_i] * ce_i)

    `count` is the normaliser (global across accumulation steps and processes); None: this call's own.
    """
    settings = objective.resolve(settings)
    check_sample_ids(objective, sample_ids)
    targets = shift_labels(labels) if shift else labels
    wanted = row_statistics_of(objective)
    stats = token_stats(logits, targets, partial(row_statistics, wanted=wanted, settings=settings))
    ce = stats.ce.detach()
    segment, num_samples = None, labels.shape[0]
    if SEGMENTS in objective.needs:
        segment, num_samples = sample_segments(stats.index, labels, sample_ids)
    detached = Statistics(ce=ce, num_samples=num_samples, segment=segment, rows=stats.rows)
    weights = objective.weigh(detached, objective.default_count(detached) if count is None else count, **settings)
    coefficients = weights.coefficients
    if row_scale is not None:
        coefficients = coefficients * row_scale.detach().to(coefficients.dtype)[stats.index // labels.shape[1]]
    return LossOutput(
        weighted_ce(stats, coefficients),
        token_metrics(stats) | weights.metrics,
        num_tokens=ce.numel(),
        num_samples=num_samples,
        sample_metrics=objective.sample_metrics,
    )
