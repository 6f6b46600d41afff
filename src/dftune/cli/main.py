"""The `dftune` command: subcommands dispatch to library functions; user errors print one line, no traceback.

Building the parser imports no torch or transformers (tests/config/test_fast_start.py): every `--help` but
`train`'s answers at once; each command imports what it runs inside its function.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import logging
import os
import sys
from typing import Any, NoReturn

from dftune import __version__
from dftune.errors import DftuneError
from dftune.runlog import setup_logging


def _train(args: argparse.Namespace) -> int:
    if {"-h", "--help"} & set(args.rest):  # the keys alone: dftune.run would import every trainer first
        from dftune.stages import train_help_parser

        train_help_parser().print_help()
        return 0
    from dftune.run import parse_config, run

    trainer = run(parse_config(args.rest))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_launched_process(trainer)
    return 0


def exit_launched_process(trainer: Any) -> NoReturn:
    """End a process of a launched run (torchrun, accelerate) once the run is saved: it leaves the process group
    (accelerate's end of a script; no barrier: the first process out of a gloo barrier can close its connections
    before the other has read the last message), Python's exit handlers run (trackers finish, logs flush), then the
    process ends without the C++ static destructors, in which gloo's threads can abort a finished run ("terminate
    called without an active exception", exit -6; rare, on a loaded machine)."""
    trainer.accelerator.end_training()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _init_model(args: argparse.Namespace) -> int:
    import torch

    from dftune.models.presets import init_model
    from dftune.outputs import output_folder

    output_folder(args.output_dir, "--output_dir", fresh=True)
    path = init_model(args.preset, args.output_dir, seed=args.seed, dtype=getattr(torch, args.torch_dtype))
    if args.diffusion:
        from dftune.models.diffusion_conversion import to_diffusion

        to_diffusion(path)
    print(f"wrote {args.preset} to {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dftune.demo.quickstart import run_quickstart
    from dftune.outputs import output_folder

    output_folder(args.output_dir, "--output_dir")

    run_quickstart(args.output_dir, steps=args.steps, dft_alpha=args.dft_alpha)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dftune.cli import data_cmd, eval_cmd, generate_cmd, merge_cmd
    from dftune.cli import compare_cmd, plot_cmd, probe_cmd
    from dftune.models.catalog import SMOLLM2, model_names

    parser = argparse.ArgumentParser(prog="dftune", description="Fine-tune LLMs with differentiated objectives.")
    parser.add_argument("--version", action="version", version=f"dftune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train: dftune train [CONFIG.yaml] [--key value ...]", add_help=False)
    train.set_defaults(func=_train)  # its keys are parsed by dftune.config, from the words argparse leaves over

    init = sub.add_parser("init-model", help="write a small random model with a ChatML tokenizer, offline")
    init.add_argument("--preset", required=True, choices=model_names())
    init.add_argument("--torch_dtype", choices=["float32", "bfloat16"], default="float32",
                      help=f"weights dtype of the {SMOLLM2} conversion")
    init.add_argument("--output_dir", required=True)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--diffusion", action="store_true",
                      help="turn the model into a masked-diffusion LM (bidirectional, a mask token, Dream-style "
                      "shifted logits) for stage dllm")
    init.set_defaults(func=_init_model)

    demo = sub.add_parser("demo", help="the quickstart: DFT on a bundled task, accuracy before/after, curves PNG")
    demo.add_argument("--output_dir", default="outputs/quickstart")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the quickstart's own)")
    demo.add_argument("--dft_alpha", type=float, default=0.7, help="DFT alpha (default: the seed train.sh's 0.7)")
    demo.set_defaults(func=_demo)

    data_cmd.register(sub)
    generate_cmd.register(sub)
    merge_cmd.register(sub)
    eval_cmd.register(sub)
    plot_cmd.register(sub)
    compare_cmd.register(sub)
    probe_cmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    setup_logging(logging.INFO)  # one format; info lines once, from the main process (after --help has answered)
    if args.func is _train or args.command == "compare":  # config keys, parsed by dftune.config
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except DftuneError as err:
        print(f"dftune: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # The savers that know what is kept say so themselves (dftune.runtime.disk); this is every other write.
        print(f"dftune: error: disk full writing {err.filename or 'a file'}: free space and run again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
