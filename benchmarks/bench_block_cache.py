"""Decoding speed with and without the KV caches, in one run: tokens/s of `dftune.diffusion.decode(..., cache="none"
| "prefix" | "dual")` for a block-diffusion model and for a full-attention one, each cache's ratio to `none`, and the
share of its tokens equal to `none`'s.

    python benchmarks/bench_block_cache.py [--device cuda] [--prompt 128] [--new 256] [--block 32] [--json out.json]

A randomly initialised bidirectional Llama (`--hidden`, `--layers`, vocabulary `--vocab`), once marked as trained
with `diffusion_block_size: --block` (exact caches: every token equal, `dual` is `prefix` there) and once as it is,
full attention, decoded in blocks of `--block` (`block_length`; Fast-dLLM's approximate caches). A batch of
`--batch` random prompts, `--new` tokens, one token per step (steps = --new; `--threshold` for Fast-dLLM's
threshold decoding instead, which random weights rarely pass). Each mode runs once to warm up, then `--repeats`
times round-robin; the best time counts. tokens/s = batch x new tokens / seconds. A random model is unsure of
every token, so the full-attention share of equal tokens is a pessimistic one (a stale key flips near-ties).
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from dftune.diffusion import decode


CACHES = ("none", "prefix", "dual")


def random_model(args: argparse.Namespace, blocks: bool) -> torch.nn.Module:
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
                         intermediate_size=4 * args.hidden, max_position_embeddings=args.prompt + args.new,
                         is_causal=False, attn_implementation="sdpa")  # fmt: skip
    config.diffusion_block_size = args.block if blocks else None
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(args.device, getattr(torch, args.dtype)).eval()


def timed(run) -> tuple[float, torch.Tensor]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    ids = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, ids


def measure(model: torch.nn.Module, prompt: torch.Tensor, args: argparse.Namespace, keys: dict) -> dict:
    """tokens/s of each cache, its speed-up over `none` and the share of its tokens equal to `none`'s."""

    def run(cache: str) -> torch.Tensor:
        return decode(model, prompt, mask_token_id=args.vocab - 1, max_new_tokens=args.new, cache=cache, **keys).ids

    best: dict[str, float] = {}
    ids: dict[str, torch.Tensor] = {}
    for cache in CACHES:
        timed(lambda: run(cache))  # warm-up
    for _ in range(args.repeats):
        for cache in CACHES:
            seconds, ids[cache] = timed(lambda: run(cache))
            best[cache] = min(best.get(cache, float("inf")), seconds)
    tokens = args.batch * args.new
    return {
        "tokens_per_s": {cache: tokens / seconds for cache, seconds in best.items()},
        "speedup": {cache: best["none"] / best[cache] for cache in CACHES[1:]},
        "same_tokens": {cache: (ids[cache] == ids["none"]).double().mean().item() for cache in CACHES[1:]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("prompt", 128), ("new", 256), ("block", 32), ("batch", 1), ("hidden", 256), ("layers", 4),
                          ("vocab", 4096), ("repeats", 2)]:  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    prompt = torch.randint(0, args.vocab - 1, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(args.device)
    keys = {"threshold": args.threshold} if args.threshold is not None else {"steps": args.new}
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "setup": {k: v for k, v in vars(args).items() if k != "json"},
    }
    for kind in ("block", "full"):
        model = random_model(args, blocks=kind == "block")
        kind_keys = keys if kind == "block" else {**keys, "block_length": args.block}
        result[kind] = measure(model, prompt, args, kind_keys)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
