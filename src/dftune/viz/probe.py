"""`dftune probe`'s figure: histograms of the target tokens' probabilities (log10) and predictive entropies."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dftune.viz.curves import plt, save_figure


def plot_probe(summary: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Two bar histograms from the probe's JSON, the p = 0.01 and 0.1 thresholds marked on the first."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((left, "histogram_log10_p", "log10 p(target)"), (right, "histogram_entropy", "entropy (nats)")):
        edges, counts = summary[key]["edges"], summary[key]["counts"]
        ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge", edgecolor="white")
        ax.set_xlabel(label)
        ax.set_ylabel("target tokens")
        ax.grid(axis="y", alpha=0.3)
    for threshold, style in ((-2.0, "--"), (-1.0, ":")):
        left.axvline(threshold, color="C3", linestyle=style, label=f"p = {10 ** threshold:g}")
    left.legend()
    fig.suptitle(title or summary["verdict"][:110], fontsize=9)
    return save_figure(fig, path)
