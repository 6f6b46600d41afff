"""Every stage under the launchers users use, on 2 CPU processes (gloo): torchrun with DeepSpeed ZeRO-3 for sft,
dllm and dpo, DeepSpeed's own launcher, and a two-node torchrun rendezvous (two nodes of one process on this
machine) that trains exactly like one node of two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import processes
import pytest
import torch
from safetensors.torch import load_file

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


@pytest.mark.slow
def test_two_nodes_train_like_one_node_of_two_processes(tiny_model_dir, tmp_path, torchrun):
    flags = ["-m", "dftune", "train", *stage_args("sft", tmp_path, tiny_model_dir), "--use_cpu", "true"]
    one_node = tmp_path / "one-node"
    launch([*torchrun(), *flags, *common(one_node)], one_node)

    two_nodes = tmp_path / "two-nodes"
    port = torchrun()[-1]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port, *flags,
             *common(two_nodes)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    errors = [processes.communicate(node, step=f"two-node torchrun, node {rank}", timeout=300)[1]
              for rank, node in enumerate(nodes)]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    assert "world size 2" in errors[0]
    one, two = load_file(one_node / "model.safetensors"), load_file(two_nodes / "model.safetensors")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-6)
