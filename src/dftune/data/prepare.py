"""From DataArguments to train/eval datasets: resolve, validate, tokenise (cached), apply the policy, split.

Order matters: the cache holds the policy-independent result (kept records + full report), so both
`on_bad_record` policies and any split share one tokenisation. No model code runs here, so a bad record
stops a run before any model is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from dftune.config.data_args import DataArguments
from dftune.data import cache
from dftune.data.readers import resolve_sources
from dftune.data.report import ValidationReport
from dftune.data.validate import validate_and_encode
from dftune.errors import DftuneError

logger = logging.getLogger(__name__)
COLUMNS = ("input_ids", "labels", "source")


@dataclass
class PreparedData:
    """Tokenised datasets (columns input_ids, labels, source), the validation report, and whether it was cached."""

    train: Dataset
    eval: Dataset | None
    report: ValidationReport
    cache_hit: bool


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
    if not data_args.data_files:
        raise DftuneError("no training data: set data_files")
    if data_args.eval_files and data_args.validation_split_percentage > 0:
        raise DftuneError("set either eval_files or validation_split_percentage, not both")
    splits = {"train": resolve_sources(data_args.data_files)}
    if data_args.eval_files:
        splits["eval"] = resolve_sources(data_args.eval_files)

    key = cache.fingerprint(
        splits, tokenizer, max_length=data_args.max_length, mask_history=data_args.mask_history
    )
    entry = cache.cache_root(data_args.dataset_cache_dir) / "prepared" / key
    cached = cache.load_entry(entry)
    if cached is not None:
        datasets, report = cached
        logger.info("using cached tokenised data %s", entry)
    else:
        datasets, report = _build(splits, tokenizer, data_args, key)
        cache.save_entry(entry, datasets, report)

    return finish(datasets, report, data_args, seed, cache_hit=cached is not None, entry=entry, report_path=report_path)


def finish(
    datasets: dict[str, Dataset],
    report: ValidationReport,
    data_args: DataArguments,
    seed: int,
    *,
    cache_hit: bool,
    entry: Path,
    report_path: str | Path | None,
) -> PreparedData:
    """Shared by every kind of data: save the report, apply the bad-record policy, split off eval data."""
    full_report = Path(report_path) if report_path is not None else cache.report_file(entry)
    if report_path is not None:
        report.save(report_path)
    _apply_policy(report, data_args.on_bad_record, full_report)
    train, evaluation = datasets["train"], datasets.get("eval")
    if len(train) == 0:
        raise DftuneError(f"no valid training records left (see {full_report})")
    if data_args.validation_split_percentage > 0:
        train, evaluation = _split_off(train, data_args.validation_split_percentage, seed)
    return PreparedData(train, evaluation, report, cache_hit=cache_hit)


def _build(
    splits: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, key: str
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
