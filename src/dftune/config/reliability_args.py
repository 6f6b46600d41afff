"""Reliability keys of a run: what may happen to an existing output_dir and how many non-finite steps to tolerate.

`resume_from_checkpoint` stays the TrainingArguments key (a string): `auto`, `true` or a checkpoint path; see
`dftune.runtime.checkpoints.resolve_resume` and docs/reliability.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReliabilityArguments:
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

    def __post_init__(self) -> None:
        if self.max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be 0 (never stop) or more, got {self.max_nonfinite_steps}")
