"""Assistant-only labels, checked by decoding the labelled spans, for three template styles."""

from __future__ import annotations

import logging

import pytest

from dftune.data.encode import encode_messages
from dftune.errors import DftuneError
from dftune.models.presets import build_tokenizer

IGNORE = -100
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4, of course. ünï 😀"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
]
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def labelled_spans(tokenizer, encoded) -> list[str]:
    """Decode each maximal run of labelled tokens."""
    spans, run = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


def with_template(template: str):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize(
    ("template", "end"),
    [(None, "<|im_end|>"), (LLAMA3, "<|eot_id|>"), (ZEPHYR, "<|im_end|>")],
    ids=["chatml", "llama3", "zephyr"],
)
def test_labels_are_the_replies_and_their_end_of_turn(template, end):
    tokenizer = with_template(template) if template else build_tokenizer()
    encoded = encode_messages(tokenizer, CONVERSATION)
    assert labelled_spans(tokenizer, encoded) == ["4, of course. ünï 😀" + end, "6" + end]
    assert tokenizer.decode(encoded["input_ids"]) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)


def test_mask_history_keeps_only_the_last_reply(tokenizer):
    encoded = encode_messages(tokenizer, CONVERSATION, mask_history=True)
    assert labelled_spans(tokenizer, encoded) == ["6<|im_end|>"]


def test_truncation_keeps_the_left_part(tokenizer):
    full = encode_messages(tokenizer, CONVERSATION)
    cut = encode_messages(tokenizer, CONVERSATION, max_length=40)
    assert cut == {"input_ids": full["input_ids"][:40], "labels": full["labels"][:40]}


def test_position_zero_is_never_labelled():
    """A template that renders user turns as nothing puts the reply's first token at position 0."""
    tokenizer = with_template(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    )
    encoded = encode_messages(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ab"}])
    assert encoded["labels"] == [IGNORE, encoded["input_ids"][1], encoded["input_ids"][2]]


@pytest.mark.parametrize(
    ("template", "end"),
    [(None, "<|im_end|>"), (LLAMA3, "<|eot_id|>"), (ZEPHYR, "<|im_end|>")],
    ids=["chatml", "llama3", "zephyr"],
)
def test_a_reply_with_no_prompt_is_trained_whole(template, end):
    """No user turn before the reply (issue 23): its prompt is empty, the reply and its end of turn are the target;
    an opening greeting before the first user turn is a reply like the others (mask_history: the last only)."""
    tokenizer = with_template(template) if template else build_tokenizer()
    alone = [{"role": "assistant", "content": "Welcome"}]
    for messages in (alone, [CONVERSATION[0], *alone]):
        encoded = encode_messages(tokenizer, messages)
        assert labelled_spans(tokenizer, encoded) == ["Welcome" + end]
        assert encoded["labels"][0] == IGNORE and tokenizer.decode(encoded["input_ids"]) == (
            tokenizer.apply_chat_template(messages, tokenize=False))
    opened, answer = [*alone, *CONVERSATION[1:3]], CONVERSATION[2]["content"] + end
    assert labelled_spans(tokenizer, encode_messages(tokenizer, opened)) == ["Welcome" + end, answer]
    assert labelled_spans(tokenizer, encode_messages(tokenizer, opened, mask_history=True)) == [answer]


def test_missing_template_falls_back_to_chatml_with_a_warning(caplog):
    tokenizer = with_template(None)
    tokenizer.chat_template = None
    with caplog.at_level(logging.WARNING):
        encoded = encode_messages(tokenizer, CONVERSATION[:3])
    assert "no chat template" in caplog.text
    assert labelled_spans(tokenizer, encoded) == ["4, of course. ünï 😀<|im_end|>"]


def test_template_that_rewrites_history_is_refused():
    """Like templates that drop earlier reasoning: the last reply renders differently from history."""
    tokenizer = with_template(
        "{% for m in messages %}{{ m['role'] + ':' + (m['content'] if loop.last else m['content'][:1]) + eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    )
    with pytest.raises(DftuneError, match="does not render conversations incrementally"):
        encode_messages(tokenizer, CONVERSATION)


def test_template_that_rewrites_a_reply_opening_the_conversation_is_refused():
    """A reply with no prompt is located by its content in the rendered text: a template that changes the content
    (here upper-cases it) gives no place to start its labels, and says so."""
    tokenizer = with_template("{% for m in messages %}{{ m['role'] + ':' + m['content'] | upper + eos_token }}"
                              "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    assert labelled_spans(tokenizer, encode_messages(tokenizer, CONVERSATION[1:3])) == ["4, OF COURSE. ÜNÏ 😀<|im_end|>"]
    with pytest.raises(DftuneError, match="does not render a reply's text as it is"):
        encode_messages(tokenizer, [{"role": "assistant", "content": "Welcome"}])
