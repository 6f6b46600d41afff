"""Validate every record of a set of sources: structure first (readers + formats), then token budget.

Each record ends up either kept or in the report with a reason; `report.total == kept + rejected` always.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from datasets import Dataset, Features, List, Value
from transformers import PreTrainedTokenizerBase

from dftune.data.lengths import clip_messages, encode_batch
from dftune.data.formats import InvalidRecord, Messages, normalize_messages
from dftune.data.readers import Location
from dftune.data.report import ValidationReport
from dftune.data.sources import Source, as_sources, normalise


T = TypeVar("T")
MESSAGES = Features(
    {
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "source": Value("string"),
        "source_id": Value("int32"),
        "record": Value("int64"),
        "chars_clipped": Value("int64"),
    }
)
ENCODED = Features(
    {
        "source": Value("string"),
        "source_id": Value("int32"),
        "record": Value("int64"),
        "input_ids": List(Value("int32")),
        "labels": List(Value("int32")),
        "num_tokens": Value("int32"),
        "num_labels": Value("int32"),
        "reason": Value("string"),
        "detail": Value("string"),
        "pieces": Value("int32"),
        "tokens_cut": Value("int64"),
        "chars_clipped": Value("int64"),
    }
)


@dataclass
class Conversations:
    """The structurally valid records, as ChatML messages, with their locations and source names (same order)."""

    messages: list[Messages] = field(default_factory=list)
    locations: list[Location] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def normalized_records(
    sources: Sequence[str | Source], normalize: Callable[[Any], T], report: ValidationReport
) -> Iterator[tuple[Location, T]]:
    """(location, normalize(record)) for every record that decodes and normalises; every other record goes to
    `report` with its reason, and each file's record count once it is read."""
    for _, location, value in records_by_source(as_sources(sources), normalize, report):
        yield location, value


def records_by_source(
    sources: Sequence[Source], normalize: Callable[[Any], T], report: ValidationReport
) -> Iterator[tuple[Source, Location, T]]:
    """`normalized_records` with the source of each record."""
    for source in sources:
        totals: dict[str, int] = {}
        for path, record in source.records():
            totals[path] = totals.get(path, 0) + 1
            if record.reason is not None:
                report.reject(record.location, record.reason, record.detail)
                continue
            try:
                value = normalise(normalize, record.value)
            except InvalidRecord as exc:
                report.reject(record.location, exc.reason, exc.detail)
                continue
            yield source, record.location, value
        for path in source.paths:
            report.add_file(path, totals.get(path, 0))


def collect_conversations(sources: Sequence[str | Source]) -> tuple[Conversations, ValidationReport]:
    """Read and normalise every record; bad ones go to the report with their reason, empty or whitespace-only
    replies to its `empty_replies` (their records are kept)."""
    conversations, report = Conversations(), ValidationReport()
    for source, location, messages in records_by_source(as_sources(sources), normalize_messages, report):
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and not message["content"].strip():
                report.note_empty_reply(location, i)
        conversations.messages.append(messages)
        conversations.locations.append(location)
        conversations.sources.append(source.name)
    return conversations, report


def validate_and_encode(
    sources: Sequence[str | Source],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int | None,
    mask_history: bool = False,
    num_proc: int | None = None,
    fingerprint: str | None = None,
    long_conversations: str = "split",
    reply_share: float = 0.5,
    source_names: Sequence[str] = (),
    special_tokens_in_content: str = "text",
) -> tuple[Dataset, ValidationReport]:
    """Tokenised samples (input_ids, labels, source, source_id, num_tokens) of the kept records, and the report.

    A record is rejected here when the chat template raises on it, when its content holds a special-token string
    and special_tokens_in_content is reject, or when none of its samples has a labelled
    token (`truncate`: in its first `max_length` tokens). A kept record may make several samples (`split`), and
    the report counts per source what max_length did (`ValidationReport.lengths`). `source_id` indexes
    `source_names` (default: the sources' own order). `fingerprint` names the map result for `datasets`.
    """
    conversations, report = collect_conversations(sources)
    clipped = [0] * len(conversations.messages)
    if max_length is not None:  # before the Arrow table: a 50 MB reply is not copied into it, nor into map's batches
        for i, messages in enumerate(conversations.messages):
            conversations.messages[i], clipped[i] = clip_messages(messages, max_length, long_conversations)
    names = list(source_names) or list(dict.fromkeys(conversations.sources))
    table = Dataset.from_dict(
        {
            "messages": conversations.messages,
            "source": [location.file for location in conversations.locations],
            "source_id": [names.index(name) for name in conversations.sources],
            "record": list(range(len(conversations.messages))),
            "chars_clipped": clipped,
        },
        features=MESSAGES,
    )
    if len(table) == 0:  # datasets skips map on an empty table, which would leave the new columns out
        encoded = Dataset.from_dict({name: [] for name in ENCODED}, features=ENCODED)
    else:
        encode = partial(encode_batch, tokenizer=tokenizer, max_length=max_length, mask_history=mask_history,
                         long_conversations=long_conversations, reply_share=reply_share,
                         special_tokens_in_content=special_tokens_in_content)  # fmt: skip
        encoded = table.map(
            encode,
            batched=True,
            batch_size=256,
            num_proc=num_proc if num_proc and num_proc > 1 and len(table) > 1 else None,
            remove_columns=list(MESSAGES),
            features=ENCODED,
            new_fingerprint=fingerprint,
            desc="Tokenising",
        )
    keep = judge_samples(encoded, conversations, report, max_length)
    kept = encoded.select(keep) if len(keep) < len(encoded) else encoded
    internal = ["reason", "detail", "num_labels", "record", "pieces", "tokens_cut", "chars_clipped"]
    return kept.remove_columns(internal), report


def judge_samples(
    encoded: Dataset, conversations: Conversations, report: ValidationReport, max_length: int | None
) -> list[int]:
    """The rows to keep: samples with a labelled token of records that encoded (no `reason`). A record none of whose
    samples is kept goes to the report (for its length only when it is over max_length: a short record whose
    template renders its replies as nothing has no assistant token at all); kept records' length counts go to
    `report.lengths` by source."""
    columns = encoded.select_columns(["record", "reason", "detail", "num_labels", "num_tokens", "pieces",
                                      "tokens_cut", "chars_clipped"]).to_dict()  # fmt: skip
    keep: list[int] = []
    kept_rows: dict[int, list[int]] = {}
    for row, record in enumerate(columns["record"]):
        if not columns["reason"][row] and columns["num_labels"][row] > 0:
            kept_rows.setdefault(record, []).append(row)
    seen: set[int] = set()
    for row, record in enumerate(columns["record"]):
        if record in seen:
            continue
        seen.add(record)
        location = conversations.locations[record]
        over = max_length is not None and columns["num_tokens"][row] > max_length
        if columns["reason"][row]:
            report.reject(location, columns["reason"][row], columns["detail"][row])
        elif record not in kept_rows:  # "within max_length" only when the length is what left no reply token
            reason = "no assistant token within max_length" if over else "no assistant token"
            report.reject(location, reason)
        else:
            keep.extend(kept_rows[record])
            if over:
                samples = len(kept_rows[record])
                report.count_lengths(conversations.sources[record], over_length=1, split=int(samples > 1),
                                     samples=samples, tokens_cut=columns["tokens_cut"][row],
                                     chars_clipped=columns["chars_clipped"][row])  # fmt: skip
    return keep
