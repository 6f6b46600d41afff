"""Which tokens a record trains, as a person reads it (`dftune data check --show_labels N`).

The encoded record is shown as its decoded text with every special token visible, the trained tokens (labels
not -100) marked: green on a terminal, `[[...]]` otherwise; newlines show as `⏎` so a trained end of turn is
seen. One count line follows: tokens trained (the replies, with their end of turn) and not trained (system, user
and the template's headers), and how many of each are special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from transformers import PreTrainedTokenizerBase

IGNORE = -100
GREEN, RESET = "\033[1;32m", "\033[0m"


def _visible(text: str) -> str:
    return text.replace("\n", "⏎\n")


def label_view(input_ids: Sequence[int], labels: Sequence[int], tokenizer: PreTrainedTokenizerBase,
               *, colour: bool = False) -> str:
    """The record's text with its trained runs marked, then its counts."""
    trained_flags = [label != IGNORE for label in labels]
    parts = []
    position = 0
    for trained, run in groupby(trained_flags):
        length = len(list(run))
        text = _visible(tokenizer.decode(list(input_ids[position:position + length]), skip_special_tokens=False))
        position += length
        if trained:
            text = f"{GREEN}{text}{RESET}" if colour else f"[[{text}]]"
        parts.append(text)
    return "".join(parts) + "\n" + label_counts(input_ids, trained_flags, tokenizer)


def label_counts(input_ids: Sequence[int], trained: Sequence[bool], tokenizer: PreTrainedTokenizerBase) -> str:
    special = set(tokenizer.all_special_ids)
    n_trained = sum(trained)
    special_trained = sum(t and i in special for i, t in zip(input_ids, trained))
    special_other = sum(not t and i in special for i, t in zip(input_ids, trained))
    return (f"  {len(input_ids)} tokens: {n_trained} trained (assistant replies, {special_trained} special), "
            f"{len(input_ids) - n_trained} not trained (system, user, template; {special_other} special)")
