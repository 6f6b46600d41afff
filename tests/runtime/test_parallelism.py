"""The parallelism a run really got is stated, and a requested one that did not engage is named (CPU: a warning)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import processes
import pytest



def write_data(path) -> None:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": str(i + 1)},
    ]}) + "\n" for i in range(8)), encoding="utf-8")  # fmt: skip


def run(argv: list[str]) -> str:
    result = processes.run(argv, step=f"dftune train ({' '.join(argv[:4])})", timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def train_flags(model_dir, data, output_dir) -> list[str]:
    return [
        "-m", "dftune", "train", "--model_name_or_path", str(model_dir), "--data_files", str(data), "--max_steps", "1",
        "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true",
        "--disable_tqdm", "true", "--output_dir", str(output_dir),
    ]  # fmt: skip


@pytest.mark.slow
def test_fsdp_that_cannot_engage_on_cpu_says_what_runs_instead(tiny_model_dir, tmp_path, torchrun):
    data = tmp_path / "data.jsonl"
    write_data(data)
    err = run([*torchrun(), *train_flags(tiny_model_dir, data, tmp_path / "out"), "--fsdp", "full_shard"])
    warnings = [line for line in err.splitlines() if "fsdp was requested but did not engage" in line]
    assert len(warnings) == 1, err[-3000:]
    assert "training DDP over gloo instead" in warnings[0] and "GPU-class devices only" in warnings[0]
    assert "parallelism      DDP, world size 2, backend gloo" in err


CPU_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_CPU
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: "no"
use_cpu: true
main_training_function: main
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flags", "config_file"])
def test_accelerate_cpu_launch_that_starts_one_process_says_so(tiny_model_dir, tmp_path, how):
    data = tmp_path / "data.jsonl"
    write_data(data)
    (tmp_path / "cpu.yaml").write_text(CPU_CONFIG, encoding="utf-8")
    options = ["--cpu", "--num_processes", "2"] if how == "flags" else ["--config_file", str(tmp_path / "cpu.yaml")]
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", *options]
    err = run([*accelerate, *train_flags(tiny_model_dir, data, tmp_path / "out")])
    assert "accelerate launch asked for 2 processes but started 1" in err, err[-3000:]
    assert "use torchrun --nproc_per_node 2 -m dftune train" in err
    assert "parallelism      none, world size 1, backend none" in err
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1


@pytest.mark.slow
def test_accelerate_multi_process_launch_on_cpu_trains_ddp(tiny_model_dir, tmp_path, torchrun):
    """`accelerate launch --multi_gpu --num_processes 2` starts 2 CPU processes (through torchrun): DDP over gloo,
    without DDP's per-step search for unused parameters (and its warning on every rank)."""
    data = tmp_path / "data.jsonl"
    write_data(data)
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                  "--main_process_port", torchrun()[-1]]  # fmt: skip
    err = run([*accelerate, *train_flags(tiny_model_dir, data, tmp_path / "out")])
    assert "launcher         accelerate launch" in err and "parallelism      DDP, world size 2, backend gloo" in err
    assert "find_unused_parameters=True" not in err
