"""Where commands write: never over an input (data, model, adapter, base) nor into a folder holding one, never into
`/`, home or the working directory, never through a symbolic link; files written whole (temp name, then rename);
one run per output_dir (a lock naming its holder; a stale one taken over). Each refused case checks that the
user's files are byte-for-byte unchanged."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import processes
import pytest

from dftune.outputs import replaced, write_text
from dftune.runtime.run_lock import LOCK_FILE, run_lock

from .conftest import chat, clean_error, copy_model, dftune, hashes, train_argv, write_jsonl


def test_data_check_report_over_its_data(data_file, capsys):
    before = hashes(data_file)
    clean_error(dftune(capsys, "data", "check", data_file, "--report", data_file), 2,
                f"--report {data_file} is one of this command's inputs", "choose another path")
    assert hashes(data_file) == before


def test_eval_output_over_its_data(tiny_model_dir, data_file, capsys):
    before = hashes(data_file, tiny_model_dir)
    clean_error(dftune(capsys, "eval", "--model", tiny_model_dir, "--data", data_file, "--output", data_file), 2,
                f"--output {data_file} is one of this command's inputs")
    assert hashes(data_file, tiny_model_dir) == before


def test_init_model_over_a_finished_model(tiny_model_dir, tmp_path, capsys):
    model = copy_model(tiny_model_dir, tmp_path / "trained")
    before = hashes(model)
    clean_error(dftune(capsys, "init-model", "--preset", "tiny-llama", "--output_dir", model), 2,
                f"--output_dir {model} already holds a model (config.json, model.safetensors)", "choose a new")
    assert hashes(model) == before


@pytest.mark.parametrize("into", ["base", "adapter"])
def test_merge_lora_over_its_inputs(into, tiny_model_dir, tmp_path, capsys):
    base = copy_model(tiny_model_dir, tmp_path / "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    before = hashes(base, adapter)
    target = base if into == "base" else adapter
    clean_error(dftune(capsys, "merge-lora", "--base", base, "--adapter", adapter, "--output_dir", target), 2,
                f"--output_dir {target} is one of this command's inputs")
    assert hashes(base, adapter) == before


@pytest.mark.parametrize("where, fragment", [("/", "is the filesystem root"), ("~", "is your home folder"),
                                             (".", "is the working directory itself")])
def test_train_into_root_home_or_cwd(where, fragment, tiny_model_dir, data_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listing = sorted(os.listdir(Path(where).expanduser()))
    shown = Path.home() if where == "~" else where  # transformers expands ~ itself
    argv = train_argv(tiny_model_dir, data_file, Path(where), "--overwrite_output_dir", "true")
    clean_error(dftune(capsys, *argv), 2, f"output_dir {shown} {fragment}")
    assert sorted(os.listdir(Path(where).expanduser())) == listing  # no lock file, no model, nothing deleted


def test_train_into_the_data_folder(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    data = write_jsonl(folder / "chat.jsonl", [chat(f"{i}?", str(i)) for i in range(8)])
    before = hashes(folder)
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, folder, folder)), 2,
                f"output_dir {folder} is one of this command's inputs")
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, data, folder)), 2,
                f"output_dir {folder} holds this command's input {data}", "choose a folder of its own")
    assert hashes(folder) == before


def test_train_output_dir_under_the_model(tiny_model_dir, data_file, tmp_path, capsys):
    """The model folder is an input: training into it would replace the weights being read."""
    model = copy_model(tiny_model_dir, tmp_path / "model")
    before = hashes(model)
    clean_error(dftune(capsys, *train_argv(model, data_file, model, "--overwrite_output_dir", "true")), 2,
                f"output_dir {model} is one of this command's inputs")
    assert hashes(model) == before


def test_a_symbolic_link_in_output_dir_is_not_written_through(tiny_model_dir, data_file, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"mine": true}')
    out = tmp_path / "out"
    out.mkdir()
    (out / "data_report.json").symlink_to("../elsewhere.json")
    clean_error(dftune(capsys, *train_argv(tiny_model_dir, data_file, out)), 2,
                f"holds a symbolic link, {out / 'data_report.json'} -> ../elsewhere.json", "remove the link")
    assert elsewhere.read_text() == '{"mine": true}'


def test_a_report_path_that_is_a_link_replaces_the_link(data_file, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("keep")
    link = tmp_path / "report.json"
    link.symlink_to(elsewhere)
    assert dftune(capsys, "data", "check", data_file, "--report", link).code == 0
    assert elsewhere.read_text() == "keep" and not link.is_symlink() and json.loads(link.read_text())["total"] == 16


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "report.json", "old")
    with pytest.raises(ZeroDivisionError), replaced(target) as tmp:
        tmp.write_text("half")
        1 / 0
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]


def test_plot_output_must_be_a_png(data_file, tmp_path, capsys):
    before = hashes(data_file)
    clean_error(dftune(capsys, "plot", tmp_path, "--output", data_file), 2, f"--output {data_file}: a plot is an "
                "image", f"e.g. {data_file.with_suffix('.png')}")
    assert hashes(data_file) == before


def test_a_second_run_in_a_locked_output_dir_names_the_holder(tiny_model_dir, data_file, tmp_path, capsys):
    """Run A (another process) holds the lock while its folder is still empty: run B stops before any check."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from dftune.runtime.run_lock import "
         "run_lock\nwith run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))", str(out),
         str(processes.scaled(60))],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        clean_error(dftune(capsys, *train_argv(tiny_model_dir, data_file, out, "--resume_from_checkpoint", "auto")),
                    2, f"output_dir {out} is in use by another run: pid {holder.pid} on host {socket.gethostname()}",
                    "Wait for it to finish")
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(out) == [LOCK_FILE]  # B wrote nothing


def test_a_stale_lock_is_taken_over(tiny_model_dir, data_file, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 4194304, "host": "gone", "started": 0}))
    with caplog.at_level(logging.INFO):
        assert dftune(capsys, *train_argv(tiny_model_dir, data_file, out, "--save_strategy", "no")).code == 0
    assert caplog.text.count("taking over the lock of pid 4194304 on host gone") == 1
    assert (out / "model.safetensors").is_file() and (out / LOCK_FILE).read_text() == ""  # released at the end


def test_the_lock_is_held_while_training(tmp_path):
    with run_lock(tmp_path / "out"):
        with pytest.raises(Exception, match=f"is in use by another run: pid {os.getpid()}"):
            with run_lock(tmp_path / "out"):
                pass
    with run_lock(tmp_path / "out"):  # released: taken again
        pass
