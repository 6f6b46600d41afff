"""Loss head memory and time: `fused_linear_loss` vs the seeds' logits-then-softmax head, DFT, side by side.

    python benchmarks/bench_loss_head.py --tokens 2048 4096 8192 [--device cuda] [--json out.json]

Each (variant, tokens) runs in a fresh subprocess, measured as `head_harness.measure` says.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from head_harness import as_labels, in_fresh_process, measure

SEED_BYTES_PER_LOGIT = 4 * 4  # measured ~3.3-3.6 logits-sized float32 buffers alive at the seed head's peak


def seed_head(hidden, weight, target):
    """The seeds' DFT: full logits, upcast, CE, a softmax copy for p, weighted sum."""
    logits = (hidden @ weight.T).float()  # [N, V]
    ce = F.cross_entropy(logits, target, reduction="none")
    p = torch.softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1).detach()
    return (ce * p).sum() / target.numel()


def fused_head(hidden, weight, target):
    from dftune.losses import fused_linear_loss

    batch_hidden, labels = as_labels(hidden, target)  # valid targets only, already shifted
    return fused_linear_loss(batch_hidden, weight, labels, objective="dft", alpha=1.0).loss


def one(variant: str, tokens: int, vocab: int, hidden_size: int, device: str) -> dict:
    """Run in a fresh process: peak bytes beyond inputs + weight gradient, and seconds per loss + backward."""
    head = {"seed": seed_head, "fused": fused_head}[variant]
    return {"variant": variant, **measure(head, tokens, vocab, hidden_size, device)}


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
            results.append(in_fresh_process(__file__, variant, tokens, ["--vocab", str(args.vocab), "--hidden",
                                                                        str(args.hidden), "--device", args.device]))
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
