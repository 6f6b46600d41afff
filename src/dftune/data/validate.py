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

from dftune.data.encode import encode_batch
from dftune.data.formats import InvalidRecord, Messages, normalize_messages
from dftune.data.readers import Location, read_records
from dftune.data.report import ValidationReport


T = TypeVar("T")
MESSAGES = Features(
    {"messages": List({"role": Value("string"), "content": Value("string")}), "source": Value("string")}
)
ENCODED = Features(
    {
        "source": Value("string"),
        "input_ids": List(Value("int32")),
        "labels": List(Value("int32")),
        "num_tokens": Value("int32"),
        "num_labels": Value("int32"),
        "template_error": Value("string"),
    }
)


@dataclass
class Conversations:
    """The structurally valid records, as ChatML messages, with their locations (same order)."""

    messages: list[Messages] = field(default_factory=list)
    locations: list[Location] = field(default_factory=list)


def normalized_records(
    sources: Sequence[str], normalize: Callable[[Any], T], report: ValidationReport
) -> Iterator[tuple[Location, T]]:
    """(location, normalize(record)) for every record that decodes and normalises; every other record goes to
    `report` with its reason, and each source's record count once it is read."""
    for source in sources:
        total = 0
        for record in read_records(source):
            total += 1
            if record.reason is not None:
                report.reject(record.location, record.reason, record.detail)
                continue
            try:
                value = normalize(record.value)
            except InvalidRecord as exc:
                report.reject(record.location, exc.reason, exc.detail)
                continue
            yield record.location, value
        report.add_file(source, total)


def collect_conversations(sources: Sequence[str]) -> tuple[Conversations, ValidationReport]:
    """Read and normalise every record; bad ones go to the report with their reason."""
    conversations, report = Conversations(), ValidationReport()
    for location, messages in normalized_records(sources, normalize_messages, report):
        conversations.messages.append(messages)
        conversations.locations.append(location)
    return conversations, report


def validate_and_encode(
    sources: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int | None,
    mask_history: bool = False,
    num_proc: int | None = None,
    fingerprint: str | None = None,
) -> tuple[Dataset, ValidationReport]:
    """Tokenised kept records (input_ids, labels, source, num_tokens) and the report of all records.

    A record is rejected here when the chat template raises on it, or when no labelled token is left in its
    first `max_length` tokens. `fingerprint` names the map result for `datasets` (skips hashing the tokenizer).
    """
    conversations, report = collect_conversations(sources)
    table = Dataset.from_dict(
        {
            "messages": conversations.messages,
            "source": [location.file for location in conversations.locations],
        },
        features=MESSAGES,
    )
    if len(table) == 0:  # datasets skips map on an empty table, which would leave the new columns out
        encoded = Dataset.from_dict({name: [] for name in ENCODED}, features=ENCODED)
    else:
        encoded = table.map(
            partial(encode_batch, tokenizer=tokenizer, max_length=max_length, mask_history=mask_history),
            batched=True,
            batch_size=256,
            num_proc=num_proc if num_proc and num_proc > 1 and len(table) > 1 else None,
            remove_columns=["messages"],
            features=ENCODED,
            new_fingerprint=fingerprint,
            desc="Tokenising",
        )
    keep = []
    for row, (errors, num_labels) in enumerate(zip(encoded["template_error"], encoded["num_labels"])):
        location = conversations.locations[row]
        if errors:
            report.reject(location, "chat template error", errors)
        elif num_labels == 0:
            reason = "no assistant token within max_length" if max_length is not None else "no assistant token"
            report.reject(location, reason)
        else:
            keep.append(row)
    kept = encoded.select(keep) if len(keep) < len(encoded) else encoded
    return kept.remove_columns(["template_error", "num_labels"]), report
