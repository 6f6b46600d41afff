"""Reliability: exact resume after SIGKILL, complete-only checkpoints, the NaN guard, signals, hostile inputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import processes
import pytest
import torch
from safetensors.torch import load_file
from sgd_setup import synthetic_dataset
from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

from dftune.cli.main import main
from dftune.data.collate import DataCollatorForChat
from dftune.runtime.checkpoints import COMPLETE_MARKER, last_complete_checkpoint, rotate_checkpoints
from dftune.runtime.objective_trainer import ObjectiveTrainer


@pytest.fixture
def one_thread():
    """The killed run is a 1-thread subprocess: run the in-process reference the same way, for equal sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def chat_file(tmp_path: Path, n: int = 64) -> str:
    lines = [json.dumps({"messages": [{"role": "user", "content": f"{i} + {i}?"},
                                      {"role": "assistant", "content": str(2 * i)}]}) for i in range(n)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def train_args(model_dir, data, out, max_steps: int) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--data_files", data, "--output_dir", str(out),
            "--max_steps", str(max_steps), "--save_steps", "2", "--save_total_limit", "2", "--logging_steps", "1",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--report_to", "none",
            "--use_cpu", "true", "--seed", "3"]  # fmt: skip


def start_training(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dftune", "train", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + processes.scaled(timeout)
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, (f"training hung: {path} did not appear within {timeout:g} s x "
                                             f"{processes.FACTOR_ENV}={processes.timeout_factor():g}")
        time.sleep(0.005)


def losses(out: Path) -> dict[int, float]:
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in log if "loss" in e}


@pytest.mark.slow
def test_sigkill_then_auto_resume_equals_uninterrupted_run(tiny_model_dir, tmp_path, one_thread, caplog):
    data, steps = chat_file(tmp_path), 40
    reference = tmp_path / "reference"
    assert main(["train", *train_args(tiny_model_dir, data, reference, steps)]) == 0

    out = tmp_path / "killed"
    proc = start_training(train_args(tiny_model_dir, data, out, steps))
    wait_for(out / "checkpoint-4" / COMPLETE_MARKER, proc)  # the second checkpoint
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "model.safetensors").exists()
    resume_from = last_complete_checkpoint(out)
    # A save cut short after the newest complete one: the resume must not load it.
    planted = out / "checkpoint-39"
    planted.mkdir()
    (planted / "trainer_state.json").write_text("{ truncated", encoding="utf-8")

    with caplog.at_level(logging.INFO):
        assert main(["train", *train_args(tiny_model_dir, data, out, steps), "--resume_from_checkpoint", "auto"]) == 0
    assert f"skipping incomplete checkpoint {planted}" in caplog.text
    assert f"resuming from {resume_from}" in caplog.text
    start = int(resume_from.name.split("-")[1])
    expected, got = losses(reference), losses(out)
    assert got.keys() == expected.keys() and start < steps
    assert [got[s] for s in sorted(got) if s > start] == pytest.approx([expected[s] for s in sorted(got) if s > start],
                                                                       rel=1e-6, abs=0)
    final, want = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    for name, tensor in want.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    assert not planted.exists() or not (planted / COMPLETE_MARKER).exists()
    kept = sorted(p.name for p in out.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists())
    assert kept == ["checkpoint-38", "checkpoint-40"]  # save_total_limit counts complete checkpoints


@pytest.mark.slow
def test_sigterm_saves_a_loadable_checkpoint_and_exits(tiny_model_dir, tmp_path):
    out = tmp_path / "term"
    proc = start_training(train_args(tiny_model_dir, chat_file(tmp_path), out, 100_000))
    wait_for(out / "checkpoint-2" / COMPLETE_MARKER, proc)  # training (and the handler) is running
    proc.send_signal(signal.SIGTERM)
    _, err = processes.communicate(proc, step="training after SIGTERM (the handler saves, then exits)", timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "--resume_from_checkpoint auto" in err and "Traceback" not in err
    last = last_complete_checkpoint(out)
    assert last is not None
    _, loading = AutoModelForCausalLM.from_pretrained(last, output_loading_info=True)
    assert not any(loading.values()), loading  # every weight found, none unexpected or of the wrong shape
    saved, initial = load_file(last / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(saved[name], initial[name]) for name in initial)  # the trained weights, saved
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= {p.name for p in last.iterdir()}


def test_rotation_never_deletes_the_newest_complete_checkpoint(tmp_path):
    def checkpoint(step: int, complete: bool) -> Path:
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if complete:
            (path / COMPLETE_MARKER).write_text("{}")
        return path

    old, stale, good, writing = checkpoint(2, True), checkpoint(3, False), checkpoint(4, True), checkpoint(6, False)
    rotate_checkpoints(tmp_path, 1, keep=set())
    assert not old.exists() and not stale.exists()  # an older complete one beyond the limit; a dead partial one
    assert good.exists() and writing.exists()  # the newest complete one; a newer one may still be being written
    assert last_complete_checkpoint(tmp_path) == good


class PoisonedTrainer(ObjectiveTrainer):
    """Test-only: the loss of the optimizer steps in `poisoned` (1-based) is NaN, on every micro-batch."""

    poisoned: set[int] = set()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training and self.state.global_step + 1 in self.poisoned:
            return loss * float("nan")
        return loss


class Snapshots(TrainerCallback):
    """Weights, optimizer state and learning rate before and after each optimizer step."""

    def __init__(self) -> None:
        self.before: dict[int, tuple] = {}
        self.after: dict[int, tuple] = {}

    @staticmethod
    def take(model, optimizer, lr_scheduler) -> tuple:
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state = {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer.state_dict()["state"].items()}
        return weights, state, lr_scheduler.state_dict()["last_epoch"], lr_scheduler.get_last_lr()

    def on_step_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.before[state.global_step + 1] = self.take(model, optimizer, lr_scheduler)

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.after[state.global_step] = self.take(model, optimizer, lr_scheduler)


def poisoned_run(model_dir, out, poisoned: set[int], steps: int, max_nonfinite_steps: int = 3):
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             learning_rate=1e-3, warmup_steps=2, max_steps=steps, logging_steps=1,
                             save_strategy="no", report_to="none", use_cpu=True, seed=0)
    snapshots = Snapshots()
    trainer = type("Poisoned", (PoisonedTrainer,), {"poisoned": poisoned})(
        model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=synthetic_dataset(32),
        data_collator=DataCollatorForChat(pad_token_id=0), callbacks=[snapshots], objective="dft",
        objective_kwargs={"alpha": 1.0}, max_nonfinite_steps=max_nonfinite_steps,
    )  # fmt: skip
    trainer.train()
    return trainer, snapshots


def assert_same_state(a: tuple, b: tuple) -> None:
    for name in a[0]:
        assert torch.equal(a[0][name], b[0][name]), name
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        for item in a[1][key]:
            assert torch.equal(a[1][key][item], b[1][key][item]), (key, item)
    assert a[2:] == b[2:]  # scheduler position and learning rate


def test_nonfinite_update_is_skipped_exactly_and_counted(tiny_model_dir, tmp_path):
    trainer, snap = poisoned_run(tiny_model_dir, tmp_path / "nan", poisoned={3}, steps=5)
    assert_same_state(snap.before[3], snap.after[3])  # weights, AdamW moments and step counts, scheduler
    assert not torch.equal(snap.before[4][0]["lm_head.weight"], snap.after[4][0]["lm_head.weight"])  # it goes on
    log = {e["step"]: e for e in trainer.state.log_history if "loss" in e}
    assert [log[s]["nonfinite_steps"] for s in range(1, 6)] == [0, 0, 1, 0, 0]
    assert all(torch.isfinite(torch.tensor(e["ce"])) for e in log.values() if "ce" in e)
    assert trainer.stopped_nonfinite_at is None and trainer.state.global_step == 5


def test_repeated_nonfinite_steps_stop_with_last_good_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "nan3"
    trainer, snap = poisoned_run(tiny_model_dir, out, poisoned={2, 3, 4, 5}, steps=8, max_nonfinite_steps=3)
    assert trainer.stopped_nonfinite_at == 4 and trainer.state.global_step == 4
    saved = load_file(out / "checkpoint-4" / "model.safetensors")
    assert (out / "checkpoint-4" / COMPLETE_MARKER).is_file()
    good = snap.after[1][0]  # the weights after the last finite update
    for name, tensor in saved.items():
        assert torch.equal(tensor, good[name]), name


def test_nan_weights_stop_the_cli_with_a_clear_message(nan_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["train", *train_args(nan_model_dir, chat_file(tmp_path, 8), out, 10)])
    err = capsys.readouterr().err
    assert code == 1 and "3 steps in a row had a non-finite loss or gradient norm" in err and "Traceback" not in err
    assert (out / "checkpoint-3" / COMPLETE_MARKER).is_file()


def _no_weights(model_dir, tmp_path):
    path = tmp_path / "no-weights"
    shutil.copytree(model_dir, path, ignore=shutil.ignore_patterns("*.safetensors"))
    return path


def _pickled_only(model_dir, tmp_path):
    path = _no_weights(model_dir, tmp_path)
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    return path


def _another_run(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "trainer_state.json").write_text("{}")
    return out


@pytest.mark.parametrize("case, message", [
    ("missing data", "data file not found"),
    ("config is a directory", "is a directory; give the YAML file itself"),
    ("model folder missing", "no such folder"),
    ("model is a file", "is a file; give the model's folder"),
    ("model without weights", "holds no weights (*.safetensors)"),
    ("pickled weights only", "holds pickled weights (pytorch_model.bin) but no .safetensors"),
    ("output_dir holds a run", "holds another run (trainer_state.json); set overwrite_output_dir: true"),
    ("unwritable output_dir", "cannot write to output_dir"),
    ("max_length below the template", "leaves no room for a reply: the chat template alone takes"),
    ("resume true without checkpoints", "holds no complete checkpoint"),
    ("resume path incomplete", "is incomplete (no dftune_complete marker"),
])  # fmt: skip
def test_hostile_inputs_fail_fast_and_clearly(case, message, tiny_model_dir, tmp_path, capsys, heavy_work):
    data, out = chat_file(tmp_path, 4), tmp_path / "out"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--data_files", data, "--output_dir", str(out),
            "--report_to", "none", "--use_cpu", "true"]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    extra = {
        "missing data": ["--data_files", str(tmp_path / "nope.jsonl")],
        "config is a directory": None,
        "model folder missing": ["--model_name_or_path", str(tmp_path / "nope")],
        "model is a file": ["--model_name_or_path", str(blocker)],
        "model without weights": ["--model_name_or_path", str(_no_weights(tiny_model_dir, tmp_path))]
        if case == "model without weights" else [],
        "pickled weights only": ["--model_name_or_path", str(_pickled_only(tiny_model_dir, tmp_path))]
        if case == "pickled weights only" else [],
        "output_dir holds a run": ["--output_dir", str(_another_run(tmp_path))] if case == "output_dir holds a run" else [],
        "unwritable output_dir": ["--output_dir", str(blocker / "out")],
        "max_length below the template": ["--max_length", "5"],
        "resume true without checkpoints": ["--resume_from_checkpoint", "true"],
        "resume path incomplete": ["--resume_from_checkpoint", str(_another_run(tmp_path))]
        if case == "resume path incomplete" else [],
    }[case]
    argv = ["train", str(tmp_path), *argv[1:]] if extra is None else argv + extra
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not heavy_work, heavy_work  # before any weights load or data is tokenised


def test_overwrite_output_dir_replaces_the_old_run(tiny_model_dir, tmp_path):
    out = _another_run(tmp_path)
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / COMPLETE_MARKER).write_text("{}")
    argv = ["train", *train_args(tiny_model_dir, chat_file(tmp_path, 8), out, 1), "--overwrite_output_dir", "true"]
    assert main(argv) == 0
    assert not (out / "checkpoint-5").exists()  # a later `auto` must not resume the old run


def test_resume_from_the_final_checkpoint_trains_no_more_steps(tiny_model_dir, tmp_path):
    out = tmp_path / "done"
    argv = ["train", *train_args(tiny_model_dir, chat_file(tmp_path, 16), out, 4)]
    assert main(argv) == 0
    assert main([*argv, "--resume_from_checkpoint", "true"]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and max(e["step"] for e in state["log_history"]) == 4
    final, checkpoint = load_file(out / "model.safetensors"), load_file(out / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(final[name], checkpoint[name]) for name in checkpoint)
