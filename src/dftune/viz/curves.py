"""Training curves of one or more runs as a PNG, from `trainer.state.log_history`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

LogHistory = Sequence[Mapping[str, float]]
DEFAULT_PANELS = (("loss", "objective loss"), ("ce", "plain cross-entropy"), ("avg_p_correct", "avg p(correct)"))


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
) -> Path:
    """One panel per logged key, one line per run (training) plus its `eval_` twin dashed where logged."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for name, history in runs.items():
            steps, values = series(history, key)
            line = ax.plot(steps, values, label=name)[0] if steps else None
            eval_steps, eval_values = series(history, f"eval_{key}")
            if eval_steps:
                color = line.get_color() if line else None
                ax.plot(eval_steps, eval_values, "--o", ms=3, color=color, label=f"{name} (held-out)")
        ax.set_title(label)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
