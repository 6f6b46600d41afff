"""Loss head memory and time: `fused_linear_loss` vs the seeds' logits-then-softmax head, DFT, side by side.

    python benchmarks/bench_loss_head.py --tokens 2048 4096 8192 [--device cuda] [--json out.json]

Each (variant, tokens) runs in a fresh subprocess. CPU memory: ru_maxrss (the process's peak resident set)
after the run minus ru_maxrss at a baseline taken once the inputs exist and a [V, H] buffer the size of the
weight gradient has been touched and freed, after a small warm-up run (so library workspaces are in the
baseline too). The difference is the peak the loss head needs beyond its inputs and the weight gradient.
CUDA: torch.cuda.max_memory_allocated the same way. Time: one run after the measured run, loss + backward.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SEED_BYTES_PER_LOGIT = 4 * 4  # measured ~3.3-3.6 logits-sized float32 buffers alive at the seed head's peak


def seed_head(hidden, weight, target):
    """The seeds' DFT: full logits, upcast, CE, a softmax copy for p, weighted sum."""
    logits = (hidden @ weight.T).float()  # [N, V]
    ce = F.cross_entropy(logits, target, reduction="none")
    p = torch.softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1).detach()
    return (ce * p).sum() / target.numel()


def fused_head(hidden, weight, target):
    from dftune.losses import fused_linear_loss

    # Valid targets only, already shifted: labels[:, t + 1] = target[t], the first label ignored.
    labels = torch.cat([target.new_full((1,), -100), target])[None]  # [1, N + 1]
    hidden = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[1])])[None]  # [1, N + 1, H]
    return fused_linear_loss(hidden, weight, labels, objective="dft", alpha=1.0).loss


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def one(variant: str, tokens: int, vocab: int, hidden_size: int, device: str) -> dict:
    """Run in a fresh process: peak bytes beyond inputs + weight gradient, and seconds per loss + backward."""
    torch.manual_seed(0)
    head = {"seed": seed_head, "fused": fused_head}[variant]

    def run(n: int) -> float:
        h = hidden[:n].detach().requires_grad_()
        weight.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        head(h, weight, target[:n]).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    hidden = torch.randn(tokens, hidden_size, device=device)
    weight = (torch.randn(vocab, hidden_size, device=device) / hidden_size**0.5).requires_grad_()
    target = torch.randint(0, vocab, (tokens,), device=device)
    run(16)  # warm-up: BLAS and allocator workspaces belong to the baseline
    weight.grad = None
    grad_sized = torch.ones_like(weight)  # touch a [V, H] buffer: the weight gradient is not the head's overhead
    del grad_sized
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() + weight.numel() * weight.element_size()
    else:
        base = peak_bytes(device)
    run(tokens)
    peak = peak_bytes(device) - base
    seconds = run(tokens)
    return {"variant": variant, "tokens": tokens, "peak_bytes": peak, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max_seed_gb", type=float, default=18.0, help="skip seed runs estimated above this")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = one(args.one[0], int(args.one[1]), args.vocab, args.hidden, args.device)
        print(json.dumps(result))
        return

    results, skipped = [], []
    for tokens in args.tokens:
        for variant in ("seed", "fused"):
            estimate = tokens * args.vocab * SEED_BYTES_PER_LOGIT / 2**30
            if variant == "seed" and args.device == "cpu" and estimate > args.max_seed_gb:
                skipped.append(f"seed at {tokens} tokens: ~{estimate:.0f} GiB estimated > {args.max_seed_gb} GiB RAM cap")
                continue
            cmd = [sys.executable, __file__, "--one", variant, str(tokens), "--vocab", str(args.vocab),
                   "--hidden", str(args.hidden), "--device", args.device]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    rows = ["| tokens | seed peak MiB | fused peak MiB | memory ratio | seed s | fused s | time ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["variant"], r["tokens"]): r for r in results}
    for tokens in args.tokens:
        fused, seed = by.get(("fused", tokens)), by.get(("seed", tokens))
        mib = lambda r: f"{r['peak_bytes'] / 2**20:,.0f}" if r else "skipped"  # noqa: E731
        sec = lambda r: f"{r['seconds']:.2f}" if r else "skipped"  # noqa: E731
        mem_ratio = f"{fused['peak_bytes'] / seed['peak_bytes']:.3f}" if fused and seed else "-"
        time_ratio = f"{fused['seconds'] / seed['seconds']:.2f}" if fused and seed else "-"
        rows.append(f"| {tokens} | {mib(seed)} | {mib(fused)} | {mem_ratio} | {sec(seed)} | {sec(fused)} | {time_ratio} |")
    table = "\n".join(rows)
    print(table)
    for line in skipped:
        print("skipped:", line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "skipped": skipped, "table": table, "vocab": args.vocab,
                       "hidden": args.hidden, "device": args.device}, f, indent=1)


if __name__ == "__main__":
    main()
