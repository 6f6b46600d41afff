"""Tokenise a conversation with its chat template and label exactly the assistant replies.

Labels (unshifted, Hugging Face convention: -100 = no loss) cover each assistant reply and its end-of-turn
token, never the role header, the newline after the end-of-turn token, or position 0. Spans are found by
rendering, not by `{% generation %}` markers, so any template that renders conversations incrementally works:
  header + reply  =  render(messages[:i+1])  minus  render(messages[:i], add_generation_prompt=True)
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from dftune.data.formats import Messages
from dftune.errors import DftuneError

IGNORE_INDEX = -100
# The template of tokenizers that have none (and of the presets' byte-level tokenizer, `dftune.models.presets`).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

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


def encode_batch(
    batch: dict[str, list[Any]],
    *,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    mask_history: bool,
) -> dict[str, list[Any]]:
    """`datasets.map` function: adds input_ids, labels, num_tokens (before truncation), num_labels (after),
    and template_error (a record the template itself rejects, e.g. "roles must alternate"; else "")."""
    out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "num_tokens", "num_labels", "template_error")}
    for messages in batch["messages"]:
        try:
            input_ids, labels = _encode_full(tokenizer, messages, mask_history)
            error = ""
        except TemplateError as exc:
            input_ids, labels, error = [], [], str(exc) or type(exc).__name__
        out["num_tokens"].append(len(input_ids))
        if max_length is not None:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        out["input_ids"].append(input_ids)
        out["labels"].append(labels)
        out["num_labels"].append(sum(label != IGNORE_INDEX for label in labels))
        out["template_error"].append(error)
    return out


def chat_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's chat template, or ChatML (with a warning) when it has none."""
    if tokenizer.chat_template:
        return tokenizer.chat_template
    _warn_once(f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__} has no chat template; using ChatML")
    return CHATML_TEMPLATE


def require_fast(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer itself, if it is a fast one: character offsets are what locate the assistant replies."""
    if not tokenizer.is_fast:
        raise DftuneError(f"dftune needs a fast tokenizer; {type(tokenizer).__name__} has no character offsets")
    return tokenizer


def _encode_full(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, mask_history: bool
) -> tuple[list[int], list[int]]:
    template = chat_template(require_fast(tokenizer))

    def render(part: Messages, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            part, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )

    text = render(messages, False)
    # A reply at position 0 has no prompt to render a generation header after (transformers refuses empty
    # conversations), so it stays context only.
    turns = [i for i, message in enumerate(messages) if message["role"] == "assistant" and i > 0]
    spans = []
    for i in turns[-1:] if mask_history else turns:
        before, through = render(messages[:i], True), render(messages[:i + 1], False)
        if not (through.startswith(before) and text.startswith(through)):
            raise DftuneError(
                "the chat template does not render conversations incrementally: the text of the first "
                f"{i} messages plus the generation prompt is not a prefix of the text of the first {i + 1}, "
                "or that is not a prefix of the whole conversation (e.g. the template rewrites earlier "
                "assistant turns), so assistant replies cannot be located; use a template without this "
                "behaviour"
            )
        spans.append((len(before), len(through.rstrip())))

    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    input_ids: list[int] = encoding["input_ids"]
    labels = [IGNORE_INDEX] * len(input_ids)
    span = 0
    for position, (start, _end) in enumerate(encoding["offset_mapping"]):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if position > 0 and start >= spans[span][0]:
            labels[position] = input_ids[position]
    return input_ids, labels


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)
