"""The objective contract: what every objective declares, once, for every path that computes it.

Every objective is ``loss = sum_i c_i * CE_i`` over the N valid targets, with the coefficients c_i detached,
so its gradient w.r.t. the logits of target i is ``c_i * (softmax_i - onehot_i)``. An `Objective` declares

- its `name` and the config keys of its `settings` (typed, with a default and a range);
- the detached per-token statistics it `needs` (`CE` always; `SEGMENTS`, which sample each target belongs
  to; any row statistic of the logits: shared ones in `statistics.ROW_STATISTICS`, such as `ENTROPY`, or its
  own in `statistics`);
- `weigh`: those statistics and the normaliser in, the coefficients c_i and its extra metrics out;
- its normaliser unit (`tokens` or `samples`), the stages it applies to, and which metrics are per sample.

The unfused loss (`unfused.py`), the fused chunked head (`fused.py`) and stage dllm (`diffusion.py`) consume
this declaration; none of them names an objective.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.core import IGNORE_INDEX, Count
from dftune.numbers import Range

CE = "ce"
"""Cross-entropy of each target: every objective gets it."""
SEGMENTS = "segments"
"""The sample (0..S-1) of each target, from the rows or from packed `sample_ids`."""
ENTROPY = "entropy"
"""Entropy of the model's full predictive distribution at each target position (see `statistics.py`)."""
REF_KL = "ref_kl"
"""KL(p_ref || p_theta) over the vocabulary at each target: needs a reference model's logits (unfused) or its final
hidden states and output layer (fused). An objective that needs it may add a distribution term
``sum_i d_i * KL_i`` to its loss (`Weights.kl_coefficients`); the gradient of row i's logits is then
``c_i * (softmax_i - onehot_i) + d_i * (softmax_i - p_ref_i)``."""
REF_LOGP = "ref_logp"
"""log p_ref(target_i) at each target, under the same reference as `REF_KL` (detached): for importance ratios
``p_theta / p_ref`` (PSFT, iw-SFT)."""
REFERENCE_STATISTICS = frozenset({REF_KL, REF_LOGP})
"""The statistics that need a reference model's outputs beside the policy's."""


REFRESH_STEPS = "refresh_steps"
"""Keyword of the `scheduling` setting that says how often a `recent` reference is refreshed (optimizer steps)."""


@dataclass(frozen=True)
class Setting:
    """One setting of an objective: its config key, the loss functions' keyword, its type, default and range."""

    key: str
    """Config key, e.g. `dft_alpha`."""
    kwarg: str
    """Keyword of the loss functions, e.g. `alpha`."""
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """The value must lie above `low`, not at it (`bft_gamma`: 0 would weigh every sample 0)."""
    choices: tuple[str, ...] | None = None
    scheduling: bool = False
    """A setting of the objective's schedule (`Objective.schedule`), not an argument of its loss functions."""
    env: str | None = None
    """Environment variable that sets the config default (the seeds read BFT settings from there)."""
    selects: bool = False
    """Giving the key selects the objective (`dft_alpha: 0.7` alone means `loss: dft`)."""

    def config_default(self) -> Any:
        """The default of the config key: unset (None) for a selecting key, else the environment's or `default`."""
        if self.selects:
            return None
        return self.type(os.environ.get(self.env, self.default)) if self.env else self.default

    @property
    def range(self) -> Range:
        return Range(self.low, self.high, low_open=self.low_open)

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of range or not finite (a phrase after "must be"), or None when it is fine."""
        if self.choices is not None:
            return None if value in self.choices else f"one of {list(self.choices)}"
        return self.range.problem(value)


@dataclass(frozen=True)
class RowStatistic:
    """A per-position statistic of the logits: ``of_logits(rows [n, V] float, **settings) -> [n]``, called without
    gradient, with the settings of the objective that needs it (e.g. EAFT's `top_k`)."""

    of_logits: Callable[..., Tensor]
    chunked: bool = True
    """The fused head may compute it from each chunk of logits (true for any function of one row alone)."""


@dataclass(frozen=True)
class Statistics:
    """Detached statistics of the N valid targets of one call, in flat order (row-major over [B, T])."""

    ce: Tensor
    """[N] -log p(target), float32 or wider."""
    num_samples: int
    """S: rows of the batch, or distinct sample ids of a packed batch."""
    segment: Tensor | None = None
    """[N] long, the sample of each target (when `SEGMENTS` is needed)."""
    rows: Mapping[str, Tensor] = field(default_factory=dict)
    """[N] per row statistic asked for (e.g. `rows[ENTROPY]`, `rows[REF_KL]`)."""


@dataclass(frozen=True)
class Weights:
    """What `weigh` returns: c_i [N] (detached) and the objective's own metrics (means over its unit)."""

    coefficients: Tensor
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    kl_coefficients: Tensor | None = None
    """d_i [N] (detached): the weight of each target's KL(p_ref || p_theta) in the loss (objectives needing
    `REF_KL`), or None for no distribution term."""


@dataclass(frozen=True)
class Objective:
    """One training objective, as every path computes it."""

    name: str
    weigh: Callable[..., Weights]
    """``weigh(stats: Statistics, count, **settings) -> Weights``, with `count` the normaliser (N or S)."""
    normalise_by: Literal["tokens", "samples"]
    settings: tuple[Setting, ...] = ()
    needs: frozenset[str] = frozenset({CE})
    statistics: Mapping[str, RowStatistic] = field(default_factory=dict)
    """Row statistics this objective defines itself (name -> RowStatistic), beside the shared ones."""
    per_token: bool = True
    """c_i depends on target i's statistics alone, so the fused head weighs each chunk as it goes (one pass);
    otherwise it computes every statistic first, then the gradients (two passes)."""
    stages: frozenset[str] = frozenset({"sft"})
    sample_metrics: frozenset[str] = frozenset()
    """Metrics that are means over samples (the others are means over target tokens)."""
    alias: str | None = None
    """A boolean config key that selects this objective, as LLaMA-Factory writes it (`use_dft_loss`)."""
    schedule: Callable[[dict[str, Any], int], dict[str, Any]] | None = None
    """``schedule(kwargs, step) -> kwargs``: the loss functions' arguments in force at optimizer step `step`, from
    every setting by keyword (the `scheduling` ones included, which it consumes)."""
    formula: str = ""
    """Its per-token loss in one line of plain text, for the README's objective table (generated from the registry)."""
    reference: Literal["start", "recent"] = "start"
    """The reference of an objective that needs a `REFERENCE_STATISTICS` entry: `start`, the frozen starting model
    (ASFT, iw-SFT), or `recent`, a snapshot of the policy refreshed every `refresh_steps` optimizer steps (PSFT's
    p_old; the `scheduling` setting with keyword `REFRESH_STEPS` sets it)."""

    @property
    def needs_reference(self) -> bool:
        """It compares the policy with a reference model (it needs `REF_KL` or `REF_LOGP`)."""
        return bool(self.needs & REFERENCE_STATISTICS)

    @property
    def precomputable(self) -> bool:
        """Its reference enters only through log p_ref(target) of the frozen starting model (`REF_LOGP`, reference
        `start`: iw-SFT), so one pass before training can compute it for every target (`ref_logps`,
        `precompute_ref_log_probs`)."""
        return self.not_precomputable() is None

    def not_precomputable(self) -> str | None:
        """Why its reference cannot be computed once before training (a phrase), or None when it can."""
        if REF_KL in self.needs:
            return f"{self.name} needs the reference's whole distribution at every target (its KL term), not one number"
        if not self.needs_reference:
            return f"{self.name} uses no reference"
        if self.reference != "start":
            return f"{self.name}'s reference is refreshed from the policy during training"
        return None

    @property
    def count_keyword(self) -> str:
        """The public loss functions' keyword for the normaliser."""
        return "num_items_in_batch" if self.normalise_by == "tokens" else "num_samples_in_batch"

    def kwargs_at(self, kwargs: Mapping[str, Any], step: int) -> dict[str, Any]:
        """The loss functions' arguments at optimizer step `step`, from settings by keyword (schedule ones too)."""
        scheduling = {s.kwarg: s.default for s in self.settings if s.scheduling}
        unknown = sorted(set(kwargs) - {s.kwarg for s in self.settings})
        if unknown:
            raise DftuneError(f"{self.name} takes no keyword arguments {unknown}")
        values = {**scheduling, **kwargs}
        if self.schedule is None:
            return values
        return self.schedule(values, step)

    def resolve(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The settings of one call: `kwargs` (by keyword) checked against the declared ranges, defaults filled."""
        known = {s.kwarg: s for s in self.settings if not s.scheduling}
        extra = sorted(set(kwargs) - set(known))
        if extra:
            takes = f"; it takes {sorted(known)}" if known else ""
            raise DftuneError(f"{self.name} takes no keyword arguments {extra}{takes}")
        resolved = {}
        for kwarg, setting in known.items():
            value = setting.type(kwargs.get(kwarg, setting.default))
            problem = setting.problem(value)
            if problem:
                raise DftuneError(f"{self.name} {kwarg} must be {problem}, got {value}")
            resolved[kwarg] = value
        return resolved

    def local_count(self, labels: Tensor, sample_ids: Tensor | None = None, shift: bool = True) -> Tensor:
        """This micro-batch's share of the global count (0-d long tensor, on labels' device): target tokens, or
        samples (distinct `sample_ids` when packed). Summed over accumulation steps and processes it is the
        `global_count` of `compute_objective` and `fused_linear_loss`. `shift=False`: `labels` are the targets
        already (a sequence shard of shifted labels)."""
        if self.normalise_by == "tokens":
            return ((labels[:, 1:] if shift else labels) != IGNORE_INDEX).sum()
        num_samples = labels.shape[0] if sample_ids is None else torch.unique(sample_ids).numel()
        return torch.tensor(num_samples, device=labels.device)

    def default_count(self, stats: Statistics) -> Count:
        """The normaliser when none is given: this call's target tokens or samples."""
        return stats.ce.numel() if self.normalise_by == "tokens" else stats.num_samples
