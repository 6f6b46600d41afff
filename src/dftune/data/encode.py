"""Tokenise a conversation with its chat template and label exactly the assistant replies.

Labels (unshifted, Hugging Face convention: -100 = no loss) cover each assistant reply and its end of turn, never
the role header, the whitespace after an end-of-turn control token, or position 0. Spans are found by rendering, not
by `{% generation %}` markers, so any template that renders conversations incrementally works:
  header + reply  =  render(messages[:i+1])  minus  render(messages[:i], add_generation_prompt=True)
A token is a target when it overlaps the reply's characters, so the first reply token is trained even when BPE
merges it with the header (" hello" after Vicuna's "ASSISTANT: "). The turn's end is trained as the template writes
it: trailing whitespace is dropped only right after a control token (`<|im_end|>` + "\n"), never from a plain-text
end ("\n", "</s>" as text). Special-token strings inside content are plain text (`dftune.data.special_text`).
A reply that opens the conversation (no user turn before it) has an empty prompt: it is trained whole, after the
header the template renders before it (`_opening`).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from dftune.data.formats import Messages
from dftune.data.special_text import check_content, tokenize_rendered
from dftune.errors import DftuneError

if TYPE_CHECKING:  # annotations only: importing the data layer stays light (dftune data check --help)
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
# The template of tokenizers that have none (and of the presets' byte-level tokenizer, `dftune.models.presets`).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Stage dllm's template for a masked LM whose tokenizer has none (BERT, RoBERTa, ...): its markup is plain words its
# vocabulary has, and each turn ends with the tokenizer's own end token (EOS, which is [SEP] for a BERT-style one), so
# a reply is trained to end where the sampler stops. "user:\nhi[SEP]\nassistant:\nhello[SEP]\n".
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ':\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}"
)
TEMPLATES = {"ChatML": CHATML_TEMPLATE, "plain": PLAIN_TEMPLATE}
REPLY_MARKER = "dftune-reply-marker"  # stands for a reply's content to find the text a template puts before it

logger = logging.getLogger(__name__)


def encode_messages(
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages,
    max_length: int | None = None,
    *,
    mask_history: bool = False,
) -> dict[str, list[int]]:
    """`{"input_ids", "labels"}` of one conversation, truncated to its first `max_length` tokens.

    mask_history: label only the last assistant turn (earlier replies stay in the context, without loss).
    """
    input_ids, labels = _encode_full(tokenizer, messages, mask_history)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def chat_template(tokenizer: PreTrainedTokenizerBase, fallback: str = "ChatML") -> str:
    """The tokenizer's chat template, or the `fallback` one of `TEMPLATES` (with a warning) when it has none."""
    if tokenizer.chat_template:
        return tokenizer.chat_template
    name = tokenizer.name_or_path or type(tokenizer).__name__
    _warn_once(f"tokenizer {name} has no chat template; using the {fallback} template (saved with the model)")
    return TEMPLATES[fallback]


def require_fast(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer itself, if it is a fast one: character offsets are what locate the assistant replies."""
    if not tokenizer.is_fast:
        raise DftuneError(f"dftune needs a fast tokenizer; {type(tokenizer).__name__} has no character offsets")
    return tokenizer


def _encode_full(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, mask_history: bool
) -> tuple[list[int], list[int]]:
    encoded = encode_turns(tokenizer, messages, mask_history)
    return encoded.input_ids, encoded.labels


@dataclass
class Turns:
    """A tokenised conversation with where it may be split: `boundaries` are the token positions where a turn starts
    (0, and after every assistant reply), `replies` the (first, end) token range of each labelled reply."""

    input_ids: list[int]
    labels: list[int]
    boundaries: list[int] = field(default_factory=list)
    replies: list[tuple[int, int]] = field(default_factory=list)


def encode_turns(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, mask_history: bool, special_tokens_in_content: str = "text"
) -> Turns:
    """The whole conversation tokenised once, labels on the assistant replies, and its turn boundaries.

    special_tokens_in_content: "text" tokenises special-token strings of the content as plain text
    (`dftune.data.special_text`); "reject" raises InvalidRecord for a record that holds one."""
    template = chat_template(require_fast(tokenizer))

    def render(part: Messages, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            part, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )

    strings = check_content(tokenizer, messages, special_tokens_in_content)
    text, tokens = tokenize_rendered(tokenizer, lambda part: render(part, False), messages, strings)
    turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    labelled = set(turns[-1:] if mask_history else turns)
    spans, cuts = [], [0]
    for i in turns:
        through = render(messages[:i + 1], False)
        if i not in labelled:  # mask_history: an earlier reply is context only; it marks a boundary where it can
            cuts += [len(through)] if text.startswith(through) else []
            continue
        before = render(messages[:i], True) if i > 0 else _opening(render, messages[0])
        if not (through.startswith(before) and text.startswith(through)):
            raise DftuneError(
                "the chat template does not render conversations incrementally: the text of the first "
                f"{i} messages plus the generation prompt is not a prefix of the text of the first {i + 1}, "
                "or that is not a prefix of the whole conversation (e.g. the template rewrites earlier "
                "assistant turns), so assistant replies cannot be located; use a template without this "
                "behaviour"
            )
        spans.append((len(before), len(through)))
        cuts.append(len(through))  # the next turn starts here (after the reply's end-of-turn text)

    control_ends = {end for (_start, end), control in zip(tokens.offsets, tokens.control) if control}
    spans = [(first, _end_of_turn(text, first, end, control_ends)) for first, end in spans]
    labels = [IGNORE_INDEX] * len(tokens.ids)
    ranges: dict[int, tuple[int, int]] = {}  # span -> (first, end) of its labelled tokens
    span = 0
    for position, (start, end) in enumerate(tokens.offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if position > 0 and max(end, start + 1) > spans[span][0]:  # overlaps the reply: " hello" after "A: " too
            labels[position] = tokens.ids[position]
            ranges[span] = (ranges.get(span, (position, 0))[0], position + 1)
    starts = [start for start, _end in tokens.offsets]
    boundaries = sorted({bisect_left(starts, cut) for cut in cuts if bisect_left(starts, cut) < len(starts)})
    return Turns(tokens.ids, labels, boundaries, [ranges[k] for k in sorted(ranges)])


def _end_of_turn(text: str, first: int, end: int, control_ends: set[int]) -> int:
    """Where a reply's target ends: its turn's end, less trailing whitespace only when that follows a control token
    (`<|im_end|>` + "\\n": the newline opens the next turn); a plain-text end ("\\n", "</s>" as text) is trained."""
    stripped = len(text[:end].rstrip())
    return stripped if first < stripped and stripped in control_ends else end


def _opening(render: Callable[[Messages, bool], str], reply: dict[str, str]) -> str:
    """The text before the content of a reply that opens the conversation (no prompt: ShareGPT's lone `gpt` turn).

    transformers refuses to render an empty conversation with a generation prompt, so the reply is rendered with a
    marker for its content, and what precedes the marker is the reply's header (with any system prompt the template
    adds by default, e.g. SmolLM2's): the reply is trained with an empty prompt."""
    marked = render([{**reply, "content": REPLY_MARKER}], False)
    if REPLY_MARKER not in marked:
        raise DftuneError(
            "the chat template does not render a reply's text as it is (a conversation that opens with an assistant "
            "reply rendered without its content), so the reply cannot be located; use a template without this "
            "behaviour"
        )
    return marked[: marked.index(REPLY_MARKER)]


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)
