"""dftune.runlog: info once from the main process, warnings from every process tagged with its rank."""

from __future__ import annotations

import io
import logging
import os
import sys

import processes
import pytest

from dftune.runlog import ProcessInfo, RankFilter, process_info, setup_logging


def emit(info: ProcessInfo) -> str:
    """What one process prints for an info and a warning line, through the filter and format of setup_logging."""
    stream = io.StringIO()
    handler = setup_logging(info=info)
    handler.setStream(stream)
    try:
        log = logging.getLogger("dftune.test")
        log.info("header")
        log.warning("careful")
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue()


def test_rank_filter():
    main, replica = emit(ProcessInfo(0, 2, "torchrun")), emit(ProcessInfo(1, 2, "torchrun"))
    assert "[rank 0] dftune.test: header" in main and "[rank 0] dftune.test: careful" in main
    assert "header" not in replica and "[rank 1] dftune.test: careful" in replica
    single = emit(ProcessInfo(0, 1, "python"))
    assert "I dftune.test: header" in single and "rank" not in single
    assert RankFilter(ProcessInfo(3, 4, "x")).filter(logging.makeLogRecord({"levelno": logging.ERROR}))


def test_process_info_from_launcher_environment():
    assert process_info({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}) == ProcessInfo(1, 2, "torchrun")
    assert process_info({"LOCAL_RANK": "0", "WORLD_SIZE": "8", "CROSS_RANK": "0"}).launcher == "deepspeed"
    accelerate_multi = {"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x", "ACCELERATE_MIXED_PRECISION": "no"}
    assert process_info(accelerate_multi).launcher == "accelerate launch"
    assert process_info({}) == ProcessInfo(0, 1, "python")


def test_process_info_counts_nodes_from_each_launcher():
    """RANK is global over the nodes; the header's "2 nodes x 8 processes" comes from the launcher's node count."""
    torchrun = {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "GROUP_WORLD_SIZE": "2",
                "TORCHELASTIC_RUN_ID": "x"}  # fmt: skip
    assert process_info(torchrun) == ProcessInfo(9, 16, "torchrun", nodes=2)
    assert process_info(torchrun).layout() == "2 nodes x 8 processes"
    assert process_info({"RANK": "1", "WORLD_SIZE": "2", "CROSS_SIZE": "2", "CROSS_RANK": "1"}).layout() == (
        "2 nodes x 1 process")
    assert process_info({"RANK": "0", "WORLD_SIZE": "12", "SLURM_PROCID": "0", "SLURM_NNODES": "3"}).nodes == 3
    assert process_info({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}).nodes == 2  # no node count given
    assert process_info({"SLURM_NNODES": "4"}).nodes == 1  # a one-process job step inside a 4-node allocation
    assert process_info({"RANK": "0", "WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1"}).layout() == ""  # one node


@pytest.mark.slow
def test_two_processes_print_the_header_once(tiny_model_dir, tmp_path, torchrun):
    """torchrun, 2 CPU processes (gloo): one header, one summary, and no info line printed twice."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(
        f'{{"messages": [{{"role": "user", "content": "{i}+1?"}}, {{"role": "assistant", "content": "{i + 1}"}}]}}\n'
        for i in range(16)
    ), encoding="utf-8")  # fmt: skip
    argv = [
        *torchrun(), "-m", "dftune", "train", "--model_name_or_path", str(tiny_model_dir), "--data_files", str(data),
        "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "4", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = processes.run(argv, step="dftune train under torchrun (2 processes)", timeout=300, env=env,
                           capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert err.count("---- dftune run") == 1 and err.count("---- dftune done") == 1, err[-3000:]
    assert "launcher         torchrun, device cpu" in err
    assert "parallelism      DDP, world size 2, backend gloo" in err
    assert "8 = 4 per device x 1 accumulation x 2 processes" in err
    ours = [line.split(" ", 1)[1] for line in err.splitlines() if line[:2].isdigit() and " dftune." in line]
    assert ours and all(line.startswith("I [rank 0] ") for line in ours if line.startswith("I ")), ours
    assert len(ours) == len(set(ours)), ours  # info lines once, not once per process
