"""`--show_labels`: the trained tokens of a record marked in its decoded text, special tokens visible."""

from __future__ import annotations

from transformers import AutoTokenizer

from dftune.data.encode import encode_messages
from dftune.data.label_view import GREEN, RESET, label_view


def _encoded(tokenizer):
    messages = [{"role": "system", "content": "Add."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                {"role": "assistant", "content": "6"}]  # fmt: skip
    encoded = encode_messages(tokenizer, messages)
    return encoded["input_ids"], encoded["labels"]


def test_only_the_replies_and_their_end_of_turn_are_marked(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    input_ids, labels = _encoded(tokenizer)
    text, counts = label_view(input_ids, labels, tokenizer).rsplit("\n", 1)
    marked = [part.split("]]")[0] for part in text.split("[[")[1:]]
    assert marked == ["4<|im_end|>", "6<|im_end|>"]
    assert "<|im_start|>system⏎\nAdd.<|im_end|>" in text  # special tokens and newlines visible
    trained = sum(label != -100 for label in labels)
    assert counts.strip().startswith(f"{len(input_ids)} tokens: {trained} trained (assistant replies, 2 special)")


def test_a_terminal_gets_colour_instead_of_brackets(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    shown = label_view(*_encoded(tokenizer), tokenizer, colour=True)
    assert "[[" not in shown and shown.count(GREEN) == 2 and shown.count(RESET) == 2
