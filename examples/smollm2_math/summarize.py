"""One table and one figure for the whole study, from the `dftune compare` folders it wrote: every run's held-out
accuracy with its interval, its final eval CE and avg_p_correct, and its accuracy per problem template (where
each objective's answers go wrong).

    python examples/smollm2_math/summarize.py outputs/smollm2_math compare compare-dft-alpha0.7 compare-dft-schedule
    # -> outputs/smollm2_math/summary.md and outputs/smollm2_math/accuracy.png
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from dftune.compare import RunResult
from dftune.viz.accuracy import plot_accuracy

# Words found in one template's questions only (make_data.py), in its order.
TEMPLATES = {
    "gather": " bags with ",
    "change": "A shop sells",
    "reading": " pages every day",
    "sharing": "shared equally",
    "seats": "A train has",
}


def template_of(prompt: str) -> str:
    return next(name for name, words in TEMPLATES.items() if words in prompt)


def label(result: RunResult, path: Path) -> str:
    """The run's name, with DFT's alpha (1 when the config leaves it unset, as the paper) and its schedule."""
    if result.loss != "dft":
        return path.name
    config = yaml.safe_load((path / "dftune_config.yaml").read_text(encoding="utf-8"))
    alpha = f"alpha {config.get('dft_alpha') or 1.0:g}"
    if config.get("dft_alpha_schedule") == "linear":
        alpha += f", linear from 0 over {config.get('dft_alpha_warmup_steps')} steps"
    return f"{path.name} ({alpha})"


def load_runs(study: Path, folders: list[str]) -> list[tuple[RunResult, Path, str]]:
    """(result, run folder, label) of every run, in each compare.json's order."""
    runs = []
    for folder in folders:
        for entry in json.loads((study / folder / "compare.json").read_text(encoding="utf-8"))["runs"]:
            path = study / folder / entry.pop("name")
            interval = entry.pop("accuracy_interval")
            result = RunResult(**entry, accuracy_interval=tuple(interval) if interval else None)
            runs.append((result, path, label(result, path)))
    return runs


def accuracy_table(runs: list[tuple[RunResult, Path, str]]) -> str:
    lines = ["| run | steps | final eval CE | final avg_p_correct | accuracy [95% CI] |", "|---|---|---|---|---|"]
    for r, _, label in runs:
        ce = "-" if r.final_eval_ce is None else f"{r.final_eval_ce:.3f}"
        p = "-" if r.final_avg_p_correct is None else f"{r.final_avg_p_correct:.3f}"
        low, high = r.accuracy_interval
        lines.append(f"| {label} | {r.steps} | {ce} | {p} | **{r.accuracy:.1%}** [{low:.1%}, {high:.1%}] |")
    return "\n".join(lines) + "\n"


def template_table(runs: list[tuple[RunResult, Path, str]]) -> str:
    lines = ["| run | " + " | ".join(TEMPLATES) + " |", "|---" * (len(TEMPLATES) + 1) + "|"]
    for _, path, label in runs:
        results = [json.loads(line) for line in (path / "eval_results.jsonl").read_text(encoding="utf-8").splitlines()]
        cells = []
        for name in TEMPLATES:
            group = [r for r in results if template_of(r["prompt"]) == name]
            cells.append(f"{sum(r['correct'] for r in group)}/{len(group)}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


STEP = re.compile(r"(\d+) ([×÷+-]) (\d+) = (\d+)$")  # a worked line, with or without its "Step k: "
OPERATIONS = {"×": lambda a, b: a * b, "÷": lambda a, b: a / b, "+": lambda a, b: a + b, "-": lambda a, b: a - b}


def right_lines(reply: str) -> tuple[int, int]:
    """(worked lines whose result is right for their own numbers, worked lines)."""
    lines = [m for m in map(STEP.search, reply.split("\n")) if m]
    return sum(OPERATIONS[op](int(a), int(b)) == int(c) for a, op, b, c in (m.groups() for m in lines)), len(lines)


def shape_table(runs: list[tuple[RunResult, Path, str]]) -> str:
    """How the replies are written, whatever their numbers: the reference's layout, its operators, and whether
    each worked line is right for the numbers it uses."""
    lines = ["| run | ends \"The answer is N.\" | \"Step k:\" lines | writes × where the reference multiplies "
             "| worked lines right for their own numbers |", "|---|---|---|---|---|"]  # fmt: skip
    for _, path, label in runs:
        results = [json.loads(line) for line in (path / "eval_results.jsonl").read_text(encoding="utf-8").splitlines()]
        ends = sum(bool(re.search(r"The answer is -?\d+\.$", r["reply"])) for r in results)
        stepped = sum(r["reply"].startswith("Step 1:") for r in results)
        multiplying = [r for r in results if "×" in r["reference"]]
        times = sum("×" in r["reply"] for r in multiplying)
        right, worked = map(sum, zip(*(right_lines(r["reply"]) for r in results)))
        lines.append(f"| {label} | {ends}/{len(results)} | {stepped}/{len(results)} | {times}/{len(multiplying)} "
                     f"| {right}/{worked} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study's output folder")
    parser.add_argument("folders", nargs="+", help="its `dftune compare` folders, in the order to show")
    args = parser.parse_args()
    runs = load_runs(args.study, args.folders)
    summary = "\n".join([
        "## Held-out accuracy", "", accuracy_table(runs),
        "## Correct answers per template", "", template_table(runs),
        "## How the replies are written", "", shape_table(runs),
    ])  # fmt: skip
    (args.study / "summary.md").write_text(summary, encoding="utf-8")
    scored = {label: (r.accuracy, *r.accuracy_interval) for r, _, label in runs if r.accuracy_interval}
    plot_accuracy(scored, args.study / "accuracy.png", title="SmolLM2-135M-Instruct + LoRA: held-out accuracy, 95% CI")
    print(summary)


if __name__ == "__main__":
    main()
