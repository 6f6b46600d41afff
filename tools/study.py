"""Run the replicated study (examples/study/study.yaml): every (task, objective, seed) not yet in docs/study/runs/.

    python tools/study.py                                  # continue the study (make study), then regenerate
    python tools/study.py --only word_problems/sft/0 --force   # one row again (about 15 min on 2 quiet CPU cores)
    python tools/study.py --stop_after_minutes 60          # start no run after 60 minutes
    python tools/study.py --probe_only                     # every task's data and `dftune probe` verdict only

Each run is `dftune compare`'s (`dftune.compare.objective_config`, `run`, `summarise`: the config parsed as
`dftune train` parses it, the objective switched, trained, held-out replies scored with a 95% Wilson interval),
one at a time; its JSON is written the moment it finishes, so a stopped study continues where it stopped. Before
the first run of a task, its data is made and `dftune probe` stores its verdict in docs/study/probe/<task>.json.
After every run, tools/study_report.py regenerates the tables, the plot and README.md's study section.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_report  # noqa: E402  (a tool beside this one)
from study_report import Spec, load_spec, probe_file, run_file  # noqa: E402

from dftune.errors import DftuneError  # noqa: E402
from dftune.runlog import setup_logging  # noqa: E402

logger = logging.getLogger("study")
OUTPUTS = Path("outputs/study")


def ensure_inputs(spec: Spec, task: str) -> None:
    """The model (converted once), the task's data (its deterministic script) and its probe verdict. The working
    directory is `spec.root` (main changes to it): the probe is given the paths as the spec names them."""
    from dftune.cli.main import main as dftune
    from dftune.models.catalog import SMOLLM2

    root = spec.root  # the working directory too (main)
    if not (root / spec.model / "config.json").is_file():
        check(dftune(["init-model", "--preset", SMOLLM2, "--output_dir", str(root / spec.model)]), "init-model")
    info = spec.tasks[task]
    if not all((root / info[k]).is_file() for k in ("train", "heldout")):
        subprocess.run([sys.executable, *info["make"]], cwd=root, check=True)
    if not probe_file(spec, task).is_file():
        out = root / OUTPUTS / "probe" / task  # the model and data as the spec names them: probe.json records them
        check(dftune(["probe", spec.model, info["train"], "--output_dir", str(out)]), "probe")
        probe_file(spec, task).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "probe.json", probe_file(spec, task))


def check(code: int, step: str) -> None:
    if code != 0:
        raise DftuneError(f"study: `dftune {step}` failed (exit {code}); its message is above")


def objective_flags(keys: dict) -> list[str]:
    """The objective's keys as `dftune train` flags (`{loss: dft, dft_alpha: 0.7}` -> `--loss dft --dft_alpha 0.7`):
    `loss` among them, or train.yaml's `loss: sft` would contradict `--dft_alpha`."""
    return [word for key, value in keys.items() for word in (f"--{key}", str(value))]


def run_one(spec: Spec, task: str, objective: str, seed: int, *, fresh: bool = False) -> dict:
    """Train one row, score it, and return its JSON record (what tools/study_report.py reads). A run stopped by
    SIGTERM left a checkpoint in its folder: unless `fresh`, it continues from there (`resumed_from` names the
    checkpoint; wall and CPU time are then this part's)."""
    import torch

    from dftune.compare import Scoring, objective_config, reference_records, summarise
    from dftune.run import run
    from dftune.runtime.checkpoints import last_complete_checkpoint

    info, keys, root = spec.tasks[task], spec.objectives[objective], spec.root
    output_dir = root / OUTPUTS / "runs" / task / f"{objective}-seed{seed}"
    resumed = None if fresh or not output_dir.is_dir() else last_complete_checkpoint(output_dir)  # what auto picks
    argv = [str(root / spec.config), "--model_name_or_path", str(root / spec.model),
            "--data_files", str(root / info["train"]), "--eval_files", str(root / info["heldout"]),
            "--overwrite_output_dir", "true", "--resume_from_checkpoint", "false" if fresh else "auto",
            *objective_flags(keys)]  # fmt: skip
    config = objective_config(argv, keys["loss"], seed, output_dir)
    records = reference_records(config)
    scoring = Scoring(info["extractor"], info.get("max_new_tokens"))
    start, cpu_start = time.monotonic(), time.process_time()  # CPU time: every thread's, what other jobs don't slow
    trainer = run(config)
    result = summarise(trainer, config, seed, records, scoring)
    wall, cpu = time.monotonic() - start, time.process_time() - cpu_start
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    return {
        "task": task, "objective": objective, "seed": seed, "keys": keys, "steps": result.steps,
        "accuracy": result.accuracy, "accuracy_interval": list(result.accuracy_interval),
        "correct": round(result.accuracy * len(records)), "n_eval": len(records), "extractor": scoring.extractor,
        "final_eval_ce": result.final_eval_ce, "best_eval_ce": result.best_eval_ce,
        "final_avg_p_correct": result.final_avg_p_correct,
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "device": "cpu" if config.training.use_cpu else str(trainer.args.device),
        "torch_threads": torch.get_num_threads(), "commit": commit.stdout.strip(),
        "resumed_from": resumed.name if resumed else None,
        "command": f"python tools/study.py --only {task}/{objective}/{seed} --force",
    }  # fmt: skip


def selected(spec: Spec, only: list[str]) -> list[tuple[str, str, int]]:
    """The plan, or the rows `--only TASK/OBJECTIVE/SEED` names (each checked against the spec)."""
    if not only:
        return spec.plan()
    rows = []
    for text in only:
        parts = text.split("/")
        if len(parts) != 3 or not parts[2].isdigit() or (parts[0], parts[1], int(parts[2])) not in spec.plan():
            raise DftuneError(f"--only {text}: not a TASK/OBJECTIVE/SEED of the spec (tasks {', '.join(spec.tasks)}; "
                              f"objectives {', '.join(spec.objectives)}; seeds {spec.seeds})")
        rows.append((parts[0], parts[1], int(parts[2])))
    return rows


def study(spec: Spec, rows: list[tuple[str, str, int]], *, force: bool, stop_after_minutes: float | None) -> int:
    """Run the rows that lack their JSON (all of `rows` with `force`); the report after each. Returns runs done."""
    from dftune.outputs import write_text

    start, done = time.monotonic(), 0
    todo = [row for row in rows if force or not run_file(spec, *row).is_file()]
    logger.info("%d of %d rows to run", len(todo), len(rows))
    for number, (task, objective, seed) in enumerate(todo, 1):
        if stop_after_minutes is not None and time.monotonic() - start > 60 * stop_after_minutes:
            logger.info("%.0f minutes passed; %d rows left for the next `make study`",
                        stop_after_minutes, len(todo) - number + 1)
            break
        logger.info("run %d of %d: %s / %s / seed %d", number, len(todo), task, objective, seed)
        ensure_inputs(spec, task)
        record = run_one(spec, task, objective, seed, fresh=force)
        path = run_file(spec, task, objective, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(record, indent=2) + "\n")
        logger.info("%s: accuracy %.1f%% in %.1f min (CPU %.1f min)", path.name, 100 * record["accuracy"],
                    record["wall_s"] / 60, record["cpu_s"] / 60)
        done += 1
        study_report.write_all(spec)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=study_report.SPEC)
    parser.add_argument("--only", action="append", default=[], help="TASK/OBJECTIVE/SEED (repeatable)")
    parser.add_argument("--force", action="store_true", help="run the selected rows even where their JSON exists")
    parser.add_argument("--stop_after_minutes", type=float, help="start no new run after this many minutes")
    parser.add_argument("--probe_only", action="store_true",
                        help="make every task's data and probe verdict, regenerate the pages, train nothing")
    args = parser.parse_args(argv)
    setup_logging(logging.INFO)
    os.chdir(study_report.ROOT)
    try:
        spec = load_spec(args.spec)
        if args.probe_only:
            for task in spec.tasks:
                ensure_inputs(spec, task)
        else:
            study(spec, selected(spec, args.only), force=args.force, stop_after_minutes=args.stop_after_minutes)
        study_report.write_all(spec)
    except DftuneError as err:
        print(f"study: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
