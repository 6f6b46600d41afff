"""How long `dftune --help` takes to answer, as a ratio to `python -c "import torch"` measured in the same run.

    python benchmarks/bench_startup.py [--repeats 5] [--json out.json]

Each command is a fresh interpreter, timed wall clock from start to exit; the commands run round-robin, so load on
the machine falls on all of them alike, and the median of the repeats is reported. `dftune --help` imports neither
torch nor transformers (tests/config/test_fast_start.py), so its ratio should stay well under 1; `dftune train
--help` lists TrainingArguments' keys, so it pays for torch and what `transformers.TrainingArguments` imports
(accelerate's state and, in transformers 5.23, peft), and for the stages' keys, but no stage module, TRL or datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    'python -c "import torch"': ["-c", "import torch"],
    "dftune --help": ["-m", "dftune", "--help"],
    "dftune data check --help": ["-m", "dftune", "data", "check", "--help"],
    "dftune train --help": ["-m", "dftune", "train", "--help"],
}
BASELINE = 'python -c "import torch"'


def wall_seconds(args: list[str], env: dict[str, str]) -> float:
    """Seconds from starting `python ARGS` to its exit (it must exit 0)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):  # round-robin: a busy minute slows every command, not one
        for name, argv in COMMANDS.items():
            times[name].append(wall_seconds(argv, env))
    base = statistics.median(times[BASELINE])
    results = [{"command": name, "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                "ratio_to_import_torch": statistics.median(t) / base} for name, t in times.items()]  # fmt: skip
    rows = ["| command | median s | min s | max s | / import torch |", "|---|---:|---:|---:|---:|"]
    rows += [f"| `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | "
             f"{r['ratio_to_import_torch']:.2f} |" for r in results]  # fmt: skip
    table = "\n".join(rows)
    print(table)
    help_ratio = next(r["ratio_to_import_torch"] for r in results if r["command"] == "dftune --help")
    print(f"dftune --help takes {help_ratio:.2f}x the time of import torch ({args.repeats} repeats, median)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "table": table, "repeats": args.repeats,
                                               "help_ratio": help_ratio}, indent=1))


if __name__ == "__main__":
    main()
