"""Multi-node launches, two nodes of one process on this machine (gloo): each gives the same update as one node of two
processes (`torchrun --nproc_per_node 2`), the issue's criterion being a relative update difference below 1e-5.

A float64 model trained by plain SGD (as tests/runtime/test_distributed.py) so that any difference in what a process
sees or how gradients are averaged shows far above rounding (which is ~1e-15 here). Launched: torchrun with a c10d
rendezvous and with a static one (master_addr/master_port), accelerate launch with a config file of one machine and
one of two machines (`num_machines: 2`, each launch its own `--machine_rank`).
"""

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
from transformers import AutoModelForCausalLM, AutoTokenizer

from dftune.runtime.checkpoints import mark_complete

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def inputs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a float64 copy of the tiny model, chat records of uneven lengths)."""
    folder = tmp_path_factory.mktemp("multinode-inputs")
    model_dir = folder / "float64-model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{i} + 3?" + " x" * (i % 5)},
        {"role": "assistant", "content": f"{i + 3}" * (1 + i % 3)},
    ]}) + "\n" for i in range(16)), encoding="utf-8")  # fmt: skip
    return model_dir, data


def train_flags(inputs: tuple[Path, Path], output_dir: Path) -> list[str]:
    """dftune train, 2 optimizer steps of plain SGD over 2 processes x batch 2 x accumulation 2, fixed order."""
    model_dir, data = inputs
    return [
        "-m", "dftune", "train", "--model_name_or_path", str(model_dir), "--data_files", str(data),
        "--torch_dtype", "auto", "--loss", "dft", "--optim", "sgd", "--learning_rate", "0.5", "--lr_scheduler_type",
        "constant", "--max_grad_norm", "0", "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--seed", "0", "--disable_tqdm", "true",
        "--train_sampling_strategy", "sequential", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--output_dir", str(output_dir),
    ]  # fmt: skip


def launch_once(argv: list[str], step: str) -> str:
    result = processes.run(argv, step=step, timeout=120, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def run_nodes(argvs: list[list[str]], step: str) -> tuple[list[int], list[str]]:
    """Both nodes' launches side by side (each waits for the other at the rendezvous): exit codes, stderr."""
    nodes = [subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for argv in argvs]  # fmt: skip
    errors = [processes.communicate(node, step=f"{step}, node {rank}", timeout=120)[1]
              for rank, node in enumerate(nodes)]  # fmt: skip
    return [node.returncode for node in nodes], errors


def launch_two_nodes(argvs: list[list[str]], step: str) -> list[str]:
    codes, errors = run_nodes(argvs, step)
    assert codes == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    return errors


@pytest.fixture(scope="module")
def one_node(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, free_port) -> Path:
    """The reference: `torchrun --nproc_per_node 2` on one node; its output_dir."""
    out = tmp_path_factory.mktemp("one-node") / "out"
    err = launch_once([*TORCHRUN, "--nproc_per_node", "2", "--master_port", free_port(), *train_flags(inputs, out)],
                      "one node of 2 processes")  # fmt: skip
    assert "launcher         torchrun, device cpu" in err and "DDP, world size 2, backend gloo" in err
    return out


def relative_update_difference(inputs: tuple[Path, Path], reference: Path, other: Path) -> float:
    """|other - reference| / |reference - start| over every weight at once; the update itself must be no rounding."""
    start = load_file(inputs[0] / "model.safetensors")
    one, two = load_file(reference / "model.safetensors"), load_file(other / "model.safetensors")
    assert two.keys() == start.keys()
    update = torch.cat([(one[n] - start[n]).flatten() for n in start])
    difference = torch.cat([(two[n] - one[n]).flatten() for n in start])
    assert update.abs().max() > 1e-4
    return (difference.norm() / update.norm()).item()


def node_header(err: str, launcher: str) -> None:
    assert err.count("---- dftune run") == 1, err[-3000:]
    assert f"launcher         {launcher}, 2 nodes x 1 process, device cpu" in err, err[-3000:]
    assert "parallelism      DDP, world size 2, backend gloo" in err


@pytest.mark.slow
def test_torchrun_two_nodes_with_c10d_rendezvous_train_like_one_node(inputs, one_node, tmp_path, free_port):
    out, endpoint = tmp_path / "out", f"localhost:{free_port()}"
    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
                  "--rdzv_id", "dftune-test"]  # fmt: skip
    errors = launch_two_nodes([[*TORCHRUN, *rendezvous, *train_flags(inputs, out)]] * 2, "torchrun c10d, 2 nodes")
    node_header(errors[0] if "---- dftune run" in errors[0] else errors[1], "torchrun")  # c10d picks node ranks
    assert relative_update_difference(inputs, one_node, out) < 1e-5


@pytest.mark.slow
def test_torchrun_two_nodes_with_static_rendezvous_write_from_global_rank_0_only(inputs, one_node, tmp_path, free_port):
    """Node 1 given an output_dir of its own (a node-local disk): it holds nothing after the run; only global rank
    0 writes (model, state, data report) and holds the run lock."""
    port = free_port()
    outs = [tmp_path / "node0", tmp_path / "node1"]
    argvs = [[*TORCHRUN, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr",
              "127.0.0.1", "--master_port", port, *train_flags(inputs, outs[rank])] for rank in (0, 1)]  # fmt: skip
    errors = launch_two_nodes(argvs, "torchrun static rendezvous, 2 nodes")
    node_header(errors[0], "torchrun")
    assert "---- dftune run" not in errors[1]
    assert relative_update_difference(inputs, one_node, outs[0]) < 1e-5
    assert (outs[0] / "data_report.json").is_file() and (outs[0] / ".dftune.lock").is_file()
    assert [p.name for p in outs[1].iterdir()] == []


ACCELERATE_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: {machines}
machine_rank: 0
main_process_ip: 127.0.0.1
main_process_port: {port}
num_processes: 2
gpu_ids: all
mixed_precision: "no"
main_training_function: main
rdzv_backend: static
same_network: true
use_cpu: true
"""


@pytest.mark.slow
def test_accelerate_config_file_of_one_machine_trains_like_torchrun(inputs, one_node, tmp_path, free_port):
    config = tmp_path / "accelerate.yaml"
    config.write_text(ACCELERATE_CONFIG.format(machines=1, port=free_port()), encoding="utf-8")
    out = tmp_path / "out"
    err = launch_once([ACCELERATE, "launch", "--config_file", str(config), *train_flags(inputs, out)],
                      "accelerate launch --config_file, one machine")  # fmt: skip
    assert "launcher         accelerate launch, device cpu" in err and "DDP, world size 2, backend gloo" in err
    assert relative_update_difference(inputs, one_node, out) < 1e-5


@pytest.mark.slow
def test_accelerate_config_file_of_two_machines_trains_like_one_node(inputs, one_node, tmp_path, free_port):
    config = tmp_path / "accelerate.yaml"
    config.write_text(ACCELERATE_CONFIG.format(machines=2, port=free_port()), encoding="utf-8")
    out = tmp_path / "out"
    argvs = [[ACCELERATE, "launch", "--config_file", str(config), "--machine_rank", str(rank),
              *train_flags(inputs, out)] for rank in (0, 1)]  # fmt: skip
    errors = launch_two_nodes(argvs, "accelerate launch --config_file, 2 machines")
    node_header(errors[0], "accelerate launch")
    assert relative_update_difference(inputs, one_node, out) < 1e-5


@pytest.mark.slow
def test_nodes_that_find_different_checkpoints_stop_before_training(inputs, tmp_path, free_port):
    """Node-local output_dirs: node 0's holds a complete checkpoint-1, node 1's none (global rank 0 alone writes
    them). `resume_from_checkpoint: auto` would resume node 0 at step 1 and start node 1 afresh; both stop, saying
    why, before any model loads."""
    outs = [tmp_path / "node0", tmp_path / "node1"]
    checkpoint = outs[0] / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 1}), encoding="utf-8")
    mark_complete(checkpoint, 1)
    port = free_port()
    argvs = [[*TORCHRUN, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr",
              "127.0.0.1", "--master_port", port, *train_flags(inputs, outs[rank]), "--resume_from_checkpoint", "auto"]
             for rank in (0, 1)]  # fmt: skip
    codes, errors = run_nodes(argvs, "resume on 2 nodes")
    assert all(code != 0 for code in codes)
    for err in errors:
        assert "the processes of this run found different checkpoints to resume from" in err, err[-3000:]
        assert "rank 0: checkpoint-1; rank 1: no complete checkpoint, a fresh start" in err
        assert "put it on a file system all nodes share" in err and "---- dftune run" not in err
