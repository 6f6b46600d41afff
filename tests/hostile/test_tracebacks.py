"""Inputs that used to end in a traceback: a lone surrogate in one record, a chat template Jinja refuses, `--seed -1`,
a run whose every record is rejected, run twice. Each is a message naming the file, record or key and the fix, with
the exit code of other user errors; for data, every record is counted and the file is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import chat, clean_error, copy_model, dftune, hashes, train_argv, write_jsonl

SURROGATE = '{"messages": [{"role": "user", "content": "a\\ud800b"}, {"role": "assistant", "content": "x"}]}'
"""A lone high surrogate, written as JSON writes it: valid JSON, but no UTF-8 writer takes the decoded str."""
WHERE = 'a lone surrogate, \\ud800 at character 1 of "a\\ud800b"'


def _with_surrogate(tmp_path: Path, suffix: str = ".jsonl") -> Path:
    """8 good records and, 9th, one with a lone surrogate (line 9, or index 8 of a JSON array)."""
    good = [chat(f"{i} + {i}?", str(2 * i)) for i in range(8)]
    if suffix == ".json":
        path = tmp_path / "data.json"
        path.write_text("[" + ", ".join([*map(json.dumps, good), SURROGATE]) + "]", encoding="utf-8")
        return path
    return write_jsonl(tmp_path / "data.jsonl", [*good, SURROGATE])


@pytest.mark.parametrize("suffix, location", [(".jsonl", ":9"), (".json", "[8]")])
@pytest.mark.parametrize("tokenizer", [False, True])
def test_data_check_counts_a_lone_surrogate_as_one_bad_record(suffix, location, tokenizer, tiny_model_dir, tmp_path,
                                                               capsys):
    data = _with_surrogate(tmp_path, suffix)
    before = hashes(data)
    report = tmp_path / "report.json"
    outcome = dftune(capsys, "data", "check", data, "--report", report,
                     *(["--tokenizer", tiny_model_dir] if tokenizer else []))
    assert outcome.code == 1, outcome.text[-3000:]
    assert f"{data}{location}: invalid Unicode ({WHERE}: half of a UTF-16 pair" in outcome.out
    assert "write the character itself, or both halves of its pair" in outcome.out
    assert f"| {data} | 9 | 8 | 1 | invalid Unicode: 1 |" in outcome.out  # every record counted
    saved = json.loads(report.read_text())
    assert (saved["total"], saved["kept"], saved["rejected"]) == (9, 8, 1)
    assert hashes(data) == before


def test_train_stops_on_a_lone_surrogate_naming_the_record(tiny_model_dir, tmp_path, capsys):
    data = _with_surrogate(tmp_path)
    before = hashes(data)
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, data, tmp_path / "out")), 2,
                f"{data}:9: invalid Unicode ({WHERE}", "set on_bad_record: skip")
    assert not (tmp_path / "out" / "model.safetensors").exists() and hashes(data) == before


def test_train_with_skip_trains_on_the_rest_of_a_file_with_a_lone_surrogate(tiny_model_dir, tmp_path, capsys):
    data = _with_surrogate(tmp_path)
    out = tmp_path / "out"
    outcome = dftune(capsys, *train_argv(tiny_model_dir, data, out, "--on_bad_record", "skip", "--save_strategy", "no"))
    assert outcome.code == 0, outcome.text[-3000:]
    report = json.loads((out / "data_report.json").read_text())
    assert (report["total"], report["kept"], report["rejected"]) == (9, 8, 1)
    assert report["errors"][0]["line"] == 9 and report["errors"][0]["reason"] == "invalid Unicode"
    assert (out / "model.safetensors").is_file()


def test_eval_names_a_record_with_a_lone_surrogate(tiny_model_dir, tmp_path, capsys):
    data = _with_surrogate(tmp_path)
    clean_error(dftune(capsys, "eval", "--model", tiny_model_dir, "--data", data, "--output", tmp_path / "r.jsonl"),
                2, f"{data}:9: invalid Unicode ({WHERE}", "fix the record or leave it out")
    assert not (tmp_path / "r.jsonl").exists()


def test_seed_minus_one_is_a_key_error(tiny_model_dir, data_file, tmp_path, capsys):
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, data_file, tmp_path / "out", "--seed", "-1")), 2,
                "command line: invalid configuration: seed must be in [0, 4294967295], got -1")
    assert not (tmp_path / "out").exists()


# (case, template, what the message names); each ends in a Jinja exception transformers does not catch
TEMPLATES = [
    ("sandbox refuses __class__", "{% for m in messages %}{{ m.__class__.__mro__ }}{% endfor %}",
     "SecurityError: access to attribute '__class__' of 'dict' object is unsafe"),
    ("sandbox refuses changing a list", "{% set _ = messages.append(1) %}",
     "SecurityError: access to attribute 'append' of 'list' object is unsafe"),
    ("syntax error", "{% for m in messages %}{{ m.content }", "(template line 1): TemplateSyntaxError: unexpected '}'"),
    ("raises by itself", "{{ raise_exception('this template takes no user turns') }}",
     "TemplateError: this template takes no user turns"),
]  # fmt: skip


@pytest.mark.parametrize("case, template, fragment", TEMPLATES, ids=[c[0] for c in TEMPLATES])
def test_a_chat_template_jinja_refuses_is_named_in_train(case, template, fragment, tiny_model_dir, data_file,
                                                         tmp_path, capsys):
    out = tmp_path / "out"
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, data_file, out, "--chat_template", template)), 2,
                "the chat template (the chat_template key's text) cannot render a conversation", fragment,
                "fix the template")
    jinja = tmp_path / "template.jinja"
    jinja.write_text(template)
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, data_file, out, "--chat_template", jinja)), 2,
                f"the chat template (chat_template file {jinja}) cannot render", fragment)
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("command", ["data check", "eval", "generate"])
def test_a_model_whose_chat_template_jinja_refuses_is_named(command, tiny_model_dir, data_file, tmp_path, capsys):
    model = copy_model(tiny_model_dir, tmp_path / "model")
    (model / "chat_template.jinja").write_text(TEMPLATES[0][1])
    flag = "--tokenizer" if command == "data check" else "--model"
    argv = {"data check": ["data", "check", data_file, "--tokenizer", model],
            "eval": ["eval", "--model", model, "--data", data_file, "--output", tmp_path / "r.jsonl"],
            "generate": ["generate", "--model", model, "--prompt", "hi"]}[command]
    clean_error(dftune(capsys, *argv), 2, f"the chat template (the tokenizer of {flag} {model}) cannot render",
                "SecurityError")


def test_a_run_whose_every_record_is_rejected_says_so_again(tiny_model_dir, tmp_path, capsys):
    """The tokenised result of such a run has no rows; it used to be cached and fail to load (IndexError) on the
    next run of the same data."""
    data = write_jsonl(tmp_path / "data.jsonl", [chat(f"{i}?", str(i)) for i in range(3)])
    user_only = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}"  # no reply
    for attempt in range(2):
        outcome = dftune(capsys, *train_argv(tiny_model_dir, data, tmp_path / f"out{attempt}", "--chat_template",
                                             user_only))  # fmt: skip
        clean_error(outcome, 2, "3 of 3 records are invalid", f"{data}:1: no assistant token")
