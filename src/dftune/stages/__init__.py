"""The stages a run can train, by name. Each is one module that owns its keys (a `StageArguments` dataclass, with
its checks), its data, collator and trainer, and ends in `build_trainer(config, callbacks)`; `dftune.run` picks
the stage from `STAGES` and runs the flow every stage shares.

Module order: sft, dllm > common (what those two share); dllm > dllm_samples; dpo stands alone. Stages import
the runtime, models and data below them; nothing below imports a stage. A new stage is one module here plus one
line in `STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import Trainer, TrainerCallback

from dftune.config.parse import RunConfig, StageArguments
from dftune.stages import dllm, dpo, sft


@dataclass(frozen=True)
class Stage:
    arguments: type[StageArguments]
    """The stage's own keys (their help says which stage they belong to)."""
    build_trainer: Callable[[RunConfig, list[TrainerCallback]], Trainer]
    """Data, models and the Trainer; called after the shared set-up (output_dir checked, resume resolved)."""


STAGES: dict[str, Stage] = {
    "sft": Stage(sft.SftArguments, sft.build_trainer),
    "dllm": Stage(dllm.DllmArguments, dllm.build_trainer),
    "dpo": Stage(dpo.DpoArguments, dpo.build_trainer),
}
