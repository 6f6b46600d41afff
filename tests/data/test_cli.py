"""`dftune data check`: exit codes, the table, token statistics and the JSON report."""

from __future__ import annotations

import argparse
import json

import pytest

from dftune.cli import data_cmd
from dftune.errors import DftuneError

from .conftest import chat, write_jsonl


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dftune")
    data_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "check", *argv])
    return args.func(args)


def test_all_valid_exits_0(tmp_path, capsys):
    data = write_jsonl(tmp_path / "a.jsonl", [chat(), {"prompt": "q", "completion": "a"}])
    assert run(str(data)) == 0
    assert f"| {data} | 2 | 2 | 0 | - |" in capsys.readouterr().out


def test_bad_records_exit_1_and_write_the_report(tmp_path, capsys, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    long = {"messages": [{"role": "user", "content": "x" * 80}, {"role": "assistant", "content": "y"}]}
    data = write_jsonl(tmp_path / "a.jsonl", [chat(), "{oops", long, chat("q" * 40)])
    report = tmp_path / "report.json"
    code = run(str(data), "--tokenizer", str(tmp_path / "tok"), "--max_length", "64", "--report", str(report))
    out = capsys.readouterr().out
    assert code == 1
    # Record 3's prompt is longer than max_length: it is cut from the left so its reply fits (long_conversations:
    # split, the default since issue 17), so only line 2 is rejected and the report counts the cut.
    assert f"{data}:2: invalid JSON" in out and f"{data}:3:" not in out
    assert "tokens per record: min 28, mean 65.3, p50 66, p95 102, max 102; truncated to 64: 2 of 3" in out
    saved = json.loads(report.read_text())
    assert set(saved) == {"total", "kept", "rejected", "files", "errors", "lengths"}
    assert (saved["total"], saved["kept"], saved["rejected"]) == (4, 3, 1)
    assert saved["files"][str(data)]["rejected"] == 1
    assert [(e["line"], e["reason"]) for e in saved["errors"]] == [(2, "invalid JSON")]
    assert saved["lengths"] == {"a": {"over_length": 2, "split": 0, "samples": 2, "tokens_cut": 38, "chars_clipped": 0}}


@pytest.mark.parametrize("flag", ["--max_length", "--show_labels"])
def test_token_flags_need_a_tokenizer(tmp_path, flag):
    data = write_jsonl(tmp_path / "a.jsonl", [chat()])
    with pytest.raises(DftuneError, match="--tokenizer"):
        run(str(data), flag, "8")


def test_show_labels_marks_the_trained_tokens_of_the_first_n_samples(tmp_path, capsys, tokenizer):
    """Brackets when stdout is not a terminal (pytest's capture): the replies and their end of turn, nothing else."""
    tokenizer.save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "a.jsonl", [chat("2 + 2?", "4"), chat("3 + 3?", "6"), chat("x", "y")])
    assert run(str(data), "--tokenizer", str(tmp_path / "tok"), "--show_labels", "2") == 0
    out = capsys.readouterr().out
    shown = out[out.index("--- sample 1 of 3"):]
    assert "--- sample 2 of 3" in shown and "sample 3 of 3" not in shown
    assert shown.count("[[") == 2 and "[[4<|im_end|>]]" in shown and "[[6<|im_end|>]]" in shown
    assert "2 + 2?" in shown and "[[2 + 2?" not in shown
    assert shown.count("trained (assistant replies, 1 special)") == 2


def test_preference_pairs_are_checked_with_stage_dpo(tmp_path, capsys, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    pair = {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}
    data = write_jsonl(tmp_path / "p.jsonl", [pair, {"prompt": "q", "chosen": "a"}, {**pair, "prompt": "x" * 80}])
    assert run(str(data), "--stage", "dpo") == 1  # without a tokenizer: the forms only
    out = capsys.readouterr().out
    assert f"| {data} | 3 | 2 | 1 |" in out and f"{data}:2:" in out and "rejected" in out
    code = run(str(data), "--stage", "dpo", "--tokenizer", str(tmp_path / "tok"), "--max_length", "32")
    out = capsys.readouterr().out
    assert code == 1 and f"{data}:3:" not in out  # a prompt over max_length is cut, not rejected
    short = write_jsonl(tmp_path / "short.jsonl", [pair])
    assert run(str(short), "--stage", "dpo", "--tokenizer", str(tmp_path / "tok"), "--max_length", "8") == 1
    assert f"{short}:1: no reply token within max_length" in capsys.readouterr().out  # the header alone fills it
    assert run(str(write_jsonl(tmp_path / "ok.jsonl", [pair, pair])), "--stage", "dpo") == 0
