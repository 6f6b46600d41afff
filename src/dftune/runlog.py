"""One log format for every process of a run: info once from the main process, warnings from any, tagged by rank.

Named `runlog`, not `logging`, so no module of the package shadows the standard library's `logging`.

    setup_logging()            # once, at the entry point (the `dftune` command does it)
    logger.info("...")         # printed by the main process only
    logger.warning("...")      # printed by every process that emits it, as "[rank 1] ..." when distributed

The rank comes from the launcher's environment (RANK / LOCAL_RANK / WORLD_SIZE: torchrun, accelerate,
deepspeed and SLURM's srun through them), so it is right before torch.distributed is even initialised. RANK is the
global rank (over every node), LOCAL_RANK the rank on this node: "rank 0" in dftune always means the global one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

LOG_FORMAT = "%(asctime)s %(levelname).1s %(rank_tag)s%(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    launcher: str
    nodes: int = 1

    def layout(self) -> str:
        """"2 nodes x 8 processes" when the run spans several nodes; "" on one."""
        if self.nodes <= 1:
            return ""
        per_node = self.world_size // self.nodes
        return f"{self.nodes} nodes x {per_node} process{'es' if per_node != 1 else ''}"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_info(environ: dict[str, str] | None = None) -> ProcessInfo:
    """This process's global rank, the world size and the launcher that started it, from the environment."""
    env = os.environ if environ is None else environ
    rank = int(env.get("RANK", env.get("LOCAL_RANK", "0")))
    world_size = int(env.get("WORLD_SIZE", "1"))
    if "ACCELERATE_MIXED_PRECISION" in env or "ACCELERATE_CONFIG_DS_FIELDS" in env:
        launcher = "accelerate launch"  # also when it started the processes through torchrun (--multi_gpu)
    elif "TORCHELASTIC_RUN_ID" in env:
        launcher = "torchrun"
    elif "CROSS_RANK" in env:  # set by deepspeed's launcher only
        launcher = "deepspeed"
    elif "SLURM_PROCID" in env and world_size > 1:
        launcher = "srun"
    else:
        launcher = "python" if world_size == 1 else "unknown launcher"
    return ProcessInfo(rank, world_size, launcher, node_count(env, world_size))


def node_count(env: Mapping[str, str], world_size: int) -> int:
    """How many nodes the run spans: torchrun's (and accelerate's, through it) GROUP_WORLD_SIZE, deepspeed's
    CROSS_SIZE, srun's SLURM_NNODES, else WORLD_SIZE / LOCAL_WORLD_SIZE; 1 when none says."""
    for name in ("GROUP_WORLD_SIZE", "CROSS_SIZE", "SLURM_NNODES"):
        if env.get(name, "").isdigit() and (name != "SLURM_NNODES" or world_size > 1):
            return max(1, int(env[name]))
    local = env.get("LOCAL_WORLD_SIZE", "")
    return max(1, world_size // int(local)) if local.isdigit() and int(local) > 0 else 1


class RankFilter(logging.Filter):
    """Let through what this process should print, and tag it: below `min_level_replica` only on rank 0."""

    def __init__(self, info: ProcessInfo, min_level_replica: int = logging.WARNING) -> None:
        super().__init__()
        self.info = info
        self.min_level_replica = min_level_replica
        self.tag = f"[rank {info.rank}] " if info.world_size > 1 else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_tag = self.tag
        return self.info.is_main or record.levelno >= self.min_level_replica


def setup_logging(level: int = logging.INFO, info: ProcessInfo | None = None) -> logging.Handler:
    """Route dftune's, transformers' and datasets' loggers through one stderr handler with the rank filter.

    Idempotent: a second call replaces the handler it installed before (not the ones other code added).
    """
    info = process_info() if info is None else info
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RunHandler)]:
        root.removeHandler(old)
    handler = _RunHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    handler.addFilter(RankFilter(info))
    root.addHandler(handler)
    root.setLevel(level)
    # transformers and datasets print through handlers of their own: send them to ours instead, so one format
    # and one rank filter hold for every line. (The Trainer still lowers replicas' verbosity to warning.)
    import transformers

    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets_logger = logging.getLogger("datasets")
    for own in list(datasets_logger.handlers):
        datasets_logger.removeHandler(own)
    return handler


class _RunHandler(logging.StreamHandler):
    """The stderr handler `setup_logging` installs (a class of its own, so a second call finds and replaces it)."""
