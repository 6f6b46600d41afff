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


def plot_grouped_accuracy(
    groups: Mapping[str, Mapping[str, tuple[float, float, float]]], path: str | Path, *, title: str = ""
) -> Path:
    """Bars grouped by x label (`label -> series -> (accuracy, low, high)`), one colour per series, each interval
    as an error bar: e.g. one group per objective, one series per task. A series a group lacks leaves a gap."""
    labels = list(groups)
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) * max(len(series), 1) * 0.6 + 3.0, 4.2))
    for i, name in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x, label in enumerate(labels) if name in groups[label]]
        cells = [groups[label][name] for label in labels if name in groups[label]]
        errors = [[c[0] - c[1] for c in cells], [c[2] - c[0] for c in cells]]
        ax.bar(xs, [c[0] for c in cells], width, yerr=errors, capsize=3, color=f"C{i % 10}", label=name)
        for x, c in zip(xs, cells):  # the value above its interval
            ax.text(x, c[2] + 0.02, f"{c[0]:.0%}", ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.25)  # room above 100% for the values and the legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=len(series), fontsize="small")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
