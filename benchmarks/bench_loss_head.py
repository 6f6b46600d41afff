"""Loss head memory and time: dftune's fused head, TRL's `fused_lm_head` and full logits, DFT and SFT, side by side.

    python benchmarks/bench_loss_head.py --tokens 2048 4096 8192 [--device cuda] [--json out.json]

- full: the seeds' head, ``logits = (hidden @ W.T).float()``, CE, a softmax copy for p (DFT), weighted sum;
- fused: `dftune.losses.fused_linear_loss`, one chunk of logits at a time (its default chunk for the device);
- trl: TRL 1.16's tiled head, through `trl.trainer.utils.add_fused_lm_head` on a causal LM whose backbone returns
  the benchmark's hidden states, and DFT as TRL's SFTTrainer computes it from the per-token log-probs.
Each (head, objective, tokens) runs in a fresh subprocess, measured as `head_harness.measure` says.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from head_harness import as_labels, in_fresh_process, measure, report

HEADS = ("full", "fused", "trl")
OBJECTIVES = ("dft", "sft")
FULL_BYTES_PER_LOGIT = 4 * 4  # measured ~3.3-3.6 logits-sized float32 buffers alive at the full head's peak


def full_head(objective: str):
    def head(hidden, weight, target):
        logits = (hidden @ weight.T).float()  # [N, V]
        ce = F.cross_entropy(logits, target, reduction="none")
        if objective == "sft":
            return ce.sum() / target.numel()
        p = torch.softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1).detach()
        return (ce * p).sum() / target.numel()

    return head


def fused_head(objective: str):
    def head(hidden, weight, target):
        from dftune.losses import fused_linear_loss

        batch_hidden, labels = as_labels(hidden, target)  # valid targets only, already shifted
        return fused_linear_loss(batch_hidden, weight, labels, objective=objective).loss

    return head


def trl_head(objective: str):
    """TRL's tiled head on a causal LM whose backbone returns the given hidden states (one row of N + 1 positions)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_outputs import BaseModelOutputWithPast
    from trl.trainer.utils import add_fused_lm_head

    class Backbone(torch.nn.Module):
        hidden: torch.Tensor

        def __init__(self, size: int) -> None:
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(2, size)  # the model's input embeddings must exist

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed_tokens

        def forward(self, *args, **kwargs):
            return BaseModelOutputWithPast(last_hidden_state=self.hidden)

    state = {}

    def head(hidden, weight, target):
        if "model" not in state:
            vocab, size = weight.shape
            config = LlamaConfig(vocab_size=2, hidden_size=size, intermediate_size=2, num_hidden_layers=0,
                                 num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=False)
            model = LlamaForCausalLM(config)
            model.model = Backbone(size)
            model.lm_head = torch.nn.Linear(size, vocab, bias=False, device="meta")
            model.lm_head.weight = weight  # the benchmark's [V, H] weight itself (a Parameter)
            model.config.vocab_size = vocab
            add_fused_lm_head(model)
            state["model"] = model
        model = state["model"]
        batch_hidden, labels = as_labels(hidden, target)
        model.model.hidden = batch_hidden
        out = model(input_ids=labels.clamp(min=0), labels=labels, fused_lm_head=True)
        per_token = -out.log_probs
        if objective == "dft":  # as TRL's SFTTrainer weighs it
            per_token = per_token * out.log_probs.exp().detach()
        return per_token.sum() / target.numel()

    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--max_full_gb", type=float, default=18.0, help="skip full-logits runs estimated above this")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, objective = args.one[0].split("-")
        make = {"full": full_head, "fused": fused_head, "trl": trl_head}[impl]
        result = measure(make(objective), int(args.one[1]), args.vocab, args.hidden, args.device)
        print(json.dumps({"variant": args.one[0], **result}))
        return

    results, skipped = [], []
    for objective in args.objectives:
        for tokens in args.tokens:
            for impl in HEADS:
                estimate = tokens * args.vocab * FULL_BYTES_PER_LOGIT / 2**30
                if impl == "full" and args.device == "cpu" and estimate > args.max_full_gb:
                    skipped.append(f"full {objective} at {tokens} tokens: ~{estimate:.0f} GiB estimated > "
                                   f"{args.max_full_gb} GiB RAM cap")  # fmt: skip
                    continue
                results.append(in_fresh_process(__file__, f"{impl}-{objective}", tokens,
                                                ["--vocab", str(args.vocab), "--hidden", str(args.hidden),
                                                 "--device", args.device]))  # fmt: skip
                print(results[-1], flush=True)
    table = markdown(results, args.objectives, args.tokens)
    report(table, results, skipped, args)


def markdown(results: list[dict], objectives: list[str], token_counts: list[int]) -> str:
    """One row per objective and token count: each head's peak and time, and the ratios to the full head and TRL's."""
    by = {(r["variant"], r["tokens"]): r for r in results}
    rows = ["| objective | tokens | full MiB | TRL MiB | dftune MiB | dftune / full | dftune / TRL | full s | TRL s "
            "| dftune s | dftune / TRL time |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for objective in objectives:
        for tokens in token_counts:
            full, ours, trl = (by.get((f"{impl}-{objective}", tokens)) for impl in ("full", "fused", "trl"))
            mib = lambda r: f"{r['peak_bytes'] / 2**20:,.0f}" if r else "skipped"  # noqa: E731
            sec = lambda r: f"{r['seconds']:.2f}" if r else "skipped"  # noqa: E731
            ratio = lambda a, b, key: f"{a[key] / b[key]:.3f}" if a and b and b[key] else "-"  # noqa: E731
            rows.append(f"| {objective} | {tokens} | {mib(full)} | {mib(trl)} | {mib(ours)} | "
                        f"{ratio(ours, full, 'peak_bytes')} | {ratio(ours, trl, 'peak_bytes')} | {sec(full)} | "
                        f"{sec(trl)} | {sec(ours)} | {ratio(ours, trl, 'seconds')} |")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    main()
