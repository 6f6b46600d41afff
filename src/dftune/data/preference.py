"""Preference data for stage dpo: every record validated like SFT data, kept ones in TRL's conversational form.

A record is any form `dftune.data.normalize_preference` reads (TRL's prompt/chosen/rejected as strings or
message lists, or seed 004's whole conversations sharing the prompt). It is rejected, with its `file:line` and
reason in the same `ValidationReport` as SFT data, when it cannot be normalised, when the chat template refuses
it, or when its prompt alone fills `max_length` (after `max_prompt_length`): TRL would silently drop such a pair.

Kept records become `{"prompt", "chosen", "rejected"}` message lists, which TRL 1.16's DPOTrainer renders with
the tokenizer's chat template itself. They are cached on disk (like tokenised SFT data), so the datasets the
trainer gets are file-backed: TRL's `precompute_ref_log_probs` on several processes fails on an in-memory
`Dataset.from_list` and works on one loaded from files.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, List, Value
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from dftune.config.data_args import DataArguments
from dftune.data import InvalidRecord, ValidationReport, normalize_preference
from dftune.data import cache
from dftune.data.encode import chat_template
from dftune.data.formats import Messages
from dftune.data.prepare import PreparedData, finish, resolve_splits
from dftune.data.sources import Source
from dftune.data.validate import normalized_records

logger = logging.getLogger(__name__)

CODE_VERSION = "dftune-preference-2"  # bump when validation or the stored form changes
_MESSAGES = List({"role": Value("string"), "content": Value("string")})
PREFERENCE = Features({"prompt": _MESSAGES, "chosen": _MESSAGES, "rejected": _MESSAGES})


def prepare_preference_datasets(
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_prompt_length: int | None,
    seed: int,
    report_path: str | Path | None = None,
) -> PreparedData:
    """Train (and eval) preference datasets from `data_files` (and `eval_files` or a held-out split).

    Same contract as `dftune.data.prepare_datasets`: on_bad_record error raises a DftuneError listing the bad
    records; skip logs per-file counts and goes on; the report is written to `report_path` in both cases.
    """
    splits = resolve_splits(data_args, ranking=True)

    data_key = cache.fingerprint(splits, tokenizer, max_length=data_args.max_length, mask_history=False)
    key = hashlib.sha256(f"{CODE_VERSION}\0{data_key}\0{max_prompt_length}".encode()).hexdigest()[:32]
    entry = cache.cache_root(data_args.dataset_cache_dir) / "preference" / key
    cached = cache.load_entry(entry)
    cache_hit = cached is not None
    if cached is None:
        report = ValidationReport()
        datasets = {}
        for split, sources in splits.items():
            records, split_report = collect_preferences(sources, tokenizer, data_args.max_length, max_prompt_length)
            datasets[split] = Dataset.from_list(records, features=PREFERENCE)
            report.merge(split_report)
        cache.save_entry(entry, datasets, report)
        cached = cache.load_entry(entry)  # read back: the datasets are then backed by the cache files
        assert cached is not None
    else:
        logger.info("using cached preference data %s", entry)
    datasets, report = cached

    return finish(datasets, report, data_args, seed, cache_hit=cache_hit, entry=entry, report_path=report_path)


def collect_preferences(
    sources: Sequence[str | Source],
    tokenizer: PreTrainedTokenizerBase | None,
    max_length: int | None,
    max_prompt_length: int | None,
) -> tuple[list[dict[str, Messages]], ValidationReport]:
    """The kept records as prompt/chosen/rejected message lists, and the report of every record (the chat
    template and token budget are checked when a tokenizer is given)."""
    report = ValidationReport()

    def normalize(value: Any) -> dict[str, Messages]:
        pair = normalize_preference(value)
        if tokenizer is not None:
            check_budget(pair, tokenizer, max_length, max_prompt_length)
        return pair

    kept = [pair for _, pair in normalized_records(sources, normalize, report)]
    return kept, report


def check_budget(
    pair: dict[str, Messages],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    max_prompt_length: int | None,
) -> None:
    """Raise InvalidRecord when the template refuses the pair or its prompt leaves no room for a reply."""
    template = chat_template(tokenizer)
    try:
        prompt = tokenizer.apply_chat_template(
            pair["prompt"], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        for reply in (pair["chosen"], pair["rejected"]):
            tokenizer.apply_chat_template(pair["prompt"] + reply, chat_template=template, tokenize=False)
    except TemplateError as exc:
        raise InvalidRecord("chat template error", str(exc) or type(exc).__name__) from None
    if max_length is None:
        return
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"])
    kept_tokens = prompt_tokens if max_prompt_length is None else min(prompt_tokens, max_prompt_length)
    if kept_tokens >= max_length:
        raise InvalidRecord("prompt fills max_length", f"{prompt_tokens} prompt tokens, max_length {max_length}")
