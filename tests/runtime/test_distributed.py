"""Two CPU processes (torchrun, gloo) train exactly like one: the objectives' normalisers and metrics are global.

2 processes x batch 2 x accumulation 2 and 1 process x batch 4 x accumulation 2 see the same 8 samples per
optimizer step (sequential sampling), so with plain SGD (a float64 model) their updates must agree to rounding, and
the metrics logged by the main process must be the same numbers.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import processes
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.losses import OBJECTIVES


def write_data(path) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(32):
            a, b = rng.randint(0, 999), rng.randint(0, 99)
            messages = [
                {"role": "user", "content": f"{a}+{b}=" + "x" * rng.randint(0, 30)},
                {"role": "assistant", "content": str(a + b) * rng.randint(1, 4)},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")


def train(launcher: list[str], model_dir, data, output_dir, loss: str, batch: int, *extra: str) -> list[dict]:
    """The run's logged training entries; its stderr is kept in `output_dir`/stderr.txt."""
    argv = [
        *launcher, "-m", "dftune", "train", "--model_name_or_path", str(model_dir), "--data_files", str(data),
        "--torch_dtype", "auto", "--max_length", "128", "--loss", loss, "--bft_group_size", "3", "--optim", "sgd", "--learning_rate", "0.5",
        "--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--max_steps", "3", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--seed", "0", "--disable_tqdm", "true",
        "--train_sampling_strategy", "sequential", "--per_device_train_batch_size", str(batch),
        "--gradient_accumulation_steps", "2", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = processes.run(argv, step=f"training {loss} on {output_dir.name} ({len(launcher)}-word launcher)",
                           timeout=300, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (output_dir / "stderr.txt").write_text(result.stderr, encoding="utf-8")
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [e for e in state["log_history"] if "loss" in e and "train_runtime" not in e]


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(OBJECTIVES))  # every registered objective
def test_two_processes_match_one(tiny_model_dir, tmp_path, loss, torchrun):
    data = tmp_path / "data.jsonl"
    write_data(data)
    model_dir = tmp_path / "float64-model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    two_logs = train(torchrun(), model_dir, data, tmp_path / "two", loss, batch=2)
    one_logs = train([sys.executable], model_dir, data, tmp_path / "one", loss, batch=4)

    start = load_file(model_dir / "model.safetensors")
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name, initial in start.items():
        update = one[name] - initial
        if update.norm() > 0:
            assert (two[name] - one[name]).norm() / update.norm() < 1e-9, name
    assert max((one[n] - start[n]).abs().max().item() for n in start) > 1e-6

    assert len(two_logs) == len(one_logs) == 3  # logged once, by the main process
    for a, b in zip(two_logs, one_logs):
        for key in ("loss", "ce", "avg_p_correct", "token_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    if loss == "bft":
        assert two_logs[-1]["bft_sample_weight"] == pytest.approx(one_logs[-1]["bft_sample_weight"], rel=1e-9)
    for a, b in zip(two_logs, one_logs):  # the objective's own metrics and the diagnostics are global means too
        for key in {"entropy", "mean_token_weight", "asft_kl", "bft_sample_weight", "dft_alpha"} & b.keys():
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-12), key
    assert torch.isfinite(torch.tensor([e["loss"] for e in two_logs])).all()


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["dft", "bft"])
def test_zero3_matches_ddp_and_saves_a_model_that_generates(tiny_model_dir, tmp_path, loss, torchrun):
    """DeepSpeed ZeRO-3 on 2 CPU processes (gloo): the same update as DDP, and a gathered, loadable model."""
    data = tmp_path / "data.jsonl"
    write_data(data)
    zero3 = str(Path(__file__).parents[2] / "configs" / "deepspeed" / "zero3.json")
    ddp_logs = train(torchrun(), tiny_model_dir, data, tmp_path / "ddp", loss, 2)
    zero_logs = train(torchrun(), tiny_model_dir, data, tmp_path / "zero3", loss, 2, "--deepspeed", zero3)

    start = load_file(tiny_model_dir / "model.safetensors")
    ddp, zero = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "zero3" / "model.safetensors")
    assert zero.keys() == start.keys() and all(zero[n].shape == start[n].shape for n in start)  # gathered, not shards
    # float32 (ZeRO-3 flattens parameters in the model's dtype): one relative difference over the whole update,
    # since a single weight near 1.0 that moved by 1e-5 is within a few ulps of rounding.
    update = torch.cat([(ddp[n] - start[n]).flatten() for n in start])
    difference = torch.cat([(zero[n] - ddp[n]).flatten() for n in start])
    assert difference.norm() / update.norm() < 1e-4 and update.abs().max() > 1e-4
    assert "parallelism      DeepSpeed ZeRO-3, world size 2, backend gloo" in (tmp_path / "zero3" / "stderr.txt").read_text()
    assert len(zero_logs) == len(ddp_logs) == 3
    for a, b in zip(zero_logs, ddp_logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "zero3")
    prompt = tokenizer("12+7=", return_tensors="pt")["input_ids"]
    generated = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > prompt.shape[1]
