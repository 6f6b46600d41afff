"""`make bench-gpu`: one GPU, under 8 minutes, one JSON and one markdown table (benchmarks/gpu/results.{json,md}).

    python benchmarks/gpu/bench_gpu.py [--tokens 8192 32768] [--steps 20] [--out benchmarks/gpu]

1. Loss head in bf16 at V = 151936, H = 896: dftune's fused head, TRL 1.16's `fused_lm_head`, Liger-Kernel's fused
   linear cross-entropy with `use_token_scaling` (DFT with alpha 1; when `liger-kernel` is installed) and full
   logits, DFT and SFT: peak memory beyond inputs and weight gradient, and time for loss + backward.
2. A short training run of the `small-llama` preset with sdpa, and with flash-attention 2 when it is installed.
3. DeepSpeed ZeRO-3 on one GPU (the same run under torchrun with configs/deepspeed/zero3.json).
4. One QLoRA DPO step (4-bit base, LoRA; needs bitsandbytes).
A part that cannot run here is a row saying why, never an estimate. Requires CUDA; `--plan` prints what would run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the loss-head harness and heads

HEADS = ("full", "trl", "liger", "fused")
OBJECTIVES = ("dft", "sft")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each training run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu")
    parser.add_argument("--plan", action="store_true", help="print the runs and exit (no GPU needed)")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(t < 1 for t in args.tokens) or args.steps < 1:
        parser.error("--tokens and --steps must be positive")
    return args


def plan(args: argparse.Namespace) -> list[dict]:
    """Every run of the benchmark, in order: loss-head variants, then the training runs."""
    runs = [{"part": "head", "variant": f"{head}-{objective}", "tokens": tokens}
            for objective in OBJECTIVES for tokens in args.tokens for head in HEADS]
    runs += [{"part": "train", "variant": attention} for attention in ("sdpa", "flash_attention_2")]
    runs += [{"part": "zero3", "variant": "zero3-1gpu"}, {"part": "qlora-dpo", "variant": "qlora-dpo-step"}]
    return runs


def missing_requirement(run: dict) -> str | None:
    """Why `run` cannot run on this machine (a package that is not installed), or None."""
    needs = {"liger": "liger_kernel", "flash_attention_2": "flash_attn", "zero3-1gpu": "deepspeed",
             "qlora-dpo-step": "bitsandbytes"}
    for key, package in needs.items():
        if key in run["variant"] and importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
    return None


def liger_head(objective: str):
    def head(hidden, weight, target):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss(use_token_scaling=objective == "dft")
        return loss(weight, hidden, target)

    return head


def head_run(variant: str, tokens: int, args: argparse.Namespace) -> dict:
    """One loss-head measurement, in this (fresh) process, in bf16 on CUDA."""
    import torch
    from bench_loss_head import full_head, fused_head, trl_head
    from head_harness import measure

    impl, objective = variant.split("-")
    make = {"full": full_head, "fused": fused_head, "trl": trl_head, "liger": liger_head}[impl]
    return measure(make(objective), tokens, args.vocab, args.hidden, "cuda", dtype=torch.bfloat16)


def train_command(run: dict, output_dir: Path, args: argparse.Namespace) -> list[str]:
    """The `dftune train` command line of a training run (small-llama, bf16, DFT)."""
    base = ["--model_name_or_path", str(output_dir.parent / "small-llama"), "--data_files",
            str(output_dir.parent / "data.jsonl"), "--output_dir", str(output_dir), "--bf16", "true",
            "--torch_dtype", "bfloat16", "--dft_alpha", "1.0", "--max_steps", str(args.steps),
            "--per_device_train_batch_size", "8", "--logging_steps", str(args.steps), "--save_strategy", "no",
            "--report_to", "none", "--max_length", "512"]  # fmt: skip
    if run["part"] == "train":
        return [sys.executable, "-m", "dftune", "train", *base, "--attn_implementation", run["variant"]]
    if run["part"] == "zero3":
        zero3 = str(ROOT / "configs" / "deepspeed" / "zero3.json")
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "dftune", "train",
                *base, "--deepspeed", zero3]  # fmt: skip
    dpo = [arg if arg != str(output_dir.parent / "data.jsonl") else str(output_dir.parent / "pairs.jsonl") for arg in base]
    return [sys.executable, "-m", "dftune", "train", *dpo, "--stage", "dpo", "--quantization_bit", "4",
            "--finetuning_type", "lora", "--max_steps", "1"]  # fmt: skip


def markdown(results: list[dict], gpu: str) -> str:
    """The results as the markdown that docs/benchmarks.md includes."""
    lines = [f"Measured by `make bench-gpu` on one {gpu}.", "",
             "| part | run | tokens | peak MiB | seconds | note |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        peak = f"{r['peak_bytes'] / 2**20:,.0f}" if "peak_bytes" in r else "-"
        seconds = f"{r['seconds']:.3f}" if "seconds" in r else "-"
        lines.append(f"| {r['part']} | {r['variant']} | {r.get('tokens', '-')} | {peak} | {seconds} | "
                     f"{r.get('note', '')} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(head_run(args.one[0], int(args.one[1]), args)))
        return
    runs = plan(args)
    if args.plan:
        print("\n".join(json.dumps(run) for run in runs))
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("make bench-gpu needs a CUDA GPU; `--plan` lists its runs")
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    prepare(work)
    results = [execute(run, work, args) for run in runs]
    gpu = torch.cuda.get_device_name()
    (args.out / "results.json").write_text(json.dumps({"gpu": gpu, "results": results}, indent=1))
    (args.out / "results.md").write_text(markdown(results, gpu) + "\n")
    print(markdown(results, gpu))


def prepare(work: Path) -> None:
    """The small-llama preset, synthetic chat data, and preference pairs for the DPO step."""
    from bench_preprocess import synthetic_records

    from dftune.models.presets import init_model

    init_model("small-llama", work / "small-llama")
    with open(work / "data.jsonl", "w", encoding="utf-8") as f:
        for record in synthetic_records(400):
            f.write(json.dumps(record) + "\n")
    with open(work / "pairs.jsonl", "w", encoding="utf-8") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": f"{i} + {i} =", "chosen": str(2 * i), "rejected": str(2 * i + 1)}) + "\n")


def execute(run: dict, work: Path, args: argparse.Namespace) -> dict:
    """One run: its measurement, or a note saying why it did not run."""
    reason = missing_requirement(run)
    if reason:
        return {**run, "note": f"not run: {reason}"}
    if run["part"] == "head":
        cmd = [sys.executable, __file__, "--one", run["variant"], str(run["tokens"]), "--vocab", str(args.vocab),
               "--hidden", str(args.hidden)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return {**run, "note": f"failed: {done.stderr.strip().splitlines()[-1][:120]}"}
        return {**run, **json.loads(done.stdout.strip().splitlines()[-1])}
    started = time.perf_counter()
    done = subprocess.run(train_command(run, work / run["variant"], args), capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode:
        return {**run, "note": f"failed: {done.stderr.strip().splitlines()[-1][:120]}"}
    return {**run, "seconds": seconds, "note": f"{args.steps} steps end to end" if run["part"] != "qlora-dpo" else ""}


if __name__ == "__main__":
    main()
