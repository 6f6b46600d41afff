"""The one registry of objectives: every path (unfused, fused, stage dllm, the config keys) reads it.

Adding an objective is one module in `objectives/` (defining `OBJECTIVE`) and its name in `BUILT_IN` below.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from torch import Tensor

from dftune.errors import DftuneError
from dftune.losses.contract import Objective
from dftune.losses.core import Count, LossOutput
from dftune.losses.statistics import row_statistics_of
from dftune.losses.unfused import objective_loss

OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Add `objective`; a name or config key already taken is an error, never a silent replacement."""
    if objective.name in OBJECTIVES:
        raise DftuneError(f"objective {objective.name!r} is registered already; give the new one another name")
    taken = {key for other in OBJECTIVES.values() for key in config_keys(other)}
    clash = sorted(set(config_keys(objective)) & taken)
    if clash:
        raise DftuneError(f"objective {objective.name!r}: config keys {clash} belong to another objective")
    row_statistics_of(objective)  # every statistic it needs must be one some path computes
    OBJECTIVES[objective.name] = objective
    return objective


def config_keys(objective: Objective) -> list[str]:
    """The config keys an objective owns: its settings' keys and its alias."""
    return [s.key for s in objective.settings] + ([objective.alias] if objective.alias else [])


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise DftuneError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def precomputable_objectives() -> list[str]:
    """The objectives `precompute_ref_log_probs` applies to (`Objective.precomputable`)."""
    return [name for name, objective in OBJECTIVES.items() if objective.precomputable]


def compute_objective(
    name: str, logits: Tensor, labels: Tensor, *, global_count: Count | None = None, **kwargs: Any
) -> LossOutput:
    """Objective `name` on causal-LM logits [B, T, V] and unshifted labels [B, T], normalised by `global_count`
    (its unit: target tokens or samples) or, when None, by this call's own count. kwargs: its settings by
    keyword (`alpha`, `group_size`, ...) and `sample_ids` for packed batches."""
    return objective_loss(get_objective(name), logits, labels, count=global_count, **kwargs)


BUILT_IN = (
    "sft",
    "dft",
    "bft",
    "eaft",
    "asft",
    "chord",
    "psft",
    "iw_sft",
    "deft",
)
"""The modules of `dftune.losses.objectives`, in registration order (where the keys of several objectives are
given, the one registered last is selected: the seeds' `use_bft_loss` over `use_dft_loss`)."""
for _module in BUILT_IN:
    register(import_module(f"dftune.losses.objectives.{_module}").OBJECTIVE)
