"""Data keys of a run: which files, how they are validated, tokenised, split and batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataArguments:
    data_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Training data: .jsonl/.json/.parquet files, globs, directories or Hub dataset names."},
    )
    eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Held-out data for evaluation (else see validation_split_percentage)."},
    )
    max_length: int = field(default=2048, metadata={"help": "Tokens per sample; longer ones keep their left part."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenisation (datasets.map num_proc)."}
    )
    validation_split_percentage: float = field(
        default=0.0, metadata={"help": "Percent of the training records held out for evaluation (by seed)."}
    )
    on_bad_record: Literal["error", "skip"] = field(
        default="error",
        metadata={"help": "error: stop and list every bad record; skip: train on the rest, count and report them."},
    )
    mask_history: bool = field(
        default=False, metadata={"help": "Train on the last assistant turn only (earlier replies get no loss)."}
    )
    packing: bool = field(
        default=False, metadata={"help": "Padding-free packing: concatenate samples with per-sample position_ids."}
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Where tokenised datasets are cached (default: $DFTUNE_CACHE or ~/.cache/dftune)."}
    )

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if not 0.0 <= self.validation_split_percentage < 100.0:
            raise ValueError(
                f"validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}"
            )
