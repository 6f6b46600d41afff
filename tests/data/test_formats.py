"""Normalisation of SFT and preference layouts to ChatML messages, and each rejection reason."""

from __future__ import annotations

import pytest

from dftune.data import InvalidRecord, normalize_messages, normalize_preference

U, A, S = "user", "assistant", "system"


def m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"messages": [m(S, "s"), m(U, "q"), m(A, "a"), m("tool", "t")]}, [m(S, "s"), m(U, "q"), m(A, "a"), m("tool", "t")]),
        (
            {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            [m(S, "s"), m(U, "q"), m(A, "a")],
        ),
        ({"messages": [m(U, "q"), {"role": A, "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, [m(U, "q"), m(A, "ab")]),
        ({"prompt": "q", "completion": "a"}, [m(U, "q"), m(A, "a")]),
        ({"prompt": [m(U, "q")], "completion": [m(A, "a")]}, [m(U, "q"), m(A, "a")]),
        ({"prompt": [], "completion": "a"}, [m(A, "a")]),
        ({"conversations": [{"from": "gpt", "value": "a"}]}, [m(A, "a")]),
        ({"system": "s", "messages": [m(A, "a")]}, [m(S, "s"), m(A, "a")]),
        ({"instruction": "do", "input": "this", "output": "done"}, [m(U, "do\n\nthis"), m(A, "done")]),
        ({"instruction": "do", "input": "", "output": "done"}, [m(U, "do"), m(A, "done")]),
        ({"input": "q", "output": "a"}, [m(U, "q"), m(A, "a")]),
        ({"system": "s", "input": "q", "output": "a", "extra": 3}, [m(S, "s"), m(U, "q"), m(A, "a")]),
    ],
)
def test_accepted_layouts(record, expected):
    assert normalize_messages(record) == expected


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([1, 2], "not an object"),
        ({"text": "q"}, "no messages"),
        ({"messages": []}, "no messages"),
        ({"messages": "q"}, "messages not a list"),
        ({"messages": ["q"]}, "message not an object"),
        ({"messages": [{"content": "q"}, m(A, "a")]}, "missing role"),
        ({"messages": [m("bot", "q"), m(A, "a")]}, "unknown role"),
        ({"messages": [m(U, "q"), {"role": A, "content": None}]}, "content not text"),
        ({"messages": [m(U, "q"), {"role": A, "content": [{"type": "image", "url": "x"}]}]}, "content not text"),
        ({"input": 3, "output": "a"}, "content not text"),
        ({"messages": [m(S, "s"), m(U, "q")]}, "no assistant turn"),
    ],
)
def test_rejection_reasons(record, reason):
    with pytest.raises(InvalidRecord) as info:
        normalize_messages(record)
    assert info.value.reason == reason


def test_preference_explicit_prompt_strings():
    assert normalize_preference({"prompt": "q", "chosen": "good", "rejected": "bad"}) == {
        "prompt": [m(U, "q")],
        "chosen": [m(A, "good")],
        "rejected": [m(A, "bad")],
    }


def test_preference_implicit_prompt_splits_at_first_difference():
    shared = [m(S, "s"), m(U, "q1"), m(A, "a1"), m(U, "q2")]
    record = {"chosen": [*shared, m(A, "good")], "rejected": [*shared, m(A, "bad"), m(U, "more"), m(A, "x")]}
    assert normalize_preference(record) == {
        "prompt": shared,
        "chosen": [m(A, "good")],
        "rejected": [m(A, "bad"), m(U, "more"), m(A, "x")],
    }


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("text", "not an object"),
        ({"prompt": "q", "chosen": "a"}, "no chosen/rejected"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "chosen equals rejected"),
        ({"chosen": [m(U, "q"), m(A, "a")], "rejected": [m(U, "q"), m(A, "a")]}, "chosen equals rejected"),
        ({"chosen": [m(A, "a")], "rejected": [m(A, "b")]}, "no prompt"),
        ({"chosen": [m(U, "q"), m(A, "a")], "rejected": [m(U, "other"), m(A, "a")]}, "prompt not before an assistant turn"),
        ({"chosen": [m(U, "q"), m(U, "x"), m(A, "a")], "rejected": [m(U, "q"), m(U, "y"), m(A, "a")]}, "prompt not before an assistant turn"),
        ({"prompt": [m(U, "q"), m(A, "a")], "chosen": "b", "rejected": "c"}, "prompt not before an assistant turn"),
        ({"prompt": "q", "chosen": [m(U, "b")], "rejected": "c"}, "no assistant turn"),
        ({"prompt": "q", "chosen": [{"role": "bot", "content": "b"}], "rejected": "c"}, "unknown role"),
    ],
)
def test_preference_rejections(record, reason):
    with pytest.raises(InvalidRecord) as info:
        normalize_preference(record)
    assert info.value.reason == reason
