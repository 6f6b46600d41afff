"""Special-token strings inside message content are text, never control tokens (LLaMA-Factory's split_special_tokens).

A tokenizer turns the string of each of its special tokens (`<|im_end|>`, `<|endoftext|>`, ...) into that token
wherever it occurs, so a reply holding "ok<|im_end|>\\n<|im_start|>user\\nfake" would end its turn and open a forged
user turn, trained as control tokens. Here only the template's own special tokens are control tokens:

  1. the conversation is rendered once more with each special string of the content wrapped in two private-use
     marker characters (`forged_ranges`): what they enclose, markers removed, are the forged places in the text;
  2. the text is tokenised whole, as without forged strings; each stretch between two of the template's special
     tokens that holds a forged one is tokenised again with `split_special_tokens=True` (`tokenize`), so its special
     strings become the tokens of their plain text. The tokenizer splits at special tokens before anything else, so
     a stretch alone tokenises as it does inside the whole text (a stretch is tokenised after a newline that is then
     dropped, as transformers' `sanitize_control_tokens` does, so SentencePiece adds no prefix space).

Records without special strings in their content are tokenised exactly as before. Only tokens the tokenizer marks
special count (other added tokens, e.g. Qwen3's `<think>`, stay tokens, as with split_special_tokens).
`special_tokens_in_content: reject` makes such a record a bad record instead (`check_content`). SFT conversations
(`dftune.data.encode`) and preference pairs (`dftune.data.preference`) both go through `tokenize_rendered`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dftune.data.formats import InvalidRecord, Messages

if TYPE_CHECKING:  # annotations only: importing the data layer stays light (dftune data check --help)
    from transformers import PreTrainedTokenizerBase

REASON = "special token in content"
"""The bad-record reason of a record refused for a special-token string in its content."""


def special_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The strings of the tokenizer's special tokens, longest first (so a regex alternation matches the longest)."""
    return sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len, reverse=True)


def check_content(tokenizer: PreTrainedTokenizerBase, messages: Messages, mode: str) -> list[str]:
    """The tokenizer's special strings when a message's content holds one, else [] (nothing to keep as text).
    mode "reject" (`special_tokens_in_content`): a content holding one raises InvalidRecord naming it."""
    strings = special_strings(tokenizer)
    found = first_special(messages, strings)
    if found is None:
        return []
    if mode == "reject":
        i, string = found
        raise InvalidRecord(REASON, f"{string!r} in message {i} ({messages[i]['role']}); remove it, or set "
                            "special_tokens_in_content: text to train it as plain text")  # fmt: skip
    return strings


def tokenize_rendered(
    tokenizer: PreTrainedTokenizerBase, render: Callable[[Messages], str], messages: Messages, strings: Sequence[str]
) -> tuple[str, Tokens]:
    """`render(messages)` and its tokens, the content's special strings (`strings`, from `check_content`) as text."""
    text = render(messages)
    return text, tokenize(tokenizer, text, forged_ranges(render, messages, text, strings) if strings else [])


def first_special(messages: Messages, strings: Sequence[str]) -> tuple[int, str] | None:
    """(message index, special string) of the first message whose content holds one, or None."""
    for i, message in enumerate(messages):
        found = [s for s in strings if s in message["content"]]
        if found:
            return i, min(found, key=message["content"].index)
    return None


def forged_ranges(
    render: Callable[[Messages], str], messages: Messages, text: str, strings: Sequence[str]
) -> list[tuple[int, int]]:
    """The (start, end) character ranges of `text` (the rendered conversation) that are special strings of the
    messages' content: `render` renders the messages again with each such string between two marker characters."""
    start, end = _markers(text)
    pattern = re.compile("|".join(map(re.escape, strings)))
    marked = [{**m, "content": pattern.sub(lambda hit: start + hit.group(0) + end, m["content"])} for m in messages]
    clean, ranges, opened, paired = [], [], None, True
    position = 0
    for piece in re.split(f"([{start}{end}])", render(marked)):
        if piece == start:
            paired, opened = paired and opened is None, position
        elif piece == end:
            paired = paired and opened is not None
            ranges.append((opened or 0, position))
            opened = None
        else:
            clean.append(piece)
            position += len(piece)
    if not paired or opened is not None or "".join(clean) != text:  # the template cut, reordered or changed it
        raise InvalidRecord(REASON, "the chat template changes the message content, so its special-token strings "
                            "cannot be located and kept as text; remove them from the data")  # fmt: skip
    return ranges


def _markers(text: str) -> tuple[str, str]:
    """Two private-use characters that do not occur in `text`."""
    free = (chr(c) for c in range(0xE000, 0xF900) if chr(c) not in text)
    return next(free), next(free)


@dataclass
class Tokens:
    """A tokenised text: ids, character offsets, and which tokens are control tokens (special tokens the template
    wrote; a special string of a message's content is plain-text tokens)."""

    ids: list[int] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    control: list[bool] = field(default_factory=list)

    def extend(self, ids: list[int], offsets: list[tuple[int, int]], control: list[bool]) -> None:
        self.ids += ids
        self.offsets += offsets
        self.control += control


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str, forged: Sequence[tuple[int, int]]) -> Tokens:
    """`text` tokenised with its special tokens, except those starting inside a `forged` range: each stretch between
    two control tokens that holds one is tokenised again as text (see the module docstring)."""
    ids, offsets = _encode(tokenizer, text, split=False)
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    fake = [i in special and any(a <= start < b for a, b in forged) for i, (start, _end) in zip(ids, offsets)]
    control = [i in special and not f for i, f in zip(ids, fake)]
    if not any(fake):
        return Tokens(ids, offsets, control)
    out, lo = Tokens(), 0
    for hi in [k for k, c in enumerate(control) if c] + [len(ids)]:
        if any(fake[lo:hi]):
            first = offsets[lo - 1][1] if lo else 0
            last = offsets[hi][0] if hi < len(ids) else len(text)
            piece_ids, piece_offsets = _encode(tokenizer, text[first:last], split=True, after_newline=first > 0)
            if {i for i, f in zip(ids[lo:hi], fake[lo:hi]) if f} & set(piece_ids):  # e.g. a vocabulary merge
                raise InvalidRecord(REASON, "the tokenizer makes a special token of its plain text; remove the "
                                    "special-token strings from the data")  # fmt: skip
            out.extend(piece_ids, [(a + first, b + first) for a, b in piece_offsets], [False] * len(piece_ids))
        else:
            out.extend(ids[lo:hi], offsets[lo:hi], control[lo:hi])
        if hi < len(ids):
            out.extend([ids[hi]], [offsets[hi]], [True])
        lo = hi + 1
    return out


def _encode(
    tokenizer: PreTrainedTokenizerBase, text: str, *, split: bool, after_newline: bool = False
) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and offsets of `text`; `split`: special strings as text; `after_newline`: tokenised after a newline that is
    then dropped, so a tokenizer that adds a prefix space at the start of a string adds none mid-text."""
    def run(part: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = tokenizer(part, add_special_tokens=False, return_offsets_mapping=True, verbose=False,
                             split_special_tokens=split)  # fmt: skip
        return encoding["input_ids"], [tuple(o) for o in encoding["offset_mapping"]]

    if after_newline:
        newline, _ = run("\n")
        ids, offsets = run("\n" + text)
        if ids[: len(newline)] == newline and all(end <= 1 for _start, end in offsets[: len(newline)]):
            return ids[len(newline):], [(a - 1, b - 1) for a, b in offsets[len(newline):]]
    return run(text)
