"""Conversations longer than `max_length`: split at turn boundaries (default) or keep the first tokens (the old way).

`split` (no conversation with a reply is lost to its length): samples are made greedily, in order. Each sample
ends with an assistant reply (its end-of-turn token) and starts at the earliest turn boundary that lets it fit, so it
keeps as much preceding context as fits; it holds as many following replies as still fit. Replies already trained
in an earlier sample are context only (labels -100) in later ones, so no reply is trained twice. When even the
reply's own turn does not fit, its prompt is cut from the left: the reply keeps its whole length when the prompt
can shrink to make room, and never less than `reply_share` of the budget otherwise (its end is then cut).

`truncate`: the first `max_length` tokens, as before (a conversation whose first reply starts later has none).

Preference pairs (stage dpo, `fit_preference`) are never lost to their length either: the prompt is cut from the
left (TRL's `keep_end`) keeping its generation header, the replies at their end; a pair is rejected only when not one
reply token fits.

Huge messages are clipped before they are rendered (`clip_messages`), so tokenising a 50 MB reply costs the budget,
not the record: a message longer than `CHARS_PER_TOKEN * max_length` characters cannot fit in a sample anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from dftune.data.encode import IGNORE_INDEX, Turns, encode_turns
from dftune.data.formats import InvalidRecord, Messages

if TYPE_CHECKING:  # annotations only: importing the data layer stays light (dftune data check --help)
    from transformers import PreTrainedTokenizerBase

# A token spans at most this many characters in the clipped part (generous: byte-level and BPE tokens of natural
# text average 1-5); a message longer than this many characters per budget token is clipped before rendering.
CHARS_PER_TOKEN = 32


@dataclass
class Pieces:
    """The samples of one conversation, and the tokens it lost to the budget (prompt cut + reply cut)."""

    samples: list[tuple[list[int], list[int]]]
    tokens_cut: int = 0


def clip_messages(messages: Messages, max_length: int, mode: str) -> tuple[Messages, int]:
    """Messages whose content is at most CHARS_PER_TOKEN * max_length characters, and how many characters were
    dropped. split keeps the end of a prompt (what precedes the reply) and the start of a reply; truncate the start."""
    limit = CHARS_PER_TOKEN * max_length
    clipped, dropped = [], 0
    for message in messages:
        content = message["content"]
        if len(content) > limit:
            dropped += len(content) - limit
            keep_end = mode == "split" and message["role"] != "assistant"
            content = content[-limit:] if keep_end else content[:limit]
            message = {**message, "content": content}
        clipped.append(message)
    return clipped, dropped


def fit(turns: Turns, max_length: int, *, mode: str = "split", reply_share: float = 0.5) -> Pieces:
    """The samples of one tokenised conversation within `max_length` tokens (see the module docstring)."""
    ids, labels = turns.input_ids, turns.labels
    if len(ids) <= max_length:
        return Pieces([(ids, labels)])
    if mode == "truncate" or not turns.replies:
        return Pieces([(ids[:max_length], labels[:max_length])], tokens_cut=len(ids) - max_length)
    pieces = Pieces([])
    trained = 0  # replies before this token position are in an earlier sample: context only from now on
    i = 0
    while i < len(turns.replies):
        first, end = turns.replies[i]
        own = max([b for b in turns.boundaries if b < first], default=0)  # where the reply's own turn starts
        if end - own <= max_length:
            start = min(b for b in turns.boundaries if end - b <= max_length and b <= own)
            while i + 1 < len(turns.replies) and turns.replies[i + 1][1] - start <= max_length:
                i += 1
            stop = turns.replies[i][1]
        else:
            start, stop = _cut(first - own, end - first, first, max_length, reply_share)
            pieces.tokens_cut += (first - own) - (first - start) + (end - stop)
        piece = labels[start:stop]
        if trained > start:
            piece[: trained - start] = [IGNORE_INDEX] * (trained - start)
        piece[0] = IGNORE_INDEX  # a sample's first token has nothing before it to be predicted from
        pieces.samples.append((ids[start:stop], piece))
        trained = stop
        i += 1
    return pieces


def _cut(prompt: int, reply: int, first: int, max_length: int, reply_share: float) -> tuple[int, int]:
    """(start, stop) of a reply whose turn does not fit: its prompt cut from the left to `room` tokens (at least 1),
    the reply whole when that leaves room for it, else cut at the end; the reply gets at least `reply_share`."""
    most_for_prompt = max_length - math.ceil(reply_share * max_length)
    room = max(max_length - reply, min(prompt, most_for_prompt))
    room = max(1, min(room, prompt, max_length - 1))
    return first - room, first + min(reply, max_length - room)


ENCODED_COLUMNS = ("source", "source_id", "record", "input_ids", "labels", "num_tokens", "num_labels",
                   "reason", "detail", "pieces", "tokens_cut", "chars_clipped")


def encode_batch(
    batch: dict[str, list[Any]],
    *,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    mask_history: bool,
    long_conversations: str = "split",
    reply_share: float = 0.5,
    special_tokens_in_content: str = "text",
) -> dict[str, list[Any]]:
    """`datasets.map` function (batched, one record -> one or more rows): per sample input_ids, labels, and of its
    record: source, source_id, record (its row in the input), num_tokens (before fitting to max_length),
    num_labels (of this sample), reason and detail (why the record is bad: "chat template error" when the template
    itself rejects it, e.g. "roles must alternate", or "special token in content" with special_tokens_in_content:
    reject; else ""), pieces (samples the record became), tokens_cut (tokens it lost to max_length) and
    chars_clipped (characters of huge messages dropped before tokenising, see `clip_messages`)."""
    out: dict[str, list[Any]] = {k: [] for k in ENCODED_COLUMNS}
    for row, messages in enumerate(batch["messages"]):
        dropped = 0
        if max_length is not None:
            messages, dropped = clip_messages(messages, max_length, long_conversations)
        reason, detail = "", ""
        try:
            turns = encode_turns(tokenizer, messages, mask_history, special_tokens_in_content)
        except TemplateError as exc:
            turns, reason, detail = Turns([], []), "chat template error", str(exc) or type(exc).__name__
        except InvalidRecord as exc:
            turns, reason, detail = Turns([], []), exc.reason, exc.detail
        num_tokens = len(turns.input_ids)
        if max_length is None:
            samples, cut = [(turns.input_ids, turns.labels)], 0
        else:
            pieces = fit(turns, max_length, mode=long_conversations, reply_share=reply_share)
            samples, cut = pieces.samples, pieces.tokens_cut
        for input_ids, labels in samples:
            for key in ("source", "source_id", "record"):
                out[key].append(batch[key][row])
            out["input_ids"].append(input_ids)
            out["labels"].append(labels)
            out["num_tokens"].append(num_tokens)
            out["num_labels"].append(sum(label != IGNORE_INDEX for label in labels))
            out["reason"].append(reason)
            out["detail"].append(detail)
            out["pieces"].append(len(samples))
            out["tokens_cut"].append(cut)
            out["chars_clipped"].append(dropped + batch.get("chars_clipped", [0] * (row + 1))[row])
    return out


@dataclass(frozen=True)
class PreferenceLimits:
    """How a preference pair is fitted to `max_length` (TRL's key names): the prompt keeps at most
    `max_prompt_length` tokens, each reply at most `max_completion_length`; `truncation_mode` says which part of a
    cut prompt stays: keep_end its end (the default, older TRL's), keep_start its start. Either way the prompt keeps
    its generation header (the assistant turn's opening), so the reply follows what the model sees when it answers."""

    max_length: int | None
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    truncation_mode: str = "keep_end"
    reply_share: float = 0.5


@dataclass
class FittedPair:
    """The token ids of a pair within its limits, and how many tokens the limits cut from it."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    tokens_cut: int


def fit_preference(prompt: list[int], chosen: list[int], rejected: list[int], header: int,
                   limits: PreferenceLimits) -> FittedPair | None:  # fmt: skip
    """The pair cut to `limits`, or None when not one reply token fits (the generation header alone fills
    max_length). Replies are cut at max_completion_length, the prompt at max_prompt_length; then, if the prompt and
    the longer reply still exceed max_length, the prompt shrinks (to its header at least) so the reply fits whole,
    but a reply keeps at least `reply_share` of max_length (its end is cut), as SFT's `long_conversations: split`.
    `header` is the number of the prompt's last tokens that are the generation header."""
    cap = limits.max_completion_length
    replies = [ids if cap is None else ids[:cap] for ids in (chosen, rejected)]
    header = min(header, len(prompt))
    room = len(prompt) if limits.max_prompt_length is None else min(len(prompt), limits.max_prompt_length)
    least = min(max(header, 1), room)  # the header, else one token of the prompt
    longest = max(map(len, replies))
    if limits.max_length is not None:
        if least >= limits.max_length:
            return None
        if room + longest > limits.max_length:
            most_for_prompt = limits.max_length - math.ceil(limits.reply_share * limits.max_length)
            room = max(limits.max_length - longest, min(room, most_for_prompt))
            room = max(least, min(room, limits.max_length - 1))
        replies = [ids[: limits.max_length - room] for ids in replies]
    if limits.truncation_mode == "keep_end":
        kept = prompt[len(prompt) - room:]
    else:
        tail = min(header, room)
        kept = prompt[: room - tail] + prompt[len(prompt) - tail:]
    cut = len(prompt) + len(chosen) + len(rejected) - len(kept) - sum(map(len, replies))
    return FittedPair(kept, replies[0], replies[1], cut)
