"""Any machine: without CUDA, `use_cpu` is set when not given, so seed 000's flags (with --bf16 True) train on CPU
and a 2-process torchrun trains as DDP over gloo (the same update as one process with the same global batch)."""

from __future__ import annotations

import json
import os
import random
import sys

import processes
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from test_sft_end_to_end import write_chat_files

from dftune.cli.main import main
from dftune.config.machine import accelerator_available
from dftune.run import parse_config



pytestmark = pytest.mark.skipif(accelerator_available(), reason="checks the machine without an accelerator")


def write_data(path) -> None:
    """32 short additions of varied lengths (as tests/runtime/test_distributed.py writes them)."""
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(32):
            a, b = rng.randint(0, 999), rng.randint(0, 99)
            messages = [{"role": "user", "content": f"{a}+{b}=" + "x" * rng.randint(0, 30)},
                        {"role": "assistant", "content": str(a + b) * rng.randint(1, 4)}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")


def history(output_dir) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def test_use_cpu_is_set_when_not_given():
    assert parse_config(["--output_dir", "out", "--bf16", "true"]).training.use_cpu is True
    assert parse_config(["--output_dir", "out", "--use_cpu", "false"]).training.use_cpu is False  # as given


@pytest.mark.slow
def test_seed_000_flags_without_use_cpu(tiny_model_dir, tmp_path):
    """seed 000's train.sh flags as written (bf16, no --use_cpu) on this CPU machine."""
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--torch_dtype", "bfloat16",
            "--attn_implementation", "sdpa", "--trust_remote_code", "True", "--data_files", *write_chat_files(tmp_path),
            "--max_length", "8192", "--preprocessing_num_workers", "2", "--validation_split_percentage", "10.0",
            "--enable_gradient_checkpointing", "True", "--dft_alpha", "0.7", "--bf16", "True",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1",
            "--learning_rate", "2e-6", "--lr_scheduler_type", "cosine", "--weight_decay", "0.01",
            "--gradient_accumulation_steps", "16", "--eval_strategy", "steps", "--eval_steps", "2",
            "--save_strategy", "steps", "--save_steps", "200", "--save_total_limit", "3", "--save_only_model", "True",
            "--report_to", "none", "--logging_steps", "1", "--warmup_ratio", "0.05", "--output_dir", str(out),
            "--logging_dir", str(tmp_path / "logs"), "--remove_unused_columns", "False",
            "--ddp_find_unused_parameters", "False", "--dataset_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    train = [e for e in history(out) if "loss" in e and "train_runtime" not in e]
    assert len(train) == 3 and all(e["ce"] > 0 for e in train)


def run_train(launcher: list[str], model_dir, data, output_dir, batch: int) -> str:
    argv = [*launcher, "-m", "dftune", "train", "--model_name_or_path", str(model_dir), "--data_files", str(data),
            "--torch_dtype", "auto", "--max_length", "128", "--optim", "sgd", "--learning_rate", "0.5",
            "--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--max_steps", "2", "--logging_steps", "1",
            "--save_strategy", "no", "--report_to", "none", "--seed", "0", "--disable_tqdm", "true",
            "--train_sampling_strategy", "sequential", "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", "2", "--output_dir", str(output_dir)]  # fmt: skip  (no --use_cpu)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = processes.run(argv, step=f"dftune train on {output_dir.name} without --use_cpu", timeout=300, env=env,
                           capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow
def test_torchrun_on_cpu_without_use_cpu_is_ddp(tiny_model_dir, tmp_path, torchrun):
    data = tmp_path / "data.jsonl"
    write_data(data)
    model_dir = tmp_path / "float64-model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    stderr = run_train(torchrun(), model_dir, data, tmp_path / "two", batch=2)
    run_train([sys.executable], model_dir, data, tmp_path / "one", batch=4)
    assert "world size 2" in stderr and "gloo" in stderr

    start = load_file(model_dir / "model.safetensors")
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    moved = 0.0
    for name, initial in start.items():
        update = one[name] - initial
        moved = max(moved, update.abs().max().item())
        if update.norm() > 0:
            assert (two[name] - one[name]).norm() / update.norm() < 1e-9, name
    assert moved > 1e-6
    logs = json.loads((tmp_path / "two" / "trainer_state.json").read_text())["log_history"]
    assert len([e for e in logs if "loss" in e and "train_runtime" not in e]) == 2  # one run, logged once
