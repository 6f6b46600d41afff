"""`dftune compare CONFIG.yaml --losses sft,dft,eaft,asft [--seeds 1,2] [--output_dir DIR] [--extractor NAME]
[--eval_base] [--key value ...]`."""

from __future__ import annotations

import argparse

from dftune.errors import DftuneError



def register(subparsers: argparse._SubParsersAction) -> None:
    from dftune.evaluation import EXTRACTORS

    compare = subparsers.add_parser(
        "compare",
        help="train one config once per objective (and seed); write a table and the overlaid curves",
        description="Runs CONFIG once per loss and seed as `dftune train` would, each in DIR/<loss>-seed<k>/, then "
        "writes DIR/compare.md, compare.json and compare.png. Other --key value words override the config's keys.",
        allow_abbrev=False,  # `--loss dft` or `--seed 3` are config keys, not abbreviations of --losses / --seeds
    )
    compare.add_argument("config", help="a `dftune train` YAML config")
    compare.add_argument("--losses", required=True, help="comma-separated objectives, e.g. sft,dft,eaft,asft (any in dftune.losses.OBJECTIVES)")
    compare.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's seed)")
    compare.add_argument("--output_dir", default="outputs/compare", help="folder for the runs, table and plot")
    compare.add_argument("--extractor", default="exact", choices=sorted(EXTRACTORS),
                         help="how held-out replies are scored against the reference (as in `dftune eval`)")
    compare.add_argument("--max_new_tokens", type=int,
                         help="generation budget for scoring (default: the longest reference answer's length + 4)")
    compare.add_argument("--eval_base", action="store_true",
                         help="score the untrained model on the held-out records first (the 'base' row)")
    compare.set_defaults(func=run_compare)


def split_list(text: str | None, cast: type, allowed: tuple = ()) -> list:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    try:
        values = [cast(item) for item in items]
    except ValueError:
        raise DftuneError(f"not a comma-separated list of {cast.__name__}: {text!r}") from None
    bad = [v for v in values if allowed and v not in allowed]
    if bad:
        raise DftuneError(f"unknown loss {bad[0]!r}; choose from {', '.join(allowed)}")
    return values


def run_compare(args: argparse.Namespace) -> int:
    from dftune.compare import Scoring, compare
    from dftune.losses import OBJECTIVES
    from dftune.outputs import output_folder

    losses = split_list(args.losses, str, tuple(OBJECTIVES))
    if not losses:
        raise DftuneError("--losses needs at least one objective, e.g. --losses sft,dft")
    output_folder(args.output_dir, "--output_dir", [args.config])
    seeds = split_list(args.seeds, int) or None
    scoring = Scoring(args.extractor, args.max_new_tokens)
    compare([args.config, *args.rest], losses, args.output_dir, seeds, scoring=scoring, eval_base=args.eval_base)
    return 0
