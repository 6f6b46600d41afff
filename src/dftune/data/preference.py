"""Preference data for stage dpo: every record validated like SFT data, tokenised as TRL does, fitted to the limits.

A record is any form `dftune.data.normalize_preference` reads (TRL's prompt/chosen/rejected as strings or
message lists, or seed 004's whole conversations sharing the prompt). It is rejected, with its `file:line` and
reason in the same `ValidationReport` as SFT data, when it cannot be normalised, when the chat template refuses
it, or when not one reply token fits in `max_length` (the generation header alone fills it). A pair over the limits
is cut, never dropped (`dftune.data.lengths.fit_preference`: the prompt keeps its end and its generation header, the
replies their start), and the report counts per source the pairs cut (`over_length`) and the tokens cut.

Kept records become `{"prompt_ids", "chosen_ids", "rejected_ids"}`, tokenised as TRL 1.16's DPOTrainer tokenises
conversations (the prompt with the generation prompt; a reply is what the prompt + reply adds after their common
prefix), so the trainer takes them as they are. They are cached on disk (like tokenised SFT data), so the datasets
the trainer gets are file-backed: TRL's `precompute_ref_log_probs` on several processes fails on an in-memory
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
from dftune.data.lengths import FittedPair, PreferenceLimits, clip_messages, fit_preference
from dftune.data.prepare import PreparedData, finish, resolve_splits
from dftune.data.sources import Source, as_sources
from dftune.data.special_text import check_content, tokenize_rendered
from dftune.data.validate import records_by_source

logger = logging.getLogger(__name__)

CODE_VERSION = "dftune-preference-4"  # bump when validation or the stored form changes (4: special strings as text)
PREFERENCE = Features({name: List(Value("int32")) for name in ("prompt_ids", "chosen_ids", "rejected_ids")})


def prepare_preference_datasets(
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    *,
    limits: PreferenceLimits,
    seed: int,
    report_path: str | Path | None = None,
) -> PreparedData:
    """Train (and eval) preference datasets from `data_files` (and `eval_files` or a held-out split).

    Same contract as `dftune.data.prepare.prepare_datasets`: on_bad_record error raises a DftuneError listing the bad
    records; skip logs per-file counts and goes on; the report is written to `report_path` in both cases.
    """
    splits = resolve_splits(data_args, ranking=True)

    data_key = cache.fingerprint(splits, tokenizer, max_length=data_args.max_length, mask_history=False,
                                 special_tokens_in_content=data_args.special_tokens_in_content)
    key = hashlib.sha256(f"{CODE_VERSION}\0{data_key}\0{limits!r}".encode()).hexdigest()[:32]
    entry = cache.cache_root(data_args.dataset_cache_dir) / "preference" / key
    cached = cache.load_entry(entry)
    cache_hit = cached is not None
    if cached is None:
        report = ValidationReport()
        datasets = {}
        for split, sources in splits.items():
            records, split_report = collect_preferences(sources, tokenizer, limits,
                                                        special_tokens_in_content=data_args.special_tokens_in_content)
            columns = {name: [record[name] for record in records] for name in PREFERENCE}
            datasets[split] = Dataset.from_dict(columns, features=PREFERENCE)  # from_list fails on no records
            report.merge(split_report)
        cache.save_entry(entry, datasets, report)
        # read back: the datasets are then backed by the cache files (in memory only when a damaged entry won the race)
        cached = cache.load_entry(entry) or (datasets, report)
    else:
        logger.info("using cached preference data %s", entry)
    datasets, report = cached

    return finish(datasets, report, data_args, seed, cache_hit=cache_hit, entry=entry, report_path=report_path)


def collect_preferences(
    sources: Sequence[str | Source],
    tokenizer: PreTrainedTokenizerBase | None,
    limits: PreferenceLimits,
    *,
    special_tokens_in_content: str = "text",
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """The kept records (token ids when a tokenizer is given, else the prompt/chosen/rejected message lists), and
    the report of every record; the chat template, the limits and `special_tokens_in_content` apply when a tokenizer
    is given."""
    report = ValidationReport()
    kept: list[dict[str, Any]] = []
    for source, location, pair in records_by_source(as_sources(sources), normalize_preference, report):
        if tokenizer is None:
            kept.append(pair)
            continue
        try:
            fitted, clipped = encode_preference(pair, tokenizer, limits, special_tokens_in_content)
        except InvalidRecord as exc:
            report.reject(location, exc.reason, exc.detail)
            continue
        if fitted.tokens_cut or clipped:
            report.count_lengths(source.name, over_length=1, samples=1, tokens_cut=fitted.tokens_cut,
                                 chars_clipped=clipped)  # fmt: skip
        kept.append({"prompt_ids": fitted.prompt, "chosen_ids": fitted.chosen, "rejected_ids": fitted.rejected})
    return kept, report


def encode_preference(
    pair: dict[str, Messages], tokenizer: PreTrainedTokenizerBase, limits: PreferenceLimits,
    special_tokens_in_content: str = "text",
) -> tuple[FittedPair, int]:
    """The pair's token ids fitted to `limits`, and the characters of huge messages clipped before tokenising.

    Tokenised as TRL 1.16 does: the prompt with the generation prompt; each reply is what prompt + reply adds after
    their common prefix. The generation header is what the generation prompt adds to the prompt rendered without it.
    Special-token strings of the content are text (`dftune.data.special_text`; SFT's rule), and TRL's tokens
    otherwise. Raises InvalidRecord when the template refuses the pair, when not one reply token fits, or (reject)
    when a content holds a special-token string."""
    template = chat_template(tokenizer)
    clipped = 0
    if limits.max_length is not None:  # a 50 MB message costs the budget, not the record (`clip_messages`)
        parts = {}
        for name, messages in pair.items():
            parts[name], dropped = clip_messages(messages, limits.max_length, "split")
            clipped += dropped
        pair = parts

    strings = check_content(tokenizer, [m for messages in pair.values() for m in messages], special_tokens_in_content)

    def ids(messages: Messages, generation_prompt: bool = False) -> list[int]:
        def render(part: Messages) -> str:
            return tokenizer.apply_chat_template(part, chat_template=template, tokenize=False,
                                                 add_generation_prompt=generation_prompt)  # fmt: skip

        return tokenize_rendered(tokenizer, render, messages, strings)[1].ids

    try:
        prompt = ids(pair["prompt"], True)
        chosen, rejected = ids(pair["prompt"] + pair["chosen"]), ids(pair["prompt"] + pair["rejected"])
        bare = ids(pair["prompt"])
    except TemplateError as exc:
        raise InvalidRecord("chat template error", str(exc) or type(exc).__name__) from None
    shared = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
    header = shared - _common_prefix(bare, prompt[:shared])
    fitted = fit_preference(prompt[:shared], chosen[shared:], rejected[shared:], header, limits)
    if fitted is None:
        raise InvalidRecord("no reply token within max_length",
                            f"the generation header alone takes {header} tokens, max_length {limits.max_length}")
    return fitted, clipped


def _common_prefix(ids: list[int], other: list[int]) -> int:
    """How many leading tokens `ids` and `other` share."""
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n
