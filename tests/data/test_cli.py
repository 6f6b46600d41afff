"""`dftune data check`: exit codes, the table, token statistics and the JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def test_every_data_key_of_train_is_a_data_check_flag():
    """data check's flags come from the dataclasses: every DataArguments field, and stage dpo's keys that fit pairs
    (PreferenceLimits' other fields), each a key `train` reads under stage dpo."""
    from dataclasses import fields

    from dftune.config.data_args import DataArguments
    from dftune.data.lengths import PreferenceLimits
    from dftune.stages.keys import DpoArguments

    subparsers = argparse.ArgumentParser(prog="dftune").add_subparsers(dest="command", required=True)
    data_cmd.register(subparsers)
    check = subparsers.choices["data"]._subparsers._group_actions[0].choices["check"]
    flags = {option for action in check._actions for option in action.option_strings}
    expected = {f.name for f in fields(DataArguments)} | {f.name for f in fields(PreferenceLimits)}
    assert {f"--{name}" for name in expected} <= flags
    assert {f.name for f in fields(PreferenceLimits)} - {f.name for f in fields(DataArguments)} <= {
        f.name for f in fields(DpoArguments)}


LONG_CHAT = {"messages": [{"role": "user", "content": "x" * 80}, {"role": "assistant", "content": "y"}]}
LONE = {"conversations": [{"from": "gpt", "value": "A reply with no prompt."}]}


@pytest.fixture
def check_inputs(tmp_path, tokenizer):
    """A tokenizer folder, a training file, an eval file, a LLaMA-Factory folder and a chat template file."""
    tokenizer.save_pretrained(tmp_path / "tok")
    turns = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    write_jsonl(tmp_path / "a.jsonl", [chat(), LONG_CHAT, LONE, "{oops", turns])
    write_jsonl(tmp_path / "b.jsonl", [chat("q"), {"messages": "x"}])
    registry = tmp_path / "lf"
    registry.mkdir()
    (registry / "dataset_info.json").write_text(json.dumps({"chats": {"file_name": "chats.jsonl",
                                                                      "formatting": "sharegpt"}}))
    tool = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}]}
    write_jsonl(registry / "chats.jsonl", [LONE, tool, {"conversations": [{"from": "human", "value": "x" * 80},
                                                                           {"from": "gpt", "value": "y"}]}])
    (tmp_path / "zephyr.jinja").write_text(
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
    return tmp_path


CHECKS = {
    "split": ["a.jsonl", "--max_length", "40"],
    "truncate": ["a.jsonl", "--max_length", "40", "--long_conversations", "truncate"],
    "mask_history, max_samples": ["a.jsonl", "--mask_history", "--max_samples", "3"],
    "eval_files": ["a.jsonl", "--eval_files", "b.jsonl"],
    "dataset, no files": ["--dataset", "chats", "--dataset_dir", "lf", "--max_length", "40"],
    "chat_template": ["--data_files", "a.jsonl", "--chat_template", "zephyr.jinja", "--reply_share", "0.3",
                      "--max_length", "40"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(CHECKS))
def test_data_check_reports_what_train_reports(name, check_inputs, capsys, monkeypatch):
    """The same data keys give the same report from `data check` as from the data preparation `train` runs."""
    from dftune.data.prepare import prepare_datasets
    from dftune.run import parse_config
    from dftune.stages.common import with_template_keys
    from transformers import AutoTokenizer

    monkeypatch.chdir(check_inputs)
    flags = CHECKS[name]
    code = run(*flags, "--tokenizer", "tok", "--report", "check.json")
    capsys.readouterr()
    files = [] if flags[0].startswith("--") else ["--data_files", flags[0]]
    config = parse_config(["--stage", "sft", *files, *flags[len(files) // 2:]])
    tokenizer = with_template_keys(AutoTokenizer.from_pretrained("tok"), config.data, "tok")
    try:
        prepare_datasets(config.data, tokenizer, seed=0, report_path="train.json")
    except DftuneError as err:  # the report is written first
        assert "records are invalid" in str(err)
    check, train = (json.loads(Path(check_inputs / f).read_text()) for f in ("check.json", "train.json"))
    assert check == train and code == int(check["rejected"] > 0)
    reasons = {e["reason"] for e in check["errors"]}
    if name == "truncate":  # the long prompt leaves no reply token; split cuts the prompt and keeps it
        assert reasons == {"invalid JSON", "no assistant token within max_length"}
    if name == "dataset, no files":
        assert reasons == {"tool-call turn"} and check["kept"] == 2  # the lone reply is kept
    if name == "mask_history, max_samples":
        assert (check["total"], check["rejected"]) == (3, 0)
    if name == "eval_files":
        assert check["total"] == 7 and reasons == {"invalid JSON", "messages not a list"}


def test_stage_dpo_keys_fit_pairs_as_train_does(check_inputs, capsys):
    pair = {"prompt": "p" * 60, "chosen": "yes " * 10, "rejected": "no"}
    data = write_jsonl(check_inputs / "p.jsonl", [pair, pair])
    report = check_inputs / "p.json"
    flags = ["--max_length", "48", "--max_prompt_length", "30", "--max_completion_length", "8"]
    assert run(str(data), "--stage", "dpo", "--tokenizer", str(check_inputs / "tok"), *flags,
               "--report", str(report)) == 0
    assert json.loads(report.read_text())["lengths"]["p"]["over_length"] == 2
    with pytest.raises(DftuneError, match="apply to stage: dpo only"):
        run(str(data), "--max_prompt_length", "30")


def test_skip_policy_exits_0_while_records_are_left_and_no_data_is_an_error(check_inputs, capsys):
    data = str(check_inputs / "a.jsonl")
    assert run(data) == 1
    assert run(data, "--on_bad_record", "skip") == 0
    assert "1 invalid records" in capsys.readouterr().out
    with pytest.raises(DftuneError, match="no training data"):
        run()
    with pytest.raises(DftuneError, match="max_length.*ten"):
        run(data, "--tokenizer", str(check_inputs / "tok"), "--max_length", "ten")
