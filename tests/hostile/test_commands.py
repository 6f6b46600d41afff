"""`eval`, `plot`, `generate` and `train` on inputs that used to pass silently or end in a traceback: empty data,
records without a location, output paths that are folders, damaged run files, a ChatML fallback not saved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from .conftest import chat, clean_error, copy_model, dftune, train_argv, write_jsonl


def _eval(capsys, model: Path, data: Path, tmp_path: Path, *extra: str):
    return dftune(capsys, "eval", "--model", model, "--data", data, "--output", tmp_path / "results.jsonl", *extra)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"[]"])
def test_eval_on_empty_data_is_exit_1(content, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / ("held.json" if content == b"[]" else "held.jsonl")
    data.write_bytes(content)
    clean_error(_eval(capsys, tiny_model_dir, data, tmp_path), 1, f"no records in {data}", "nothing to evaluate")
    assert not (tmp_path / "results.jsonl").exists()  # no "accuracy 0.0% (0/0)" result file


BAD_RECORDS = [
    ("invalid JSON", ["{oops"], ":2: invalid JSON"),
    ("no assistant turn", [{"messages": [{"role": "user", "content": "q"}]}], ":2: no assistant turn"),
    ("reply not last", [{"messages": [*chat()["messages"], {"role": "user", "content": "and?"}]}],
     ":2: the last message must be the reference assistant reply"),
    ("unknown role", [chat(user="customer")], ":2: unknown role: 'customer' in message 0"),
]  # fmt: skip


@pytest.mark.parametrize("case, records, fragment", BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS])
def test_eval_record_errors_carry_file_and_line(case, records, fragment, tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "held.jsonl", [chat(), *records])
    clean_error(_eval(capsys, tiny_model_dir, data, tmp_path), 2, f"{data}{fragment}", "fix the record")


@pytest.mark.parametrize("flag, value", [("--batch_size", "0"), ("--max_new_tokens", "-1"), ("--limit", "0")])
def test_eval_numbers_must_be_positive(flag, value, tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "held.jsonl", [chat()])
    clean_error(_eval(capsys, tiny_model_dir, data, tmp_path, flag, value), 2, flag, "must be 1 or more")


def test_eval_output_into_a_folder_is_refused_before_loading(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "held.jsonl", [chat()])
    (tmp_path / "results.jsonl").mkdir()
    clean_error(_eval(capsys, tiny_model_dir, data, tmp_path), 2, "--output", "is a folder; give a file path")


@pytest.mark.parametrize("flag, value, fragment", [("--max_new_tokens", "0", "must be 1 or more"),
                                                   ("--temperature", "-1", "must be 0 or more"),
                                                   ("--temperature", "nan", "must be a finite number, 0 or more")])
def test_generate_numbers_that_make_no_sense(flag, value, fragment, tiny_model_dir, capsys):
    clean_error(dftune(capsys, "generate", "--model", tiny_model_dir, "--prompt", "hi", flag, value), 2, flag, fragment)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 2-step run (its trainer_state.json is what `plot` reads)."""
    from dftune.cli.main import main

    root = tmp_path_factory.mktemp("plotted")
    data = write_jsonl(root / "chat.jsonl", [chat(f"{i}?", str(i)) for i in range(8)])
    assert main(train_argv(tiny_model_dir, data, root / "run", "--save_strategy", "no")) == 0
    return root / "run"


def _damaged_state(run_dir: Path, tmp_path: Path, text: str) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "trainer_state.json").write_text(text)
    return copy


@pytest.mark.parametrize("case, text, fragment", [
    ("truncated", None, "is damaged (JSONDecodeError"),
    ("no log_history", '{"global_step": 2}', "is damaged (KeyError"),
    ("log_history not a list", '{"log_history": 3}', "log_history is not a list of log entries"),
    ("not UTF-8", "\udcff", "is damaged (UnicodeDecodeError"),
])  # fmt: skip
def test_plot_names_a_damaged_trainer_state(case, text, fragment, run_dir, tmp_path, capsys):
    if text is None:
        text = (run_dir / "trainer_state.json").read_text()[:100]
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    state = copy / "trainer_state.json"
    state.write_bytes(text.encode("utf-8", "surrogateescape"))
    clean_error(dftune(capsys, "plot", copy, "--output", tmp_path / "c.png"), 2, f"{state}", fragment,
                "plot a checkpoint-N folder")


def test_plot_output_an_existing_folder(run_dir, tmp_path, capsys):
    (tmp_path / "c.png").mkdir()
    clean_error(dftune(capsys, "plot", run_dir, "--output", tmp_path / "c.png"), 2,
                f"--output {tmp_path / 'c.png'} is a folder", "c.png/curves.png")


def test_plot_of_a_folder_without_a_run(tmp_path, capsys):
    clean_error(dftune(capsys, "plot", tmp_path, "--output", tmp_path / "c.png"), 2, "no trainer_state.json here")


def test_a_chatml_fallback_is_saved_with_the_tokenizer(tiny_model_dir, data_file, tmp_path, capsys):
    """A tokenizer without a template trains on ChatML; the saved one carries it, so `generate` prompts alike."""
    model = copy_model(tiny_model_dir, tmp_path / "bare")
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    assert not AutoTokenizer.from_pretrained(model).chat_template
    out = tmp_path / "out"
    assert dftune(capsys, *train_argv(model, data_file, out, "--save_strategy", "no")).code == 0
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template and "<|im_start|>" in saved.chat_template
    assert dftune(capsys, "generate", "--model", out, "--prompt", "1 + 1?", "--max_new_tokens", "2").code == 0


def test_zero_steps_stop_before_the_model_loads(tiny_model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "out"
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, data_file, out, "--num_train_epochs", "0", steps=-1)), 2,
                "num_train_epochs 0.0 with no max_steps would train zero steps")
    assert not out.exists()  # no untrained model saved with exit 0
