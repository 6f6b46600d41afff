"""`make bench-gpu`: what runs on CPU (argument handling, the plan, the table) here; the real run on CUDA only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import processes
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "bench_gpu.py"
spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
bench_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_gpu)


def test_plan_covers_every_part_and_head():
    runs = bench_gpu.plan(bench_gpu.parse_args(["--tokens", "8192", "32768"]))
    heads = {(r["variant"], r["tokens"]) for r in runs if r["part"] == "head"}
    assert heads == {(f"{h}-{o}", t) for h in ("full", "trl", "liger", "fused") for o in ("dft", "sft")
                     for t in (8192, 32768)}  # fmt: skip
    assert [r["part"] for r in runs if r["part"] != "head"] == ["train", "train", "zero3", "qlora-dpo"]


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--tokens", "0"])
    assert "--tokens and --steps must be positive" in capsys.readouterr().err


def test_table_says_what_ran_and_why_not():
    results = [
        {"part": "head", "variant": "fused-dft", "tokens": 8192, "peak_bytes": 3 * 2**20, "seconds": 0.25},
        {"part": "head", "variant": "liger-dft", "tokens": 8192, "note": "not run: liger_kernel is not installed"},
    ]
    table = bench_gpu.markdown(results, "NVIDIA H200")
    assert "on one NVIDIA H200" in table
    assert "| head | fused-dft | 8192 | 3 | 0.250 |  |" in table
    assert "| head | liger-dft | 8192 | - | - | not run: liger_kernel is not installed |" in table


def test_a_missing_package_is_named_not_estimated(monkeypatch):
    monkeypatch.setattr(bench_gpu.importlib.util, "find_spec", lambda name: None)
    assert bench_gpu.missing_requirement({"variant": "qlora-dpo-step"}) == "bitsandbytes is not installed"
    assert bench_gpu.missing_requirement({"variant": "fused-dft"}) is None


def test_zero3_runs_under_torchrun_with_the_repo_config(tmp_path):
    args = bench_gpu.parse_args([])
    cmd = bench_gpu.train_command({"part": "zero3", "variant": "zero3-1gpu"}, tmp_path / "zero3", args)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "1"]
    assert cmd[cmd.index("--deepspeed") + 1].endswith("configs/deepspeed/zero3.json")


@pytest.mark.cuda
def test_bench_gpu_runs(tmp_path):
    done = processes.run([sys.executable, str(SCRIPT), "--tokens", "1024", "--steps", "2", "--out", str(tmp_path)],
                         step="benchmarks/gpu/bench_gpu.py", timeout=1800, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| head | fused-dft | 1024 |" in (tmp_path / "results.md").read_text()
