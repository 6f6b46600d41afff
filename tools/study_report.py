"""The study's tables, plot and README section, generated only from its JSON files (docs/study/runs/, probe/).

    python tools/study_report.py          # rewrite docs/study/README.md's blocks, README.md's and accuracy.png
    python tools/study_report.py --check  # exit 1 when a page differs from the JSON files (tests/docs runs it)

The spec (examples/study/study.yaml) gives the order of tasks and objectives and the rows the study should hold;
each run's JSON (written by tools/study.py as the run finishes) gives its numbers. Over seeds, the accuracy is the
mean of the seeds' accuracies and its interval the 95% Wilson interval of all their held-out replies pooled (the
prompts' sampling error, not the seeds' spread; that is the min-max column).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_tables import render  # noqa: E402  (a tool beside this one)

from dftune.errors import DftuneError  # noqa: E402
from dftune.evaluation import wilson_interval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "study" / "study.yaml"
COMMAND = "make study"


@dataclass(frozen=True)
class Spec:
    model: str
    config: str
    runs_dir: str  # relative to `root`, the repository
    probe_dir: str
    seeds: list[int]
    tasks: dict[str, dict]
    objectives: dict[str, dict]
    root: Path = ROOT

    def plan(self) -> list[tuple[str, str, int]]:
        """Every (task, objective, seed), in the order the runner runs them: seed, then objective, then task."""
        return [(t, o, s) for s in self.seeds for o in self.objectives for t in self.tasks]


def load_spec(path: Path = SPEC, root: Path = ROOT) -> Spec:
    """The study spec; a missing section or an objective without `loss` names the file and the key."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key in ("model", "config", "runs_dir", "probe_dir", "seeds", "tasks", "objectives"):
        if key not in data:
            raise DftuneError(f"{path}: missing key '{key}'; see examples/study/study.yaml")
    for name, keys in data["objectives"].items():
        if not isinstance(keys, dict) or "loss" not in keys:
            raise DftuneError(f"{path}: objectives.{name} needs a 'loss' key, e.g. {{loss: dft, dft_alpha: 0.7}}")
    for name, task in data["tasks"].items():
        missing = [k for k in ("make", "train", "heldout", "extractor") if k not in task]
        if missing:
            raise DftuneError(f"{path}: tasks.{name} needs the keys {', '.join(missing)}")
    return Spec(data["model"], data["config"], data["runs_dir"], data["probe_dir"], [int(s) for s in data["seeds"]],
                data["tasks"], data["objectives"], root)  # fmt: skip


def run_file(spec: Spec, task: str, objective: str, seed: int) -> Path:
    return spec.root / spec.runs_dir / f"{task}__{objective}__seed{seed}.json"


def probe_file(spec: Spec, task: str) -> Path:
    return spec.root / spec.probe_dir / f"{task}.json"


def load_runs(spec: Spec) -> dict[tuple[str, str, int], dict]:
    """The finished runs of the plan, by (task, objective, seed)."""
    return {key: json.loads(path.read_text(encoding="utf-8"))
            for key in spec.plan() if (path := run_file(spec, *key)).is_file()}  # fmt: skip


NO_PLOT = "No plot yet: no run has finished."


def _seeds(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def _pct(value: float) -> str:
    return f"{value:.1%}"


def cell(runs: list[dict]) -> dict | None:
    """A task x objective cell over its seeds: mean accuracy, pooled Wilson interval, seed range, mean eval CE."""
    if not runs:
        return None
    correct, total = sum(r["correct"] for r in runs), sum(r["n_eval"] for r in runs)
    ces = [r["final_eval_ce"] for r in runs if r["final_eval_ce"] is not None]
    accuracies = [r["accuracy"] for r in runs]
    return {"accuracy": statistics.fmean(accuracies), "interval": wilson_interval(correct, total),
            "range": (min(accuracies), max(accuracies)), "eval_ce": statistics.fmean(ces) if ces else None,
            "seeds": len(runs)}  # fmt: skip


def cells(spec: Spec, runs: dict) -> dict[tuple[str, str], dict | None]:
    return {(t, o): cell([runs[k] for k in runs if k[:2] == (t, o)]) for t in spec.tasks for o in spec.objectives}


def headline(spec: Spec, runs: dict) -> str:
    """How many of the spec's runs exist: the study is complete only when every (task, objective, seed) has its JSON."""
    planned, shape = len(spec.plan()), f"{len(spec.tasks)} tasks x {len(spec.objectives)} objectives x " \
                                       f"{len(spec.seeds)} seeds"
    if len(runs) == planned:
        return f"All {planned} runs of the spec ({shape}) are in `{spec.runs_dir}/`."
    return (f"**The study is incomplete: {len(runs)} of {planned} runs** ({shape}) have their JSON in "
            f"`{spec.runs_dir}/`; `make study` runs the others.{cost_text(runs, planned - len(runs))}")


def status_text(spec: Spec, runs: dict) -> str:
    """The headline, then which rows exist per task."""
    lines = [headline(spec, runs), "", "Rows that exist:", ""]
    for task in spec.tasks:
        done = [f"{o} (seeds {', '.join(str(k[2]) for k in runs if k[:2] == (task, o))})"
                for o in spec.objectives if any(k[:2] == (task, o) for k in runs)]  # fmt: skip
        lines.append(f"- {task}: {', '.join(done) if done else 'none yet'}")
    return "\n".join(lines) + "\n"


def cost_text(runs: dict, left: int) -> str:
    """The runs' measured CPU time (all threads) and what the rows left would need at its mean."""
    if not runs:
        return ""
    per_run = statistics.fmean(r["cpu_s"] for r in runs.values()) / 60
    return (f" Measured CPU time per run: {per_run:.0f} min (mean of {len(runs)}); the {left} runs left need about "
            f"{left * per_run / 60:.1f} CPU-hours.")


def results_table(spec: Spec, runs: dict) -> str:
    """Per task x objective: mean accuracy over seeds with its interval, seed range, mean final eval CE, seeds."""
    lines = ["| task | objective | seeds | accuracy (mean) [95% CI, pooled] | seed min-max | final eval CE (mean) |",
             "|---|---|---|---|---|---|"]
    for (task, objective), c in cells(spec, runs).items():
        if c is None:
            lines.append(f"| {task} | {objective} | 0 | - | - | - |")
            continue
        low, high = c["interval"]
        ce = "-" if c["eval_ce"] is None else f"{c['eval_ce']:.3f}"
        lines.append(f"| {task} | {objective} | {c['seeds']} | **{_pct(c['accuracy'])}** [{_pct(low)}, {_pct(high)}]"
                     f" | {_pct(c['range'][0])}-{_pct(c['range'][1])} | {ce} |")
    figure = "![held-out accuracy per objective and task](accuracy.png)" if runs else NO_PLOT
    return "\n".join([*lines, "", figure]) + "\n"


def probe_table(spec: Spec) -> str:
    """`dftune probe`'s shares of improbable target tokens and its verdict, per task (docs/study/probe/)."""
    lines = ["| task | target tokens | p < 0.01 | p < 0.1 | verdict |", "|---|---|---|---|---|"]
    for task in spec.tasks:
        path = probe_file(spec, task)
        if not path.is_file():
            lines.append(f"| {task} | - | - | - | not probed yet |")
            continue
        probe = json.loads(path.read_text(encoding="utf-8"))
        overall = probe["overall"]
        lines.append(f"| {task} | {overall['targets']} | {_pct(overall['p<0.01'])} | {_pct(overall['p<0.1'])} "
                     f"| {probe['verdict']} |")
    return "\n".join(lines) + "\n"


def runs_table(spec: Spec, runs: dict) -> str:
    """Every finished run: its numbers, its wall time, and the command that reproduces it."""
    columns = ("task", "objective", "seed", "steps", "accuracy [95% CI]", "final eval CE", "wall (min)", "CPU (min)",
               "reproduce")
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for (task, objective, seed), r in runs.items():
        low, high = r["accuracy_interval"]
        ce = "-" if r["final_eval_ce"] is None else f"{r['final_eval_ce']:.3f}"
        lines.append(f"| {task} | {objective} | {seed} | {r['steps']} | {_pct(r['accuracy'])} ({r['correct']}/"
                     f"{r['n_eval']}) [{_pct(low)}, {_pct(high)}] | {ce} | {r['wall_s'] / 60:.1f} "
                     f"| {r['cpu_s'] / 60:.1f} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def readme_summary(spec: Spec, runs: dict) -> str:
    """README.md's study section: the status line and one accuracy cell per objective and task."""
    head = "| objective | " + " | ".join(spec.tasks) + " |"
    lines = [headline(spec, runs) + " Mean held-out accuracy over the seeds that exist:", "", head,
             "|---" * (1 + len(spec.tasks)) + "|"]
    table = cells(spec, runs)
    for objective in spec.objectives:
        row = [("-" if (c := table[t, objective]) is None else f"{_pct(c['accuracy'])} ({_seeds(c['seeds'])})")
               for t in spec.tasks]  # fmt: skip
        lines.append(f"| {objective} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(spec: Spec, runs: dict, path: Path) -> Path | None:
    from dftune.viz.accuracy import plot_grouped_accuracy

    groups = {o: {t: (c["accuracy"], *c["interval"]) for t in spec.tasks if (c := cells(spec, runs)[t, o])}
              for o in spec.objectives}
    groups = {o: g for o, g in groups.items() if g}
    if not groups:
        return None
    return plot_grouped_accuracy(groups, path, title=f"held-out accuracy, mean over seeds, 95% CI ({len(runs)} runs)")


def pages(spec: Spec, runs: dict) -> dict[str, dict]:
    """The generated blocks of each page (relative to the repository root)."""
    return {
        "docs/study/README.md": {"study-status": lambda: status_text(spec, runs),
                                 "study-probe": lambda: probe_table(spec),
                                 "study-results": lambda: results_table(spec, runs),
                                 "study-runs": lambda: runs_table(spec, runs)},
        "README.md": {"study-summary": lambda: readme_summary(spec, runs)},
    }  # fmt: skip


def stale_pages(spec: Spec) -> list[str]:
    """The pages whose generated blocks differ from what the JSON files make."""
    runs = load_runs(spec)
    return [page for page, blocks in pages(spec, runs).items()
            if (text := (spec.root / page).read_text(encoding="utf-8")) != render(text, blocks, COMMAND)]


def write_all(spec: Spec) -> None:
    runs = load_runs(spec)
    for page, blocks in pages(spec, runs).items():
        path = spec.root / page
        path.write_text(render(path.read_text(encoding="utf-8"), blocks, COMMAND), encoding="utf-8")
    plot(spec, runs, spec.root / "docs" / "study" / "accuracy.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--check", action="store_true", help="only report pages that differ from the JSON files")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    if args.check:
        stale = stale_pages(spec)
        for page in stale:
            print(f"{page} differs from {spec.runs_dir}/: run `{COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    write_all(spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
