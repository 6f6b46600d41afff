"""From DataArguments to train/eval datasets: resolve, validate, tokenise (cached), apply the policy, split.

Order matters: the cache holds the policy-independent result (kept records + full report), so both
`on_bad_record` policies and any split share one tokenisation. No model code runs here, so a bad record
stops a run before any model is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from dftune.config.data_args import DataArguments
from dftune.data import cache
from dftune.data.llamafactory import registry_sources
from dftune.data.report import ValidationReport
from dftune.data.sources import Source, file_sources, name_table, unique_names
from dftune.data.validate import validate_and_encode
from dftune.errors import DftuneError
from dftune.runlog import process_info

logger = logging.getLogger(__name__)
COLUMNS = ("input_ids", "labels", "source", "source_id")


@dataclass
class PreparedData:
    """Tokenised datasets (columns input_ids, labels, source, source_id), the validation report, and whether it was
    cached."""

    train: Dataset
    eval: Dataset | None
    report: ValidationReport
    cache_hit: bool
    source_names: list[str] = field(default_factory=list)
    """The run's source names: `source_id` of a sample indexes this list (ce/<name> in the logs)."""


def prepare_datasets(
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int,
    report_path: str | Path | None = None,
) -> PreparedData:
    """Validate and tokenise `data_args.data_files` (and `eval_files`), reusing the cache when nothing changed.

    on_bad_record="error": raise a DftuneError listing the bad records (first 20, then the report path).
    on_bad_record="skip": log counts per file and reason and go on with the rest.
    The report is written to `report_path` when given, in both policies.
    """
    splits = resolve_splits(data_args, ranking=False)
    key = cache.fingerprint(
        splits, tokenizer, max_length=data_args.max_length, mask_history=data_args.mask_history,
        long_conversations=data_args.long_conversations, reply_share=data_args.reply_share,
        special_tokens_in_content=data_args.special_tokens_in_content,
    )  # fmt: skip
    entry = cache.cache_root(data_args.dataset_cache_dir) / "prepared" / key
    cached = cache.load_entry(entry)
    if cached is not None:
        datasets, report = cached
        logger.info("using cached tokenised data %s", entry)
    else:
        datasets, report = _build(splits, tokenizer, data_args, key)
        cache.save_entry(entry, datasets, report)

    return finish(datasets, report, data_args, seed, cache_hit=cached is not None, entry=entry, report_path=report_path,
                  source_names=name_table(splits))


def resolve_splits(data_args: DataArguments, *, ranking: bool) -> dict[str, list[Source]]:
    """{"train": sources, "eval": sources}: data_files then registry entries (dataset), names unique across both."""
    if not data_args.has_training_data():
        raise DftuneError("no training data: set data_files (or dataset, LLaMA-Factory's registry)")
    if (data_args.eval_files or data_args.eval_dataset) and data_args.validation_split_percentage > 0:
        raise DftuneError("set either eval_files or validation_split_percentage, not both "
                          "(eval_dataset counts as eval_files)")
    cap = data_args.max_samples
    registry = data_args.dataset_dir
    splits = {"train": file_sources(data_args.data_files, cap)
              + registry_sources(data_args.dataset, registry, ranking=ranking, max_samples=cap)}  # fmt: skip
    if data_args.eval_files or data_args.eval_dataset:
        splits["eval"] = file_sources(data_args.eval_files, cap) + registry_sources(
            data_args.eval_dataset, registry, ranking=ranking, max_samples=cap)  # fmt: skip
    named = unique_names([s for sources in splits.values() for s in sources])
    train = len(splits["train"])
    return {"train": named[:train], **({"eval": named[train:]} if "eval" in splits else {})}


def finish(
    datasets: dict[str, Dataset],
    report: ValidationReport,
    data_args: DataArguments,
    seed: int,
    *,
    cache_hit: bool,
    entry: Path,
    report_path: str | Path | None,
    source_names: list[str] | None = None,
) -> PreparedData:
    """Shared by every kind of data: save the report, apply the bad-record policy, split off eval data.

    Every process of a run prepares its data (the others after the first of each node, from its cache) and names
    the report in its messages, but only global rank 0 writes it: output_dir's files are written by that process
    alone, whether the nodes share output_dir or each has a folder of its own that stays empty."""
    full_report = Path(report_path) if report_path is not None else cache.report_file(entry)
    if report_path is not None and process_info().is_main:
        report.save(report_path)
    _apply_policy(report, data_args.on_bad_record, full_report)
    train, evaluation = datasets["train"], datasets.get("eval")
    if len(train) == 0:
        raise DftuneError(f"no valid training records left (see {full_report})")
    if data_args.validation_split_percentage > 0:
        train, evaluation = _split_off(train, data_args.validation_split_percentage, seed)
    if report.empty_replies:
        logger.warning("%s (full report: %s)", report.format_empty_replies(), full_report)
    lengths = report.format_lengths()
    if lengths:
        logger.info("conversations over max_length %d (long_conversations: %s):\n%s", data_args.max_length,
                    data_args.long_conversations, lengths)  # fmt: skip
    return PreparedData(train, evaluation, report, cache_hit=cache_hit, source_names=source_names or [])


def _build(
    splits: dict[str, list[Source]], tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, key: str
) -> tuple[dict[str, Dataset], ValidationReport]:
    report = ValidationReport()
    datasets = {}
    for split, sources in splits.items():
        dataset, split_report = validate_and_encode(
            sources,
            tokenizer,
            max_length=data_args.max_length,
            mask_history=data_args.mask_history,
            num_proc=data_args.preprocessing_num_workers,
            fingerprint=f"{key}-{split}",
            long_conversations=data_args.long_conversations,
            reply_share=data_args.reply_share,
            source_names=name_table(splits),
            special_tokens_in_content=data_args.special_tokens_in_content,
        )
        datasets[split] = dataset.select_columns(list(COLUMNS))
        report.merge(split_report)
    return datasets, report


def _apply_policy(report: ValidationReport, policy: str, full_report: Path) -> None:
    if report.rejected == 0:
        return
    if policy == "error":
        raise DftuneError(
            f"{report.rejected} of {report.total} records are invalid (on_bad_record: error):\n"
            f"{report.format_errors(limit=20, full_report=full_report)}\n"
            "fix them, or set on_bad_record: skip to train on the rest"
        )
    logger.warning(
        "skipped %d of %d records (on_bad_record: skip); full report: %s\n%s",
        report.rejected,
        report.total,
        full_report,
        report.format_table(),
    )


def _split_off(train: Dataset, percentage: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `percentage`% of the records (at least one), chosen by `seed`."""
    if len(train) < 2:
        raise DftuneError(f"validation_split_percentage needs at least 2 valid records, got {len(train)}")
    held_out = max(1, round(len(train) * percentage / 100))
    parts = train.train_test_split(test_size=held_out, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
