"""Exact-match accuracy of a trained diffusion model on held-out prompts (examples/diffusion), and the denoising
steps it took per prompt: a fixed schedule (`--steps`) or confidence-threshold unmasking (`--threshold`).

Run: python examples/diffusion/eval_reverse.py outputs/dllm-reverse [--steps 8 | --threshold 0.9] [--block_length 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from dftune.cli.decoding_flags import add_decoding_flags, decoding_options
from dftune.config.model_args import ModelArguments
from dftune.diffusion import decode_replies
from dftune.models.loading import load_diffusion_model, resolve_mask_token_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--eval_file", default=str(Path(__file__).parent / "reverse_eval.jsonl"))
    add_decoding_flags(parser)  # dftune generate's and eval's decoding flags (--steps, --threshold, --remasking, ...)
    parser.set_defaults(max_new_tokens=8)
    args = parser.parse_args()
    options = decoding_options(args)
    records = [json.loads(line) for line in Path(args.eval_file).read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_diffusion_model(ModelArguments(model_name_or_path=args.model))
    replies, steps = decode_replies(
        model, tokenizer, [[{"role": "user", "content": r["input"]}] for r in records],
        mask_token_id=resolve_mask_token_id(None, model.config, tokenizer), options=options,
        shift_logits=bool(getattr(model.config, "diffusion_shift_logits", False)),
    )  # fmt: skip
    correct = sum(reply == r["output"] for reply, r in zip(replies, records))
    for reply, r in list(zip(replies, records))[:5]:
        print(f"{r['input']!r} -> {reply!r} (expected {r['output']!r})")
    print(f"exact match: {correct}/{len(records)} = {correct / len(records):.1%}, "
          f"{sum(steps) / len(steps):.2f} denoising steps per prompt")


if __name__ == "__main__":
    main()
