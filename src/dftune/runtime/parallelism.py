"""The parallelism a run really got (world size, sharding, backend), checked against what the config asked for.

Two silent fallbacks seen with transformers 5.23 / accelerate 1.15 on CPU: `fsdp: full_shard` under torchrun
trains plain DDP (accelerate enables FSDP on GPU-class devices only), and `accelerate launch --cpu
--num_processes 2` starts ONE process (its CPU launcher is single-process without mpirun). dftune names both
in one warning line; a requested FSDP or DeepSpeed that did not engage on a GPU is an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import Trainer

from dftune.errors import DftuneError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parallelism:
    world_size: int
    sharding: str  # "DeepSpeed ZeRO-3 (offload params cpu, optimizer cpu)", "FSDP2 full shard", "DDP", "none"
    backend: str  # the torch.distributed backend, or "none"

    def describe(self) -> str:
        return f"{self.sharding}, world size {self.world_size}, backend {self.backend}"


def deepspeed_sharding(trainer: Trainer) -> str:
    plugin = trainer.accelerator.state.deepspeed_plugin
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    offload = [
        f"{what} {zero[key]['device']}"
        for key, what in (("offload_param", "params"), ("offload_optimizer", "optimizer"))
        if zero.get(key, {}).get("device", "none") not in ("none", None)
    ]
    return f"DeepSpeed ZeRO-{plugin.zero_stage}" + (f" (offload {', '.join(offload)})" if offload else "")


def fsdp_sharding(trainer: Trainer) -> str:
    plugin = trainer.accelerator.state.fsdp_plugin
    if plugin.fsdp_version == 2:
        strategy = "full shard" if plugin.reshard_after_forward is True else "shard grad op"
    else:
        strategy = str(plugin.sharding_strategy.name).lower().replace("_", " ")
    return f"FSDP{plugin.fsdp_version} {strategy}"


def engaged(trainer: Trainer) -> Parallelism:
    """What the Trainer's accelerator set up."""
    world_size = trainer.args.world_size
    if trainer.is_deepspeed_enabled:
        sharding = deepspeed_sharding(trainer)
    elif trainer.is_fsdp_enabled:
        sharding = fsdp_sharding(trainer)
    else:
        sharding = "DDP" if world_size > 1 else "none"
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return Parallelism(world_size, sharding, str(torch.distributed.get_backend()) if distributed else "none")


def parameter_sharding(trainer: Trainer) -> str | None:
    """The engine that keeps only a shard of each parameter on a process (ZeRO-3, FSDP), or None."""
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        return "DeepSpeed ZeRO-3"
    return "FSDP" if trainer.is_fsdp_enabled else None


def accelerate_requested_processes() -> int | None:
    """N of `accelerate launch --num_processes N` (or of its --config_file's num_processes) when accelerate's
    single-process launcher started this process; None otherwise."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "ACCELERATE_USE_CPU" not in os.environ:
        return None  # torchrun started us (accelerate's multi-GPU path), or accelerate did not
    try:
        words = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    options = {}  # "--num_processes 2", "--num-processes=2", "--config_file x.yaml" -> {"num_processes": "2", ...}
    for i, word in enumerate(words):
        key, _, inline = word.partition("=")
        if key.replace("-", "_") in ("__num_processes", "__config_file"):
            options[key.replace("-", "_")[2:]] = inline or (words[i + 1] if i + 1 < len(words) else "")
    if "num_processes" in options:
        return int(options["num_processes"])
    if "config_file" in options:
        config = yaml.safe_load(Path(options["config_file"]).read_text(encoding="utf-8")) or {}
        return int(config.get("num_processes", 1))
    return None


def requested_by_accelerate(engine: str) -> bool:
    """`accelerate launch` with an FSDP or DeepSpeed config asks through the environment, not our keys."""
    return os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() == "true"


def check_parallelism(trainer: Trainer) -> Parallelism:
    """Stop (GPU) or warn in one line (CPU, where the engine cannot engage) when the run's parallelism is not the
    requested one; return what runs."""
    args, actual = trainer.args, engaged(trainer)
    on_cpu = args.device.type == "cpu"
    problems = []
    if (args.fsdp or requested_by_accelerate("FSDP")) and not trainer.is_fsdp_enabled:
        problems.append(
            f"fsdp was requested but did not engage ({trainer.accelerator.distributed_type.value}): "
            f"training {actual.sharding} over {actual.backend} instead"
            + (" (accelerate 1.15 enables FSDP on GPU-class devices only)" if on_cpu else "")
        )
    if (args.deepspeed or requested_by_accelerate("DEEPSPEED")) and not trainer.is_deepspeed_enabled:
        problems.append(f"deepspeed was requested but did not engage: training {actual.sharding} instead")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > actual.world_size:  # every process would train alone on all the data, into the same output_dir
        raise DftuneError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but this one trains as world size "
            f"{actual.world_size}, independently of the others; on a machine without an accelerator set use_cpu: true "
            "(dftune does when it is not given) so that they join one gloo process group"
        )
    requested = accelerate_requested_processes()
    if requested is not None and requested > actual.world_size:
        problems.append(
            f"accelerate launch asked for {requested} processes but started {actual.world_size} (its CPU launcher "
            f"is single-process without mpirun): use torchrun --nproc_per_node {requested} -m dftune train ..."
        )
    for problem in problems:
        if not on_cpu:
            raise DftuneError(problem)
        if trainer.is_world_process_zero():
            logger.warning("%s", problem)
    return actual
