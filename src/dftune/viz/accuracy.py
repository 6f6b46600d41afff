"""Held-out accuracy of several runs as a bar chart with 95% intervals (`dftune compare`'s accuracy.png)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dftune.viz.curves import plt, save_figure


def plot_accuracy(runs: Mapping[str, tuple[float, float, float]], path: str | Path, *, title: str = "") -> Path:
    """One bar per run (`name -> (accuracy, low, high)`), its interval as an error bar and its value above that."""
    names = list(runs)
    values = [runs[n][0] for n in names]
    below = [runs[n][0] - runs[n][1] for n in names]
    above = [runs[n][2] - runs[n][0] for n in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 3.8))
    ax.bar(names, values, yerr=[below, above], capsize=6, color=[f"C{i % 10}" for i in range(len(names))])
    for x, name in enumerate(names):  # the value above its interval, readable however short the bar
        ax.text(x, runs[name][2] + 0.02, f"{runs[name][0]:.1%}", ha="center", va="bottom")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
