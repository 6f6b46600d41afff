"""Run every benchmark once, side by side, and write benchmarks/results.json and docs/benchmarks.md.

    python benchmarks/run_all.py [--device cuda]      # `make bench`

Not part of `make test`. The markdown is generated from this run's JSON: do not edit the tables by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
METHOD = """## Method

- **Loss head.** Full (the seeds' style): `logits = (hidden @ W.T).float()`, `F.cross_entropy(..., reduction="none")`,
  a softmax copy for `p` (DFT), `(ce * p).sum() / N`, backward. TRL: a causal LM whose backbone returns the
  benchmark's hidden states, patched by `add_fused_lm_head` (tiles of 32768 tokens), `model(..., fused_lm_head=True)`
  and DFT from its per-token log-probs as `SFTTrainer(loss_type="dft")` computes it. dftune:
  `fused_linear_loss(..., objective="dft" | "sft")` with its default chunk (on CPU `2**23 // V` = 55 tokens at
  V = 151936). Each (variant, tokens) runs in a fresh subprocess:
  inputs are allocated, a 16-token warm-up run fills the BLAS/allocator workspaces, a `[V, H]` buffer the size
  of the weight gradient is touched and freed, and `ru_maxrss` (peak resident set) is read as the baseline.
  The measured run's `ru_maxrss` minus that baseline is the peak the head needs beyond its inputs and the
  weight gradient (on CUDA: `torch.cuda.max_memory_allocated` the same way). Time: a second run, loss +
  backward, wall clock. The machine's 2 cores are shared: treat time ratios within ~10% as noise.
- **Seed style at 8192 tokens** is skipped on CPU when its estimate (4 logits-sized float32 buffers:
  logits, log-softmax, softmax copy, gradient) exceeds 18 GiB: 8192 x 151936 x 16 B = 18.5 GiB.
- **Throughput.** `small-llama` preset (random init, byte-level vocabulary of 259: the loss head is cheap here,
  so this measures the data layout and the trainer, not the fused head), synthetic multi-turn chat records
  of varying length, DFT, the same batch size, optimiser and steps for every run. tokens/s = mean record
  length x steps x batch / train_runtime (real tokens, not padding). TRL 1.16 `SFTTrainer` with
  `SFTConfig(loss_type="dft")` gets the same `input_ids` and `labels`, padded batches. The contenders run
  round-robin, best of two (the first run in a process pays one-off start-up costs). Packing places samples
  into rows no longer than the batch's longest sample: one row for the whole batch was 1.7x slower than
  padding here, because sdpa without a varlen kernel computes attention over the full row.
- **EAFT and ASFT heads.** Full: LLaMA-Factory's formulas on `(hidden @ W.T).float()` (EAFT: CE, entropy of the
  softmax over the top-20 logits / 3; ASFT: DFT plus 0.1 x `F.kl_div(log_softmax(policy), softmax(reference))`
  from the reference's full float32 logits, computed without gradient). Fused: `fused_linear_loss(...,
  objective="eaft" | "asft", ref_hidden=..., ref_weight=...)`. Same harness as the loss head.
- **Start-up.** `benchmarks/bench_startup.py`: `python -m dftune --help` (and `data check --help`, `train --help`)
  against `python -c "import torch"`, each a fresh process timed from start to exit, run round-robin five times;
  the table gives the median, the extremes and the median's ratio to `import torch`'s median.
- Liger-Kernel's fused linear cross-entropy (Triton, CUDA only) and every GPU figure are in `make bench-gpu`
  (`benchmarks/gpu/`); see the GPU section above.
"""


def gpu_section() -> str:
    """The GPU table `make bench-gpu` wrote (benchmarks/gpu/results.md), or the statement that it was not measured."""
    table = ROOT / "benchmarks" / "gpu" / "results.md"
    if table.is_file():
        return table.read_text().strip()
    return ("Not measured yet: no CUDA machine has run `make bench-gpu` for this version. No GPU number on this page "
            "is estimated; run `make bench-gpu` on one GPU (under 8 minutes) to fill this section.")


def bench(script: str, args: list[str], out: Path) -> dict:
    path = ROOT / "benchmarks" / f"{script}.py"
    subprocess.run([sys.executable, str(path), *args, "--json", str(out)], cwd=ROOT, check=True)
    return json.loads(out.read_text())


BLOCK_CACHE_SETUP = ["--prompt", "32", "--new", "64", "--block", "16", "--repeats", "1", "--hidden", "128",
                     "--layers", "2"]
"""Small enough for the shared 2-core CPU (about a minute for the six runs)."""


def block_cache_table(result: dict) -> str:
    """One row per (model, cache): tokens/s, the ratio to `none` and the share of tokens equal to `none`'s."""
    rows = ["| model | cache | tokens/s | vs none | tokens equal to none's |", "|---|---|---:|---:|---:|"]
    for kind, name in [("block", "block-diffusion (exact)"), ("full", "full attention (approximate)")]:
        part = result[kind]
        rows.append(f"| {name} | `none` | {part['tokens_per_s']['none']:.1f} | 1.0x | |")
        for cache in ("prefix", "dual"):
            rows.append(f"| | `{cache}` | {part['tokens_per_s'][cache]:.1f} | {part['speedup'][cache]:.1f}x "
                        f"| {part['same_tokens'][cache]:.0%} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="training steps per throughput run")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory() as tmp:
        head = bench("bench_loss_head", ["--device", args.device], Path(tmp) / "head.json")
        objectives = bench("bench_objective_heads", ["--device", args.device], Path(tmp) / "objectives.json")
        reference = bench("bench_reference_memory", [], Path(tmp) / "reference.json")
        throughput = bench("bench_throughput", ["--device", args.device, "--steps", str(args.steps)],
                           Path(tmp) / "throughput.json")
        preprocess = bench("bench_preprocess", ["--long"], Path(tmp) / "preprocess.json")
        startup = bench("bench_startup", [], Path(tmp) / "startup.json")
        block_cache = bench("bench_block_cache", ["--device", args.device, *BLOCK_CACHE_SETUP],
                            Path(tmp) / "block_cache.json")
    results = {"loss_head": head, "objective_heads": objectives, "reference_memory": reference,
               "throughput": throughput, "preprocess": preprocess, "startup": startup, "block_cache": block_cache,
               "started": started}
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(results, indent=1))
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    skipped = "".join(f"\n- skipped: {line}" for line in head["skipped"])
    objectives_skipped = "".join(f"\n- skipped: {line}" for line in objectives["skipped"])
    text = f"""# Benchmarks

Generated by `python benchmarks/run_all.py --device {args.device}` (`make bench`) on {started}, {machine}.
Raw numbers: `benchmarks/results.json`. Method and caveats: see the end of this page.

## 1. Loss head: dftune's fused head, TRL's `fused_lm_head` and full logits (V = {head['vocab']}, H = {head['hidden']}, float32, {head['device']})

Peak memory beyond the inputs and the weight gradient, and seconds for loss + backward, DFT and SFT; "full" is the
seeds' logits-then-softmax head, "TRL" TRL 1.16's tiled head (`trl.trainer.utils.add_fused_lm_head`, DFT as its
SFTTrainer computes it), "dftune" `fused_linear_loss` with its default chunk for the device.

{head['table']}
{skipped}

## 2. EAFT, ASFT and masked-diffusion heads: fused vs full float32 logits (V = {objectives['vocab']}; dllm V = 126,464; H = {objectives['hidden']}, {objectives['device']})

LLaMA-Factory computes EAFT and ASFT on the whole batch's float32 logits, ASFT with the reference model's full
logits too; LLaDA-style SFT makes the logits of every position and keeps the masked ones (half of them here).
dftune's fused head holds one chunk of each, of the masked positions only for stage dllm. Peak memory beyond the
inputs (both models' hidden states and output layers) and the weight gradient, and seconds for loss + backward;
ratios are fused / full.

{objectives['table']}
{objectives_skipped}

## 3. ASFT's reference: no second copy with LoRA (SmolLM2-135M-Instruct, {reference['steps']} steps, cpu)

Peak resident memory of `dftune train` in a fresh process. With LoRA the reference is the policy with its adapters
disabled; with full fine-tuning it is a frozen copy of the starting model (one more copy of the weights).

{reference['table']}

## 4. Training throughput ({throughput['device']}, small-llama, {throughput['records']} chat records, batch {throughput['batch']}, {throughput['steps']} steps, DFT)

{throughput['table']}

## 5. Preprocessing long conversations (CPU, byte-level tokenizer, one process per case)

Conversations of 2k-15k tokens, a quarter opening with a prompt over the budget, and one 50 MB reply: read, validate,
tokenise. `split` (the default) keeps every record with a reply, cut at turn boundaries; `truncate` is the old
first-`max_length`-tokens behaviour. Peak RSS is VmHWM; "peak - imports" is preprocessing's own memory.

{preprocess['table']}

## 6. Start-up: `dftune --help` answers in {startup['help_ratio']:.2f}x the time of `import torch` (median of {startup['repeats']}, same run)

Each command in a fresh interpreter, round-robin, wall clock to exit. Every `--help` but `train`'s imports neither
torch nor transformers (a test checks it); `train --help` lists TrainingArguments' keys and the stages', so it
imports transformers, torch and the stage modules (TRL, datasets and peft with them).

{startup['table']}

## 7. Diffusion decoding with and without the KV caches ({block_cache['device']}, one run)

`benchmarks/bench_block_cache.py {' '.join(BLOCK_CACHE_SETUP)}`: a random bidirectional Llama, once marked as
trained with `diffusion_block_size` (its caches are exact, `dual` is `prefix` there) and once full attention in
blocks of the same length (Fast-dLLM's approximate caches, refreshed at each block's first step), one token per
step; `prefix` runs the block (and, full attention, the suffix) per step, `dual` the block alone. A random model
is unsure of every token, so its share of equal tokens is a pessimistic one.

{block_cache_table(block_cache)}

## GPU

{gpu_section()}

{METHOD}"""
    DOC.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
