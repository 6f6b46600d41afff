"""Training curves of one or more runs as a PNG, from `trainer.state.log_history` or a run folder's
`trainer_state.json` (written by every `dftune train`): no tracker needed."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from PIL import Image  # noqa: E402

from dftune.errors import DftuneError  # noqa: E402
from dftune.outputs import replaced  # noqa: E402

LogHistory = Sequence[Mapping[str, float]]
DEFAULT_PANELS = (("loss", "objective loss"), ("ce", "plain cross-entropy"), ("avg_p_correct", "avg p(correct)"))
# `dftune plot` and `dftune compare`: everything a run logs, training solid and held-out (eval_) dashed.
RUN_PANELS = (
    *DEFAULT_PANELS,
    ("token_accuracy", "token accuracy"),
    ("entropy", "predictive entropy at targets"),
    ("mean_token_weight", "mean token weight (SFT = 1)"),
    ("grad_norm", "gradient norm"),
    ("learning_rate", "learning rate"),
)
STATE_FILE = "trainer_state.json"


def load_log_history(run_dir: str | Path) -> list[dict[str, float]]:
    """The log history a run saved (`trainer.save_state()`, also in each checkpoint-N folder)."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise DftuneError(
            f"{run_dir}: no {STATE_FILE} here; give the output_dir of a finished `dftune train` run "
            "or one of its checkpoint-N folders"
        )
    try:
        history = json.loads(path.read_text(encoding="utf-8"))["log_history"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DftuneError(f"{path} is damaged ({type(err).__name__}: {err}): not a trainer_state.json with a "
                          "log_history; plot a checkpoint-N folder of the run instead, or rerun it") from None
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise DftuneError(f"{path}: log_history is not a list of log entries; plot a checkpoint-N folder instead")
    return history


def series(history: LogHistory, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged key, skipping entries that do not have it."""
    points = [(int(e["step"]), float(e[key])) for e in history if key in e and "step" in e]
    return [s for s, _ in points], [v for _, v in points]


def plot_runs(
    runs: Mapping[str, LogHistory],
    path: str | Path,
    *,
    panels: Sequence[tuple[str, str]] = DEFAULT_PANELS,
    title: str = "",
    columns: int | None = None,
) -> Path:
    """One panel per logged key, one line per run (training) plus its `eval_` twin dashed where logged.

    Panels fill a grid `columns` wide (default: one row); a key no run logged says so in its panel. One legend
    for the figure, under the panels, so that no panel's curves hide behind it.
    """
    panels = (*panels, *source_panels(runs, panels))
    columns = columns or len(panels)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (key, label) in zip(axes.flat, panels):
        for i, (name, history) in enumerate(runs.items()):
            color = f"C{i % 10}"  # a run keeps its colour in every panel, even where it lacks a key
            steps, values = series(history, key)
            if steps:
                ax.plot(steps, values, color=color, label=name)
            eval_steps, eval_values = series(history, f"eval_{key}")
            if eval_steps:
                ax.plot(eval_steps, eval_values, "--o", ms=3, color=color, label=f"{name} (held-out)")
        ax.set_title(label)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, f"{key}: not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    legend = {}  # label -> line, over every panel (a run's eval line may be in some panels only)
    for ax in axes.flat:
        legend.update({line.get_label(): line for line in ax.lines})
    legend_rows = math.ceil(len(legend) / 4)
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 4), fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, bottom=(0.3 * legend_rows + 0.1) / fig.get_figheight() if legend else 0.0)


def source_panels(runs: Mapping[str, LogHistory], panels: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """One panel per `ce/<source>` the runs logged (several data sources: dftune.runtime.metrics.source_sums);
    none for a single source, whose panel would repeat the cross-entropy panel."""
    shown = {key for key, _ in panels}
    keys = sorted({k for history in runs.values() for e in history for k in e if k.startswith("ce/")} - shown)
    return [(key, f"cross-entropy of {key[3:]}") for key in keys] if len(keys) > 1 else []


def save_figure(fig: plt.Figure, path: str | Path, *, bottom: float = 0.0) -> Path:
    """Write `fig` as a PNG and close it; `bottom` (a fraction of its height) is left free for a figure legend."""
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110)
    plt.close(fig)
    # A 256-colour palette loses nothing visible on line plots and makes the file 3x smaller (~100 KB).
    with replaced(path) as tmp:
        Image.open(buffer).convert("RGB").quantize(256).save(tmp, optimize=True)
    return path
