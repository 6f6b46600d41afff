"""Damaged files inside a complete checkpoint or a model folder: `auto` falls back to the previous intact
checkpoint (and the resumed run ends with the uninterrupted run's weights); a damaged checkpoint named explicitly,
and a damaged or missing model for train, eval, generate and merge-lora, are errors naming the file. A pickle of
something other than weights counts as damage; a checkpoint still being written is named as such."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dftune.cli.main import main
from dftune.runtime.checkpoints import COMPLETE_MARKER, checkpoint_problem, mark_complete
from dftune.runtime.run_lock import run_lock

from .conftest import chat, clean_error, copy_model, dftune, train_argv, truncate, write_jsonl

CHECKPOINT_FILES = ["optimizer.pt", "model.safetensors", "scheduler.pt", "trainer_state.json", "rng_state.pth"]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A 4-step run with complete checkpoints at steps 2 and 4: (its output_dir, its data, its argv)."""
    root = tmp_path_factory.mktemp("finished")
    data = write_jsonl(root / "chat.jsonl", [chat(f"{i} + {i}?", str(2 * i)) for i in range(16)])
    out = root / "run"
    argv = train_argv(tiny_model_dir, data, out, "--save_steps", "2", "--seed", "1", steps=4)
    assert main(argv) == 0
    assert (out / "checkpoint-2" / COMPLETE_MARKER).is_file() and (out / "checkpoint-4" / COMPLETE_MARKER).is_file()
    return out, data, argv


def _copy_run(finished_run, tmp_path: Path) -> tuple[Path, list[str]]:
    out, _, argv = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy, [str(copy) if a == str(out) else a for a in argv]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_auto_resume_falls_back_past_a_damaged_file(name, finished_run, tmp_path, capsys, caplog):
    out, argv = _copy_run(finished_run, tmp_path)
    truncate(out / "checkpoint-4" / name)
    with caplog.at_level(logging.INFO):
        outcome = dftune(capsys, *argv, "--resume_from_checkpoint", "auto")
    assert outcome.code == 0, outcome.text[-3000:]
    assert f"skipping damaged checkpoint {out / 'checkpoint-4'}: {name}" in caplog.text
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.text
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(finished_run[0] / "model.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)  # steps 3-4 retrained exactly


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_damaged_checkpoint_named_explicitly_is_refused(name, finished_run, tmp_path, capsys):
    out, argv = _copy_run(finished_run, tmp_path)
    truncate(out / "checkpoint-4" / name)
    outcome = dftune(capsys, *argv, "--resume_from_checkpoint", out / "checkpoint-4")
    clean_error(outcome, 2, f"{out / 'checkpoint-4'} is damaged: {name}", "resume from an older checkpoint")


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(finished_run, tmp_path, capsys):
    out, argv = _copy_run(finished_run, tmp_path)
    for step in (2, 4):
        truncate(out / f"checkpoint-{step}" / "optimizer.pt")
    clean_error(dftune(capsys, *argv, "--resume_from_checkpoint", "auto"), 2,
                f"every complete checkpoint in {out} is damaged", "checkpoint-4: optimizer.pt", "to start fresh")


def _adapter(model_dir: Path, to: Path) -> Path:
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=2, target_modules="all-linear"))
    model.save_pretrained(to)
    return to


def _damaged_model(tiny_model_dir: Path, tmp_path: Path, name: str = "model.safetensors", keep: float = 0.5) -> Path:
    model = copy_model(tiny_model_dir, tmp_path / "model")
    truncate(model / name, keep)
    return model


def _commands(model: Path, tmp_path: Path, data: Path, adapter: Path | None = None) -> dict[str, list]:
    return {
        "train": train_argv(model, data, tmp_path / "out"),
        "eval": ["eval", "--model", model, "--data", data, "--output", tmp_path / "eval.jsonl"],
        "generate": ["generate", "--model", model, "--prompt", "hi"],
        "merge-lora": ["merge-lora", "--base", model, "--adapter", adapter or model, "--output_dir", tmp_path / "m"],
    }


@pytest.mark.parametrize("command", ["train", "eval", "generate", "merge-lora"])
@pytest.mark.parametrize("damage", ["half", "header only", "8 bytes"])
def test_a_truncated_model_is_named(command, damage, tiny_model_dir, data_file, tmp_path, capsys):
    keep = {"half": 0.5, "header only": 0.02, "8 bytes": 8 / 463712}[damage]
    model = _damaged_model(tiny_model_dir, tmp_path, keep=keep)
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter") if command == "merge-lora" else None
    outcome = dftune(capsys, *_commands(model, tmp_path, data_file, adapter)[command])
    clean_error(outcome, 2, f"{model / 'model.safetensors'} is", "copy or save the model again")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_a_truncated_json_file_of_the_model_is_named(name, tiny_model_dir, data_file, tmp_path, capsys):
    model = _damaged_model(tiny_model_dir, tmp_path, name)
    outcome = dftune(capsys, *_commands(model, tmp_path, data_file)["generate"])
    clean_error(outcome, 2, f"{model / name} is not valid JSON")


def test_a_truncated_adapter_is_named(tiny_model_dir, tmp_path, capsys):
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter")
    truncate(adapter / "adapter_model.safetensors")
    outcome = dftune(capsys, "merge-lora", "--base", tiny_model_dir, "--adapter", adapter, "--output_dir", tmp_path / "m")
    clean_error(outcome, 2, f"{adapter / 'adapter_model.safetensors'} is truncated")


@pytest.mark.parametrize("command", ["eval", "generate", "merge-lora"])
def test_a_missing_local_model_says_so(command, tiny_model_dir, data_file, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    outcome = dftune(capsys, *_commands(missing, tmp_path, data_file, tmp_path / "adapter")[command])
    clean_error(outcome, 2, f"{missing}: no such folder")


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_a_model_folder_without_weights_is_named(command, tiny_model_dir, data_file, tmp_path, capsys):
    model = copy_model(tiny_model_dir, tmp_path / "model")
    (model / "model.safetensors").unlink()
    clean_error(dftune(capsys, *_commands(model, tmp_path, data_file)[command]), 2, "holds no weights (*.safetensors)")


def _pickle_a_namespace(checkpoint: Path, name: str) -> None:
    """`name` replaced by a pickle holding a non-weights object (safe to refuse, never run), and the marker written
    again so its sizes match: only loading the pickle as the resume will tells it apart."""
    torch.save({"last_epoch": 1, "extra": argparse.Namespace(note="not weights")}, checkpoint / name)
    (checkpoint / COMPLETE_MARKER).unlink()
    mark_complete(checkpoint, int(checkpoint.name.split("-")[1]))
    assert checkpoint_problem(checkpoint) is not None and "argparse.Namespace" in checkpoint_problem(checkpoint)


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_non_weights_pickle_is_named_and_auto_falls_back(name, finished_run, tmp_path, capsys, caplog):
    out, argv = _copy_run(finished_run, tmp_path)
    _pickle_a_namespace(out / "checkpoint-4", name)
    clean_error(dftune(capsys, *argv, "--resume_from_checkpoint", out / "checkpoint-4"), 2,
                f"{out / 'checkpoint-4'} is damaged: {name} holds a pickled object that is not weights "
                "(argparse.Namespace)", "resume from an older checkpoint")
    with caplog.at_level(logging.INFO):
        outcome = dftune(capsys, *argv, "--resume_from_checkpoint", "auto")
    assert outcome.code == 0, outcome.text[-3000:]
    assert f"skipping damaged checkpoint {out / 'checkpoint-4'}: {name} holds a pickled object" in caplog.text
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(finished_run[0] / "model.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)  # steps 3-4 retrained exactly
    assert checkpoint_problem(out / "checkpoint-4") is None  # saved again whole, its old marker not in its sizes


def _being_written(finished_run, tmp_path: Path) -> Path:
    """checkpoint-4 as a killed or ongoing save leaves it: weights there, no tokenizer files yet, no marker."""
    out, _ = _copy_run(finished_run, tmp_path)
    checkpoint = out / "checkpoint-4"
    for path in [checkpoint / COMPLETE_MARKER, *checkpoint.glob("tokenizer*"), *checkpoint.glob("chat_template*")]:
        path.unlink()
    return checkpoint


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_a_checkpoint_its_run_is_still_writing_is_named(command, finished_run, tmp_path, capsys):
    checkpoint = _being_written(finished_run, tmp_path)
    argv = {"eval": ["eval", "--model", checkpoint, "--data", finished_run[1], "--output", tmp_path / "e.jsonl"],
            "generate": ["generate", "--model", checkpoint, "--prompt", "hi"]}[command]
    with run_lock(checkpoint.parent):  # the run that writes it: another open file, so flock sees it held
        clean_error(dftune(capsys, *argv), 2, f"--model {checkpoint} is still being written by the run in "
                    f"{checkpoint.parent} (pid {os.getpid()}", "give an earlier complete checkpoint")
    # Its run gone (killed mid-save): the missing tokenizer is named, not a tokenizers traceback.
    clean_error(dftune(capsys, *argv), 2, f"--model {checkpoint} holds no tokenizer", "give a complete checkpoint")
    assert not (tmp_path / "e.jsonl").exists()
