"""Labels after every long_conversations policy, as properties over many conversations (hypothesis picks them):
every label is -100 or the token at its position, a sample's labels are the conversation's own at the same tokens,
no token is trained twice, and a sample cut inside a reply keeps its last target. Through `encode_batch`, the
function `datasets.map` runs in training, not a helper beside it."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dftune.data.encode import IGNORE_INDEX, encode_turns
from dftune.data.lengths import encode_batch
from dftune.models.presets import build_tokenizer

TOKENIZER = build_tokenizer()  # byte-level ChatML: one token per character of content

# Special-token strings among the characters: they are plain text inside content (`dftune.data.special_text`).
contents = st.lists(st.sampled_from([*"abcdefgh \n", "<|im_end|>", "<|im_start|>", "<|endoftext|>"]),
                    max_size=40).map("".join)
# Each message starts with its own digit, so a sample (which always holds the first token of a reply) is found at
# one place only in the whole conversation.
conversations = st.lists(contents, min_size=2, max_size=7).map(
    lambda texts: [{"role": ("user", "assistant")[i % 2], "content": f"{i}{text}"} for i, text in enumerate(texts)]
)
policies = st.fixed_dictionaries({
    "max_length": st.integers(8, 160),
    "long_conversations": st.sampled_from(["split", "truncate"]),
    "reply_share": st.floats(0.05, 0.95),
    "mask_history": st.booleans(),
})  # fmt: skip


def encode(messages: list[dict], policy: dict) -> dict[str, list]:
    batch = {"messages": [messages], "source": ["s"], "source_id": [0], "record": [0]}
    return encode_batch(batch, tokenizer=TOKENIZER, **policy)


def offsets(whole: list[int], samples: list[list[int]]) -> list[int]:
    """Where each sample starts in the whole conversation: the first match at or after the previous one's start."""
    found, start = [], 0
    for ids in samples:
        start = next(s for s in range(start, len(whole) - len(ids) + 1) if whole[s:s + len(ids)] == ids)
        found.append(start)
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=conversations, policy=policies)
def test_every_label_is_ignored_or_the_token_at_its_position(messages, policy):
    rows = encode(messages, policy)
    whole = encode_turns(TOKENIZER, messages, policy["mask_history"])
    trained: set[int] = set()
    over = len(whole.input_ids) > policy["max_length"]
    starts = offsets(whole.input_ids, rows["input_ids"])
    for ids, labels, start, counted in zip(rows["input_ids"], rows["labels"], starts, rows["num_labels"]):
        assert len(ids) == len(labels) <= policy["max_length"]
        assert all(label in (IGNORE_INDEX, token) for label, token in zip(labels, ids))
        assert labels[0] == IGNORE_INDEX  # nothing before it to predict it from
        assert counted == sum(label != IGNORE_INDEX for label in labels)
        positions = {start + i for i, label in enumerate(labels) if label != IGNORE_INDEX}
        # Only what the whole conversation trains, each token once.
        assert all(whole.labels[p] != IGNORE_INDEX for p in positions) and not positions & trained
        trained |= positions
        if over and policy["long_conversations"] == "split" and positions:
            assert labels[-1] != IGNORE_INDEX  # a split sample ends with (a cut of) a reply
    if not over:
        assert rows["input_ids"] == [whole.input_ids] and rows["labels"] == [whole.labels]
    elif policy["long_conversations"] == "truncate":
        budget = policy["max_length"]
        assert rows["input_ids"] == [whole.input_ids[:budget]] and rows["labels"] == [whole.labels[:budget]]
        # A cut inside a reply: the last kept token is a target (the old bugs masked it or shifted the labels).
        assert (rows["labels"][0][-1] != IGNORE_INDEX) == (whole.labels[budget - 1] != IGNORE_INDEX)
    elif rows["tokens_cut"][0] == 0:  # split without a cut: every reply token trained exactly once
        assert trained == {p for p, label in enumerate(whole.labels) if label != IGNORE_INDEX}


@settings(max_examples=100, deadline=None)
@given(messages=conversations, data=st.data())
def test_truncate_with_the_cut_inside_a_reply_trains_up_to_the_cut(messages, data):
    """max_length placed strictly inside a reply's tokens: the kept part of that reply is all targets, to the end."""
    whole = encode_turns(TOKENIZER, messages, False)
    first, end = data.draw(st.sampled_from(whole.replies))  # every conversation drawn has a reply (message 2)
    max_length = data.draw(st.integers(max(first + 1, 8), max(end - 1, 8)))
    policy = {"max_length": max_length, "long_conversations": "truncate", "reply_share": 0.5, "mask_history": False}
    [labels] = encode(messages, policy)["labels"]
    kept = min(end, max_length)
    assert labels[first:kept] == whole.input_ids[first:kept] and labels[-1] != IGNORE_INDEX
