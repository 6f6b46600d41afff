"""Data keys of a run: which files, how they are validated, tokenised, split and batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from dftune.numbers import Range


@dataclass
class DataArguments:
    ranges: ClassVar[dict[str, Range]] = {
        "max_length": Range(2), "max_samples": Range(1), "preprocessing_num_workers": Range(0),
        "reply_share": Range(0, 1, low_open=True, high_open=True),
        "validation_split_percentage": Range(0, 100, high_open=True),
    }
    """The ranges of its number keys (`dftune.config.number_keys` checks them at parse time)."""

    data_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Training data: .jsonl/.json/.parquet files, globs, directories or Hub dataset names."},
    )
    eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Held-out data for evaluation (else see validation_split_percentage)."},
    )
    max_length: int = field(
        default=2048,
        metadata={"help": "Tokens per sample; a longer conversation is split at turn boundaries (the default "
                  "long_conversations: split) or cut to its first max_length tokens (truncate)."},
    )
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
    dataset: list[str] = field(
        default_factory=list,
        metadata={"help": "LLaMA-Factory's registry: entries of <dataset_dir>/dataset_info.json (comma-separated or "
                  "a list), trained with data_files if both are set."},
    )
    eval_dataset: list[str] = field(
        default_factory=list, metadata={"help": "Registry entries held out for evaluation (like eval_files)."}
    )
    dataset_dir: str = field(
        default="data", metadata={"help": "The folder of dataset_info.json and its files (LLaMA-Factory's default)."}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Read at most this many records of each source (each file or dataset)."}
    )
    long_conversations: Literal["split", "truncate"] = field(
        default="split",
        metadata={"help": "split: a conversation over max_length becomes several samples cut at turn boundaries, "
                  "each ending with a reply; truncate: keep its first max_length tokens (the old way)."},
    )
    reply_share: float = field(
        default=0.5,
        metadata={"help": "When a reply's own prompt does not fit, the prompt is cut from the left; a long reply keeps "
                  "at least this share of max_length."},
    )
    special_tokens_in_content: Literal["text", "reject"] = field(
        default="text",
        metadata={"help": "A special-token string inside a message (e.g. '<|im_end|>' in a reply): text: tokenised as "
                  "plain text, never a control token (LLaMA-Factory's split_special_tokens); reject: the record is "
                  "a bad record (see on_bad_record)."},
    )
    template: str | None = field(
        default=None,
        metadata={"help": "LLaMA-Factory's template name: accepted; dftune renders with the tokenizer's own chat "
                  "template (or chat_template)."},
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "A Jinja chat template (text, or a path to a .jinja file) to train with."}
    )
    plot_loss: bool = field(
        default=False, metadata={"help": "Write the run's curves (training_curves.png) into output_dir at the end."}
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Where tokenised datasets are cached (default: $DFTUNE_CACHE or ~/.cache/dftune)."}
    )

    def __post_init__(self) -> None:
        self.dataset, self.eval_dataset = split_names(self.dataset), split_names(self.eval_dataset)

    def has_training_data(self) -> bool:
        return bool(self.data_files or self.dataset)


def split_names(values: list[str] | str) -> list[str]:
    """`["a,b", "c"]` or `"a,b"` -> `["a", "b", "c"]`: LLaMA-Factory writes `dataset: a,b`; YAML lists work too."""
    items = [values] if isinstance(values, str) else values
    return [name.strip() for value in items for name in str(value).split(",") if name.strip()]
