"""`dftune plot RUN_DIR [RUN_DIR ...] --output FILE.png`: the curves of one or several runs, overlaid."""

from __future__ import annotations

import argparse
from pathlib import Path

from dftune.errors import DftuneError
from dftune.outputs import output_file
from dftune.runtime.disk import disk_full_guard


IMAGE_SUFFIXES = (".png",)  # the figure is a 256-colour palette image: PNG keeps it whole


def register(subparsers: argparse._SubParsersAction) -> None:
    plot = subparsers.add_parser(
        "plot",
        help="overlay the training and eval curves of finished runs in one PNG",
        description="Loss, eval loss and CE, avg_p_correct, token accuracy, grad norm and learning rate of each "
        "run, from its trainer_state.json (no tracker needed). Training solid, eval dashed.",
    )
    plot.add_argument("runs", nargs="+", help="output_dir of `dftune train` runs (or their checkpoint-N folders)")
    plot.add_argument("--output", required=True, help="the PNG to write")
    plot.add_argument("--title", default="", help="figure title")
    plot.add_argument("--labels", help="comma-separated legend names, one per run (default: the folder names)")
    plot.set_defaults(func=run_plot)


def run_labels(run_dirs: list[str]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name (outputs/a/sft and outputs/b/sft)."""
    names = [Path(d).name or str(d) for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs)]


def run_plot(args: argparse.Namespace) -> int:
    from dftune.viz.curves import RUN_PANELS, load_log_history, plot_runs  # matplotlib: not for --help

    labels = run_labels(args.runs) if args.labels is None else [name.strip() for name in args.labels.split(",")]
    if len(labels) != len(args.runs) or len(set(labels)) != len(labels):
        raise DftuneError(f"--labels needs {len(args.runs)} different names, one per run; got {args.labels!r}")
    output_file(args.output, "--output", "curves.png", inputs=args.runs)
    if Path(args.output).suffix.lower() not in IMAGE_SUFFIXES:
        raise DftuneError(f"--output {args.output}: a plot is an image; give a file ending in "
                          f"{' or '.join(IMAGE_SUFFIXES)}, e.g. {Path(args.output).with_suffix('.png')}")
    histories = {label: load_log_history(d) for label, d in zip(labels, args.runs)}
    with disk_full_guard(Path(args.output), what="the plot", kept="The runs are untouched.",
                         fix="Free space or write the plot elsewhere."):
        path = plot_runs(histories, args.output, panels=RUN_PANELS, title=args.title, columns=3)
    print(f"wrote {path}")
    return 0
