"""Reliability keys of a run: what may happen to an existing output_dir and how many non-finite steps to tolerate.

`resume_from_checkpoint` stays the TrainingArguments key (a string): `auto`, `true` or a checkpoint path; see
`dftune.runtime.checkpoints.resolve_resume` and docs/reliability.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from transformers import TrainingArguments

from dftune.numbers import Range


@dataclass
class ReliabilityArguments:
    ranges: ClassVar[dict[str, Range]] = {"max_nonfinite_steps": Range(0)}

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that holds another run; its checkpoint-* folders are removed "
                  "first, so a later resume cannot pick them up. Without it such an output_dir is an error "
                  "(unless resuming)."},
    )
    max_nonfinite_steps: int = field(
        default=3,
        metadata={"help": "Updates whose loss or gradient norm is NaN/inf are skipped (weights, optimizer and "
                  "scheduler unchanged) and counted; after this many in a row the run saves a checkpoint of the "
                  "last good state and stops. 0: skip and count, never stop."},
    )


def check_training_numbers(training: TrainingArguments, reliability: ReliabilityArguments, *, given: set[str]) -> None:
    """Numbers transformers accepts but that make no sense (a ValueError naming the key; parse adds file:line).

    transformers 5 treats any `max_steps` <= 0 as "use num_train_epochs", and trains 0 steps (saving the untrained
    model, exit 0) when that is 0: both are mistakes to stop before any model loads.
    """
    if training.max_steps < -1 or (training.max_steps == 0 and "max_steps" in given):
        raise ValueError(f"max_steps must be a positive number of optimizer steps, or -1 to train "
                         f"num_train_epochs epochs; got {training.max_steps}")
    if training.max_steps <= 0 and training.num_train_epochs <= 0:
        raise ValueError(f"num_train_epochs {training.num_train_epochs} with no max_steps would train zero steps; "
                         "set num_train_epochs above 0 or max_steps")
    resume = str(training.resume_from_checkpoint or "").strip().lower()
    if reliability.overwrite_output_dir and resume not in ("", "false", "none", "auto"):
        raise ValueError(f"overwrite_output_dir: true removes the checkpoints that resume_from_checkpoint: "
                         f"{training.resume_from_checkpoint} asks to continue from; drop one of the two (auto "
                         "resumes when there is a checkpoint and starts fresh when there is none)")
