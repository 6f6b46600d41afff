"""The stages a run can train, by name, and the parse of a run's keys (every stage's included).

Each stage is its keys (a `StageArguments` dataclass in `keys`, with its checks) and one module that owns its data,
collator and trainer and ends in `build_trainer(config, callbacks)`. `STAGES` names the module, imported only when
its stage runs: `dftune train --help` and `parse_config` import the keys alone, never TRL, datasets or a trainer
(tests/config/test_fast_start.py). `dftune.run` picks the stage from `STAGES` and runs the flow every stage shares.

Module order: sft, dllm > common (what those two share) > keys; dllm > dllm_samples; dpo > common. Stages import the
runtime, models and data below them; nothing below imports a stage. A new stage is its keys in `keys`, one module
here and one line in `STAGES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dftune.config import parse
from dftune.config.parse import RunConfig, StageArguments
from dftune.stages.keys import DllmArguments, DpoArguments, SftArguments

if TYPE_CHECKING:  # the Trainer classes cost seconds to import; only a stage's module needs them
    from transformers import Trainer, TrainerCallback


@dataclass(frozen=True)
class Stage:
    arguments: type[StageArguments]
    """The stage's own keys (their help says which stage they belong to)."""
    module: str
    """The module whose `build_trainer(config, callbacks)` builds this stage's Trainer, imported when it runs."""

    def build_trainer(self, config: RunConfig, callbacks: list[TrainerCallback]) -> Trainer:
        """Data, models and the Trainer; called after the shared set-up (output_dir checked, resume resolved)."""
        return importlib.import_module(self.module).build_trainer(config, callbacks)


STAGES: dict[str, Stage] = {
    "sft": Stage(SftArguments, "dftune.stages.sft"),
    "dllm": Stage(DllmArguments, "dftune.stages.dllm"),
    "dpo": Stage(DpoArguments, "dftune.stages.dpo"),
}


def stage_sections() -> dict[str, type[StageArguments]]:
    """Every stage's keys, by stage name: the sections `parse_config` adds to the generic ones."""
    return {name: stage.arguments for name, stage in STAGES.items()}


def parse_config(argv: list[str]) -> RunConfig:
    """`[CONFIG.yaml] [--key value ...]` -> a RunConfig whose `stage_args` are the chosen stage's keys."""
    return parse.parse_config(argv, stage_sections())


def train_help_parser() -> parse.ConfigArgumentParser:
    """The parser behind `dftune train --help`: every key, the stages' included."""
    return parse.config_parser(stage_sections(), prog="dftune train")
