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
    from pathlib import Path

    from dftune.errors import DftuneError
    from dftune.models.integrity import check_local_model
    from dftune.models.merge import merge_lora
    from dftune.outputs import output_folder
    from dftune.runtime.disk import disk_full_guard

    check_local_model(args.base, "--base")
    if not Path(args.adapter).expanduser().is_dir():  # its files are checked where it loads (models.loading)
        raise DftuneError(f"--adapter {args.adapter}: no such folder (give a LoRA run's output_dir)")
    output_dir = output_folder(args.output_dir, "--output_dir", [args.base, args.adapter], fresh=True)
    with disk_full_guard(output_dir, what="the merged model", kept="The base model and the adapter are untouched; "
                         "the merged folder is incomplete.", fix="Free space and merge again."):
        print(f"merged model written to {merge_lora(args.base, args.adapter, args.output_dir)}")
    return 0
