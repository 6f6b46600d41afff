"""The shipped launcher configs say what they promise, as accelerate and DeepSpeed read them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env

CONFIGS = Path(__file__).parents[2] / "configs"


def launch_env(name: str) -> tuple[dict[str, str], int, int]:
    """The environment `accelerate launch --config_file configs/accelerate/NAME.yaml` gives each process."""
    argv = ["--config_file", str(CONFIGS / "accelerate" / f"{name}.yaml"), "-m", "dftune", "train", "run.yaml"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return prepare_multi_gpu_env(args), args.num_processes, args.num_machines


def test_ddp_config_is_plain_data_parallel():
    env, processes, machines = launch_env("ddp")
    assert (processes, machines) == (8, 1) and "ACCELERATE_USE_FSDP" not in env
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_config_shards_everything_per_transformer_layer():
    env, processes, _ = launch_env("fsdp")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"  # full shard
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


def test_multi_node_config_spans_two_machines():
    env, processes, machines = launch_env("multi_node")
    assert (processes, machines) == (16, 2) and "ACCELERATE_USE_FSDP" not in env


@pytest.mark.parametrize(("name", "stage", "offload"), [("zero2", 2, False), ("zero3", 3, False),
                                                      ("zero3_offload", 3, True)])  # fmt: skip
def test_deepspeed_configs_leave_batch_values_to_the_integration(name, stage, offload):
    config = json.loads((CONFIGS / "deepspeed" / f"{name}.json").read_text())
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] == "auto"
    assert config["gradient_accumulation_steps"] == "auto"
    assert (zero.get("offload_optimizer", {}).get("device") == "cpu") == offload
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # save_model writes one loadable model
