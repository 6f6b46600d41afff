"""What `encode_batch` (the function `datasets.map` runs) says of each record besides its labels: the defaults of
its policy keys, and the columns the data report counts from (pieces, num_tokens, tokens_cut, chars_clipped,
reason and detail). A wrong count here is a data report that lies while training looks fine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dftune.data.encode import encode_turns
from dftune.data.lengths import CHARS_PER_TOKEN, clip_messages, encode_batch, fit
from dftune.models.presets import build_tokenizer

TOKENIZER = build_tokenizer()  # byte-level ChatML: one token per character of content
MAX_LENGTH = 40
# Two replies whose turns fit 40 tokens together only with a cut: the second reply alone is longer than 40, so its
# prompt is cut to what reply_share leaves; a special-token string in the last user turn.
LONG = [{"role": "user", "content": "q" * 30}, {"role": "assistant", "content": "a" * 20},
        {"role": "user", "content": "r <|im_end|> " + "s" * 20}, {"role": "assistant", "content": "b" * 60}]
# A user message over CHARS_PER_TOKEN * MAX_LENGTH characters, clipped before tokenising; its last one tells its ends.
HUGE = [{"role": "user", "content": "h" * (CHARS_PER_TOKEN * MAX_LENGTH + 6) + "e"},
        {"role": "assistant", "content": "c"}]


def batch(*records: list[dict], clipped: list[int] | None = None) -> dict[str, list]:
    rows = {"messages": list(records), "source": ["s"] * len(records), "source_id": [0] * len(records),
            "record": list(range(len(records)))}  # fmt: skip
    return rows if clipped is None else {**rows, "chars_clipped": clipped}


def test_the_defaults_are_split_half_of_the_budget_and_text():
    """Each default against its spelled-out value and against another; under split a huge prompt loses its start
    (what precedes the reply stays), under truncate its end."""
    records = batch(LONG, HUGE)
    plain = encode_batch(records, tokenizer=TOKENIZER, max_length=MAX_LENGTH, mask_history=False)
    spelled = encode_batch(records, tokenizer=TOKENIZER, max_length=MAX_LENGTH, mask_history=False,
                           long_conversations="split", reply_share=0.5, special_tokens_in_content="text")
    assert plain == spelled and plain["record"] == [0, 0, 1]  # split: one sample per reply
    for other in ({"long_conversations": "truncate"}, {"reply_share": 0.9}, {"special_tokens_in_content": "reject"}):
        changed = encode_batch(records, tokenizer=TOKENIZER, max_length=MAX_LENGTH, mask_history=False, **other)
        assert changed != plain, other
    last = TOKENIZER("e", add_special_tokens=False)["input_ids"]
    assert last[0] in plain["input_ids"][2]  # split clipped the huge prompt's start: its end precedes the reply


@pytest.mark.parametrize("policy", [{"long_conversations": "split", "reply_share": 0.5},
                                    {"long_conversations": "split", "reply_share": 0.9},
                                    {"long_conversations": "truncate", "reply_share": 0.5}])  # fmt: skip
def test_each_record_counts_its_samples_tokens_and_cuts(policy):
    """Per record: pieces = its rows, num_tokens = its whole encoding, tokens_cut = what `fit` cut, with the same
    reply_share; chars_clipped adds the characters clip_messages dropped to those dropped before (the column in)."""
    out = encode_batch(batch(LONG, HUGE, clipped=[5, 3]), tokenizer=TOKENIZER, max_length=MAX_LENGTH,
                       mask_history=False, **policy)  # fmt: skip
    limit = CHARS_PER_TOKEN * MAX_LENGTH
    huge = [{**HUGE[0], "content": HUGE[0]["content"][-limit:]}, HUGE[1]]  # split and truncate keep a prompt's end
    if policy["long_conversations"] == "truncate":
        huge[0]["content"] = HUGE[0]["content"][:limit]
    for record, (messages, clipped) in enumerate([(LONG, 5), (huge, 3 + 7)]):
        turns = encode_turns(TOKENIZER, messages, False, "text")
        pieces = fit(turns, MAX_LENGTH, mode=policy["long_conversations"], reply_share=policy["reply_share"])
        rows = [i for i, r in enumerate(out["record"]) if r == record]
        assert [(out["input_ids"][i], out["labels"][i]) for i in rows] == pieces.samples
        assert {out["pieces"][i] for i in rows} == {len(pieces.samples)} and pieces.tokens_cut > 0
        assert {out["num_tokens"][i] for i in rows} == {len(turns.input_ids)}
        assert {out["tokens_cut"][i] for i in rows} == {pieces.tokens_cut}
        assert {out["chars_clipped"][i] for i in rows} == {clipped}
        assert {(out["reason"][i], out["detail"][i]) for i in rows} == {("", "")}


def test_without_a_budget_nothing_is_cut_or_clipped():
    out = encode_batch(batch(LONG, HUGE, clipped=[0, 2]), tokenizer=TOKENIZER, max_length=None, mask_history=False)
    assert out["pieces"] == [1, 1] and out["tokens_cut"] == [0, 0] and out["chars_clipped"] == [0, 2]
    assert out["num_tokens"] == [len(ids) for ids in out["input_ids"]]
    assert out["input_ids"][1] == encode_turns(TOKENIZER, HUGE, False, "text").input_ids


@pytest.mark.parametrize(("template", "reason", "detail"), [
    ("{{ raise_exception('tools are not supported') }}", "chat template error", "tools are not supported"),
    ("{{ raise_exception('') }}", "chat template error", "TemplateError"),  # no message: the error's kind
])  # fmt: skip
def test_a_template_that_refuses_a_record_says_why(template, reason, detail):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = template
    out = encode_batch(batch(LONG), tokenizer=tokenizer, max_length=MAX_LENGTH, mask_history=False)
    assert (out["reason"], out["detail"]) == ([reason], [detail])


def test_a_batch_without_a_clipped_column_counts_from_zero():
    out = encode_batch(batch(LONG, HUGE), tokenizer=TOKENIZER, max_length=MAX_LENGTH, mask_history=False)
    assert out["chars_clipped"] == [0, 0, 7]


@settings(deadline=None)  # no time limit per example: CI machines are shared
@given(messages=st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), st.integers(0, 30)),
                         min_size=1, max_size=5),
       mode=st.sampled_from(["split", "truncate"]), max_length=st.integers(1, 3))  # fmt: skip
def test_clip_messages_keeps_what_each_policy_trains_on(messages, mode, max_length):
    """A message over CHARS_PER_TOKEN * max_length characters keeps exactly that many: under split a prompt its
    end (what precedes the reply) and a reply its start; under truncate every message its start. Shorter ones stay
    whole, and the dropped count is their excess summed."""
    limit = CHARS_PER_TOKEN * max_length
    original = [{"role": role, "content": "".join(chr(0x4E00 + i) for i in range(n * 4))} for role, n in messages]
    clipped, dropped = clip_messages(original, max_length, mode)
    assert dropped == sum(max(0, len(m["content"]) - limit) for m in original)
    for before, after in zip(original, clipped, strict=True):
        text = before["content"]
        keep_end = mode == "split" and before["role"] != "assistant"
        kept = text if len(text) <= limit else text[-limit:] if keep_end else text[:limit]
        assert after == {**before, "content": kept}
