"""`dftune probe MODEL DATA... [--stage sft|dllm] [--max_samples N] [--output_dir DIR]`: does DFT suit this data?

One forward pass of the starting model over a sample of the data (no training), through the fused head's chunking:
probe.json (the shares of target tokens under p = 0.01 / 0.1 overall, per source and per token kind, the rarest
frequent tokens, histograms, a verdict) and probe.png. The verdict line is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dftune.cli.checks import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    probe = subparsers.add_parser("probe", help="one forward pass over the data: how many target tokens DFT's "
                                  "weights would starve (p < 0.01 / 0.1), per source and token kind")
    probe.add_argument("model", help="the starting model's folder")
    probe.add_argument("data", nargs="+", help="training data files (ChatML JSONL, as train reads them)")
    probe.add_argument("--stage", choices=["sft", "dllm"], default="sft")
    probe.add_argument("--max_samples", type=positive_int, default=64, help="probe the first N samples (default 64)")
    probe.add_argument("--max_length", type=positive_int, default=1024)
    probe.add_argument("--batch_size", type=positive_int, default=8)
    probe.add_argument("--mask_ratio", type=float, default=0.5, help="stage dllm: share of answer tokens masked")
    probe.add_argument("--mask_token_id", type=int, help="stage dllm: default the model's or tokenizer's")
    probe.add_argument("--min_count", type=positive_int, default=5,
                       help="a token is among the rarest frequent ones when it is a target at least this often")
    probe.add_argument("--output_dir", default="probe", help="where probe.json and probe.png go (default ./probe)")
    probe.set_defaults(func=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from dftune.config.model_args import ModelArguments
    from dftune.data.readers import resolve_sources
    from dftune.data.validate import validate_and_encode
    from dftune.errors import DftuneError
    from dftune.models.integrity import check_local_model
    from dftune.models.loading import (
        is_diffusion_config, load_diffusion_model, load_model, resolve_mask_token_id, tokenizer_at,
    )
    from dftune.outputs import output_file, write_text
    from dftune.runtime.probe import probe_targets, summarise
    from dftune.viz.probe import plot_probe

    if not 0.0 < args.mask_ratio <= 1.0:
        raise DftuneError(f"--mask_ratio must be in (0, 1], got {args.mask_ratio}")
    json_path = output_file(Path(args.output_dir) / "probe.json", "--output_dir", "probe.json",
                            [*args.data, args.model])
    check_local_model(args.model, "model")
    tokenizer = tokenizer_at(args.model, "model")
    sources = resolve_sources(args.data)
    dataset, report = validate_and_encode(sources, tokenizer, max_length=args.max_length)
    if len(dataset) == 0:
        raise DftuneError(f"no valid records in {', '.join(args.data)}; run `dftune data check` on them")
    samples = [dataset[i] for i in range(min(args.max_samples, len(dataset)))]
    names = sorted({s["source"] for s in samples})  # source_id indexes the run's names; here the probed ones
    for s in samples:
        s["source_id"] = names.index(s["source"])
    model_args = ModelArguments(model_name_or_path=args.model)
    mask_token_id = None
    if args.stage == "dllm":
        model = load_diffusion_model(model_args)
        mask_token_id = resolve_mask_token_id(args.mask_token_id, model.config, tokenizer)
    else:
        if is_diffusion_config(AutoConfig.from_pretrained(args.model)):
            raise DftuneError(f"{args.model} is a masked-diffusion model: probe it with --stage dllm")
        model = load_model(model_args, what="model")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    targets = probe_targets(model, samples, pad_token_id=pad, stage=args.stage, mask_token_id=mask_token_id,
                            mask_ratio=args.mask_ratio, batch_size=args.batch_size)
    summary = {"model": args.model, "stage": args.stage, "samples": len(samples),
               **summarise(targets, tokenizer, names, min_count=args.min_count)}  # fmt: skip
    write_text(json_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    plot_probe(summary, json_path.with_name("probe.png"))
    print(format_summary(summary))
    print(f"wrote {json_path} and {json_path.with_name('probe.png')}")
    return 0


def format_summary(summary: dict) -> str:
    """The shares per source and kind, the rarest tokens, then the verdict line."""
    lines = [f"{summary['overall']['targets']} target tokens in {summary['samples']} samples; "
             f"p < 0.01: {summary['overall']['p<0.01']:.1%}, p < 0.1: {summary['overall']['p<0.1']:.1%}"]
    for group in ("per_source", "per_kind"):
        for name, row in summary[group].items():
            lines.append(f"  {group[4:]} {name}: {row['targets']} targets, p < 0.01 {row['p<0.01']:.1%}, "
                         f"p < 0.1 {row['p<0.1']:.1%}")
    lines.append("rarest frequent targets: " + ", ".join(
        f"{r['text']!r} x{r['count']} median p {r['median_p']:.3g}" for r in summary["rarest_frequent_tokens"][:8]))
    lines.append(f"verdict: {summary['verdict']}")
    return "\n".join(lines)
