"""EAFT, ASFT and masked-diffusion heads: dftune's fused head vs full float32 logits (LLaMA-Factory's EAFT and ASFT,
of both models for ASFT; LLaDA-style SFT for stage dllm).

    python benchmarks/bench_objective_heads.py --tokens 2048 [--dllm_tokens 4096] [--device cuda] [--json out.json]

Stage dllm at LLaDA's vocabulary (126,464) and 4096 positions, about half of them masked: the full head makes
the logits of every position, as LLaDA's loss does, then takes CE at the masked ones; the fused head computes the
masked positions only, chunk by chunk.

LLaMA-Factory computes EAFT and ASFT on `logits.float()` of the whole batch, ASFT with the reference model's full
logits too. The fused head holds one [chunk, V] block of the policy's logits (and one of the reference's) at a
time. Each (variant, tokens) runs in a fresh subprocess, measured as `head_harness.measure` says; the
reference's hidden states and output layer are inputs (in the baseline), as the policy's are.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from head_harness import as_labels, in_fresh_process, measure, report

# Logits-sized float32 buffers alive at the full-logits heads' peak (estimated, for the RAM cap only).
FULL_BUFFERS = {"eaft": 4, "asft": 7, "dllm": 4}
DLLM_VOCAB = 126464  # LLaDA-8B's


def full_eaft(hidden, weight, target):
    """LLaMA-Factory's EAFT: CE on float32 logits, weight (H_top20 / 3) ** alpha from the detached logits."""
    logits = (hidden @ weight.T).float()  # [N, V]
    ce = F.cross_entropy(logits, target, reduction="none")
    with torch.no_grad():
        log_q = torch.log_softmax(torch.topk(logits, k=20, dim=-1).values, dim=-1)
        entropy = -(log_q.exp() * log_q).sum(dim=-1)
    return (ce * entropy / 3.0).sum() / target.numel()


def full_asft(hidden, weight, target, ref_hidden, ref_weight):
    """LLaMA-Factory's ASFT: DFT on float32 logits plus 0.1 x token KL(ref || policy) from both full logits."""
    logits = (hidden @ weight.T).float()  # [N, V]
    with torch.no_grad():
        ref_logits = (ref_hidden @ ref_weight.T).float()  # [N, V]
    ce = F.cross_entropy(logits, target, reduction="none")
    dft = (ce * torch.exp(-ce).detach()).sum() / target.numel()
    kl = F.kl_div(F.log_softmax(logits, dim=-1), F.softmax(ref_logits, dim=-1), reduction="none").sum(dim=-1)
    return dft + 0.1 * kl.sum() / target.numel()


def fused(objective: str):
    def head(hidden, weight, target, **reference):
        from dftune.losses import fused_linear_loss

        batch_hidden, labels = as_labels(hidden, target)
        if reference:
            reference = {"ref_hidden": as_labels(reference["ref_hidden"], target)[0], "ref_weight": reference["ref_weight"]}
        return fused_linear_loss(batch_hidden, weight, labels, objective=objective, **reference).loss

    return head


def masked_half(target):
    """Labels [1, N] with every other position masked (a target) and the rest -100, and t = 0.5 for the row."""
    labels = target.clone()[None]
    labels[:, 1::2] = -100
    return labels, torch.tensor([0.5], device=target.device)


def full_dllm(hidden, weight, target):
    """LLaDA-style SFT: the logits of every position, float32, then CE / t at the masked ones."""
    from dftune.losses import masked_diffusion_loss

    labels, t = masked_half(target)
    logits = (hidden @ weight.T).float()[None]  # [1, N, V]
    return masked_diffusion_loss(logits, labels, t, num_answer_tokens=target.numel()).loss


def fused_dllm(hidden, weight, target):
    from dftune.losses import fused_diffusion_objective

    labels, t = masked_half(target)
    return fused_diffusion_objective("sft", hidden[None], weight, labels, t, num_answer_tokens=target.numel()).loss


HEADS = {
    ("full", "dllm"): full_dllm,
    ("fused", "dllm"): fused_dllm,
    ("full", "eaft"): full_eaft,
    ("fused", "eaft"): fused("eaft"),
    ("full", "asft"): full_asft,
    ("fused", "asft"): fused("asft"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dllm_tokens", type=int, nargs="+", default=[4096])
    parser.add_argument("--dllm_vocab", type=int, default=DLLM_VOCAB)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max_full_gb", type=float, default=18.0, help="skip full-logits runs estimated above this")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, objective = args.one[0].split("-")
        vocab = args.dllm_vocab if objective == "dllm" else args.vocab
        result = measure(HEADS[impl, objective], int(args.one[1]), vocab, args.hidden, args.device,
                         with_reference=objective == "asft")
        print(json.dumps({"variant": args.one[0], **result}))
        return

    results, skipped = [], []
    for objective in ("eaft", "asft", "dllm"):
        for tokens in args.dllm_tokens if objective == "dllm" else args.tokens:
            vocab = args.dllm_vocab if objective == "dllm" else args.vocab
            for impl in ("full", "fused"):
                estimate = tokens * vocab * 4 * FULL_BUFFERS[objective] / 2**30
                if impl == "full" and args.device == "cpu" and estimate > args.max_full_gb:
                    skipped.append(f"full {objective} at {tokens} tokens: ~{estimate:.0f} GiB > {args.max_full_gb} GiB")
                    continue
                results.append(in_fresh_process(__file__, f"{impl}-{objective}", tokens,
                                                ["--vocab", str(args.vocab), "--dllm_vocab", str(args.dllm_vocab),
                                                 "--hidden", str(args.hidden), "--device", args.device]))
                print(results[-1], flush=True)
    table = markdown(results, sorted({r["tokens"] for r in results}))
    report(table, results, skipped, args)


def markdown(results: list[dict], token_counts: list[int]) -> str:
    """One row per objective and token count; ratios are fused / full."""
    by = {(r["variant"], r["tokens"]): r for r in results}
    rows = ["| objective | tokens | full-logits peak MiB | fused peak MiB | memory ratio | full s | fused s | time ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for objective in ("eaft", "asft", "dllm"):
        for tokens in token_counts:
            if (f"fused-{objective}", tokens) not in by and (f"full-{objective}", tokens) not in by:
                continue
            full, fast = by.get((f"full-{objective}", tokens)), by.get((f"fused-{objective}", tokens))
            mib = lambda r: f"{r['peak_bytes'] / 2**20:,.0f}" if r else "skipped"  # noqa: E731
            sec = lambda r: f"{r['seconds']:.2f}" if r else "skipped"  # noqa: E731
            mem = f"{fast['peak_bytes'] / full['peak_bytes']:.3f}" if full and fast else "-"
            time_ratio = f"{fast['seconds'] / full['seconds']:.2f}" if full and fast else "-"
            rows.append(f"| {objective} | {tokens} | {mib(full)} | {mib(fast)} | {mem} | {sec(full)} | {sec(fast)} "
                        f"| {time_ratio} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
