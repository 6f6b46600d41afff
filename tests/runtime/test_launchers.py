"""Every stage under the launchers users use, on 2 CPU processes (gloo): torchrun with DeepSpeed ZeRO-3 for sft,
dllm and dpo, and DeepSpeed's own launcher. Two-node launches (torchrun, accelerate): tests/runtime/test_multinode.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import processes
import pytest
import torch

from dftune.models.presets import init_model

ROOT = Path(__file__).parents[2]
ZERO3 = str(ROOT / "configs" / "deepspeed" / "zero3.json")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def chat_records(path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{i} + 3?"}, {"role": "assistant", "content": f"{i} + 3 = {i + 3}"},
    ]}) + "\n" for i in range(16)), encoding="utf-8")  # fmt: skip
    return path


def common(output_dir: Path) -> list[str]:
    return [
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--output_dir", str(output_dir),
    ]  # fmt: skip


def stage_args(stage: str, tmp_path: Path, model_dir: Path) -> list[str]:
    if stage == "dpo":
        data = ROOT / "examples" / "dpo" / "data" / "addition_pairs.jsonl"
        return ["--stage", "dpo", "--model_name_or_path", str(model_dir), "--data_files", str(data)]
    if stage == "dllm":
        dllm = init_model("tiny-dllm", tmp_path / "tiny-dllm")
        return ["--stage", "dllm", "--model_name_or_path", str(dllm), "--data_files", str(chat_records(tmp_path / "d.jsonl"))]
    return ["--loss", "bft", "--bft_group_size", "2", "--model_name_or_path", str(model_dir),
            "--data_files", str(chat_records(tmp_path / "d.jsonl"))]  # fmt: skip


def launch(argv: list[str], output_dir: Path) -> str:
    result = processes.run(argv, step=f"training under {Path(argv[0]).name} {' '.join(argv[1:3])}", timeout=300,
                           env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output_dir / "model.safetensors").is_file()
    return result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dllm", "dpo"])
def test_every_stage_trains_under_torchrun_with_zero3(stage, tiny_model_dir, tmp_path, torchrun):
    out = tmp_path / "out"
    argv = [*torchrun(), "-m", "dftune", "train", *stage_args(stage, tmp_path, tiny_model_dir), *common(out),
            "--deepspeed", ZERO3]  # fmt: skip
    err = launch(argv, out)
    assert "parallelism      DeepSpeed ZeRO-3, world size 2, backend gloo" in err
    logged = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logged)


@pytest.mark.slow
def test_psft_under_zero3_is_an_error_that_names_the_fix(tiny_model_dir, tmp_path, torchrun):
    """PSFT's old policy is a snapshot of the parameters; under ZeRO-3 a process holds a shard: refused, no run."""
    out = tmp_path / "out"
    argv = [*torchrun(), "-m", "dftune", "train", "--loss", "psft", "--model_name_or_path", str(tiny_model_dir),
            "--data_files", str(chat_records(tmp_path / "d.jsonl")), *common(out), "--deepspeed", ZERO3]  # fmt: skip
    result = processes.run(argv, step="psft under ZeRO-3", timeout=300, env=ENV, capture_output=True, text=True)
    assert result.returncode != 0
    assert "loss: psft snapshots the policy's parameters, of which DeepSpeed ZeRO-3 keeps only a shard" in result.stderr
    assert "ZeRO-1/2" in result.stderr and not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_deepspeed_launcher(tiny_model_dir, tmp_path, torchrun):
    out = tmp_path / "out"
    port = torchrun()[-1]  # a free port
    deepspeed = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", port]
    argv = [*deepspeed, "--module", "dftune", "train", *stage_args("sft", tmp_path, tiny_model_dir), *common(out),
            "--deepspeed", ZERO3]  # fmt: skip
    err = launch(argv, out)
    assert "launcher         deepspeed" in err and "DeepSpeed ZeRO-3, world size 2" in err
