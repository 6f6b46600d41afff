"""How a prompt is cut to leave its reply room, for stage sft (`fit`, `long_conversations: split`, a turn longer than
max_length) and stage dpo (`fit_preference`), against one reference written from the rule as an optimisation, over
many lengths and limits (hypothesis picks them): the prompt is as long as it can be, at least its generation header
(dpo) or one token (sft), at most max_length - 1, while the (longer) reply keeps min(its length,
ceil(reply_share * max_length)) tokens; the reply keeps its start. For dpo also: replies at most
max_completion_length, the prompt at most max_prompt_length, its end (keep_end) or its start (keep_start) kept with
its header, a pair dropped only when the header alone fills max_length, tokens_cut counting every token cut."""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dftune.data.encode import IGNORE_INDEX, Turns, encode_turns
from dftune.data.lengths import FittedPair, PreferenceLimits, fit, fit_preference
from dftune.models.presets import build_tokenizer

TOKENIZER = build_tokenizer()  # byte-level ChatML: one token per character of content

# Lengths the size of the limits, so every edge (a header that fills max_length, one reply token left) is met.
lengths = st.integers(1, 14)
limits = st.builds(
    PreferenceLimits,
    max_length=st.none() | st.integers(1, 24),
    max_prompt_length=st.none() | lengths,
    max_completion_length=st.none() | lengths,
    truncation_mode=st.sampled_from(["keep_end", "keep_start"]),
    reply_share=st.floats(0.05, 0.95),
)


def prompt_kept(room: int, longest: int, least: int, max_length: int, reply_share: float) -> int:
    """The longest prompt p in [least, min(room, max_length - 1)] that leaves the longer reply min(its length,
    ceil(reply_share * max_length)) tokens (least if none does)."""
    share = math.ceil(reply_share * max_length)
    candidates = [p for p in range(least, min(room, max_length - 1) + 1) if max_length - p >= min(longest, share)]
    return max(candidates, default=least)


@settings(max_examples=300, deadline=None)  # no time limit per example: CI machines are shared
@given(prompt=st.integers(1, 30), reply=st.integers(1, 40), max_length=st.integers(2, 50),
       reply_share=st.floats(0.05, 0.99))  # fmt: skip
def test_a_turn_longer_than_max_length_is_cut_by_the_rule(prompt, reply, max_length, reply_share):
    """Stage sft, one user turn and a reply that do not fit together: one sample, its prompt cut from the left."""
    messages = [{"role": "user", "content": "q" * prompt}, {"role": "assistant", "content": "a" * reply}]
    turns = encode_turns(TOKENIZER, messages, False, "text")
    (first, end), = turns.replies
    assume(end > max_length)  # the reply's turn does not fit: `_cut` decides
    pieces = fit(turns, max_length, mode="split", reply_share=reply_share)
    kept = prompt_kept(first, end - first, 1, max_length, reply_share)
    answer = min(end - first, max_length - kept)
    assert pieces.samples == [(turns.input_ids[first - kept:first + answer],
                               [IGNORE_INDEX] + turns.labels[first - kept + 1:first + answer])]  # fmt: skip
    assert pieces.tokens_cut == (first - kept) + (end - first - answer)


def reference(prompt: list[int], chosen: list[int], rejected: list[int], header: int,
              limits: PreferenceLimits) -> FittedPair | None:  # fmt: skip
    """`fit_preference` from the rule: caps first, then `prompt_kept`, the replies cut to max_length - p."""
    cap = limits.max_completion_length or max(len(chosen), len(rejected))
    replies = [chosen[:cap], rejected[:cap]]
    header = min(header, len(prompt))
    room = min(len(prompt), limits.max_prompt_length or len(prompt))
    least = min(max(header, 1), room)
    size = room
    if limits.max_length is not None:
        if least >= limits.max_length:
            return None
        longest = max(len(replies[0]), len(replies[1]))
        if room + longest > limits.max_length:  # something more must go
            size = prompt_kept(room, longest, least, limits.max_length, limits.reply_share)
        replies = [reply[: limits.max_length - size] for reply in replies]
    if limits.truncation_mode == "keep_end":
        kept = prompt[len(prompt) - size:]
    else:  # the start, then the header
        tail = min(header, size)
        kept = prompt[: size - tail] + prompt[len(prompt) - tail:]
    total = len(prompt) + len(chosen) + len(rejected)
    return FittedPair(kept, replies[0], replies[1], total - len(kept) - len(replies[0]) - len(replies[1]))


@settings(max_examples=1000, deadline=None)  # no time limit per example: CI machines are shared
@given(sizes=st.tuples(lengths, lengths, lengths), header=st.integers(0, 15), limits=limits)
def test_fit_preference_matches_the_rule(sizes, header, limits):
    # Distinct tokens: each id says where it came from, so a wrong slice cannot match by chance.
    prompt, chosen, rejected = ([1000 * (k + 1) + i for i in range(n)] for k, n in enumerate(sizes))
    fitted, expected = fit_preference(prompt, chosen, rejected, header, limits), reference(
        prompt, chosen, rejected, header, limits)
    assert fitted == expected
    if fitted is not None and limits.max_length is not None:
        assert len(fitted.prompt) + max(len(fitted.chosen), len(fitted.rejected)) <= limits.max_length
        assert fitted.prompt[len(fitted.prompt) - min(header, len(fitted.prompt)):] == prompt[
            len(prompt) - min(header, len(fitted.prompt)):]  # the generation header stays


def test_a_prompt_that_fills_the_limit_exactly():
    """The edges the review named: a header of exactly max_length is dropped, one token less keeps one reply token;
    a pair that fits exactly is not cut at all."""
    header_only = PreferenceLimits(max_length=4)
    assert fit_preference([1, 2, 3, 4], [5, 6], [7], 4, header_only) is None
    kept = fit_preference([1, 2, 3], [5, 6], [7], 3, header_only)
    assert kept == FittedPair([1, 2, 3], [5], [7], 1)
    exact = fit_preference([1, 2], [5, 6], [7], 1, header_only)
    assert exact == FittedPair([1, 2], [5, 6], [7], 0)


def test_fit_keeps_a_conversation_of_exactly_max_length_and_its_defaults_are_split_and_half():
    messages = [{"role": "user", "content": "q" * 12}, {"role": "assistant", "content": "a" * 30}]
    turns = encode_turns(TOKENIZER, messages, False, "text")
    whole = len(turns.input_ids)
    assert fit(turns, whole).samples == [(turns.input_ids, turns.labels)]  # nothing cut, the trailing newline kept
    short = whole - 10  # the reply's turn does not fit: `_cut`, where reply_share decides
    assert fit(turns, short) == fit(turns, short, mode="split", reply_share=0.5)
    assert fit(turns, short) != fit(turns, short, mode="split", reply_share=0.9)


def synthetic_turns(turns: list[tuple[int, int]], trailing: int) -> Turns:
    """A conversation of (prompt, reply) token counts, each token id its position, replies labelled; `trailing`
    unlabelled tokens after the last reply (a template's newline)."""
    ids, labels, boundaries, replies = [], [], [0], []
    for prompt, reply in turns:
        ids += range(len(ids), len(ids) + prompt)
        labels += [IGNORE_INDEX] * prompt
        first = len(ids)
        ids += range(first, first + reply)
        labels += range(first, first + reply)
        replies.append((first, len(ids)))
        boundaries.append(len(ids))
    ids += range(len(ids), len(ids) + trailing)
    return Turns(ids, labels + [IGNORE_INDEX] * trailing, boundaries[:-1] if not trailing else boundaries, replies)


@settings(max_examples=500, deadline=None)  # no time limit per example: CI machines are shared
@given(turns=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=5),
       trailing=st.integers(0, 1), max_length=st.integers(2, 24), reply_share=st.floats(0.05, 0.95))  # fmt: skip
def test_split_samples_keep_the_most_context_and_replies_that_fit(turns, trailing, max_length, reply_share):
    """Stage sft's `long_conversations: split` over many conversations: each sample is a slice within max_length;
    one whose replies fit whole ends at a reply's end, starts at the earliest turn boundary that fits (one boundary
    earlier would not) and holds every following reply that fits (the next would not); a reply whose own turn does
    not fit is cut by the rule; every reply is trained once, in order; tokens_cut sums what the cuts dropped."""
    conversation = synthetic_turns(turns, trailing)
    pieces = fit(conversation, max_length, mode="split", reply_share=reply_share)
    if len(conversation.input_ids) <= max_length:
        assert pieces.samples == [(conversation.input_ids, conversation.labels)] and pieces.tokens_cut == 0
        return
    ends = [end for _, end in conversation.replies]
    trained, cut, next_reply = 0, 0, 0
    for ids, labels in pieces.samples:
        start, stop = ids[0], ids[-1] + 1
        assert ids == list(range(start, stop)) and len(ids) <= max_length
        first, end = conversation.replies[next_reply]
        own = max(b for b in conversation.boundaries if b < first)
        if end - own > max_length:  # its own turn does not fit: the rule of `_cut`
            kept = prompt_kept(first - own, end - first, 1, max_length, reply_share)
            assert (start, stop) == (first - kept, first + min(end - first, max_length - kept))
            cut += (first - own - kept) + (end - stop)
            next_reply += 1
        else:
            earlier = [b for b in conversation.boundaries if b < start]
            assert start in conversation.boundaries and (not earlier or end - max(earlier) > max_length)
            assert stop in ends  # it ends with a reply's last token
            next_reply = ends.index(stop) + 1
            assert next_reply == len(ends) or ends[next_reply] - start > max_length
        expected = [IGNORE_INDEX if p < trained or p == start else conversation.labels[p] for p in range(start, stop)]
        assert labels == expected
        trained = stop
    assert next_reply == len(ends) and pieces.tokens_cut == cut


@settings(deadline=None)
@given(size=st.integers(1, 30), max_length=st.integers(1, 30))
def test_truncate_keeps_the_first_max_length_tokens(size, max_length):
    conversation = synthetic_turns([(size, 1)], 0)
    pieces = fit(conversation, max_length, mode="truncate", reply_share=0.5)
    total = len(conversation.input_ids)
    assert pieces.samples == [(conversation.input_ids[:max_length], conversation.labels[:max_length])]
    assert pieces.tokens_cut == max(0, total - max_length)
