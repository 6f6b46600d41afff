"""`dftune merge-lora --base B --adapter A --output_dir O`: a LoRA run's output as a plain model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    merge = subparsers.add_parser("merge-lora", help="merge a LoRA adapter into its base model and save it")
    merge.add_argument("--base", required=True, help="the base model folder the adapter was trained on")
    merge.add_argument("--adapter", required=True, help="the adapter folder (a LoRA run's output_dir)")
    merge.add_argument("--output_dir", required=True)
    merge.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from dftune.models.merge import merge_lora

    print(f"merged model written to {merge_lora(args.base, args.adapter, args.output_dir)}")
    return 0
