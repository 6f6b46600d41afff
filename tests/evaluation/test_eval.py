"""`dftune eval`: extractors on hand-written replies, the 95% interval, and the command end to end."""

from __future__ import annotations

import json

import pytest

from dftune.cli.main import main
from dftune.evaluation import EXTRACTORS, wilson_interval


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("exact", "  46 \n", "46"),
        ("last_number", "First 12 + 34 = 46, so the answer is 46.", "46"),
        ("last_number", "It costs 1,200.0 dollars", "1200"),
        ("last_number", "The change is -3", "-3"),
        ("last_number", "no digits here", ""),
        ("boxed", r"so \boxed{\frac{1}{2}} and \boxed{42}", "42"),
        ("boxed", r"the answer is \boxed{x^{2} + 1}", "x^{2} + 1"),
        ("boxed", r"unbalanced \boxed{3", ""),
        ("boxed", "no box", ""),
    ],
)
def test_extractors(name, text, expected):
    assert EXTRACTORS[name](text) == expected


def test_wilson_interval():
    """Hand values: 8/10 -> [0.490, 0.943]; 0/20 -> [0, 0.161]; every interval contains its proportion."""
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and round(high, 3) == 0.161
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_eval_command_writes_per_record_results(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "held_out.jsonl"
    records = [{"messages": [{"role": "user", "content": f"{a} + 1?"}, {"role": "assistant", "content": str(a + 1)}]}
               for a in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    output = tmp_path / "results.jsonl"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--extractor", "last_number",
                 "--max_new_tokens", "4", "--output", str(output)]) == 0
    assert "95% CI" in capsys.readouterr().out
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["reference"] for r in rows] == [str(a + 1) for a in range(5)]
    assert {"prompt", "reply", "extracted", "correct"} <= set(rows[0])


def test_eval_rejects_records_without_a_reference(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"},
                                             {"role": "user", "content": "?"}]}) + "\n", encoding="utf-8")
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data)]) == 2
    assert "last message must be the reference" in capsys.readouterr().err
