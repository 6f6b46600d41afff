"""`dftune demo`: a real DFT run on a laptop CPU, offline, in a few minutes, through the same path as `dftune train`.

1. `init-model` writes a random small Llama with a byte-level ChatML tokenizer.
2. A short SFT run on the bundled addition data gives a *base* model that knows the format but gets the sums
   wrong: it stands in for the pretrained model a user starts from.
3. The base is fine-tuned with DFT (alpha 0.7, the seed trainer's setting) and, for comparison, with plain SFT
   for the same steps and learning rate.
4. Held-out exact-match accuracy (greedy generation on operand pairs never trained on) before and after, with
   95% Wilson intervals: printed, written as accuracy.json and accuracy.md, and drawn as accuracy.png beside the
   training curves (curves.png).

Why alpha 0.7 and not 1: DFT weighs each token by the model's own probability of it. From a base that does not
yet put probability on the right digits, alpha = 1 starves exactly the tokens it must learn (`--dft_alpha 1.0`
shows it); the mix keeps a floor of 1 - alpha on every token.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import transformers
from transformers import AutoTokenizer

from dftune.config.model_args import ModelArguments
from dftune.demo.arithmetic import EVAL_FILE, TRAIN_FILE
from dftune.evaluation.generate import evaluate_records
from dftune.evaluation.report import EvalReport
from dftune.outputs import write_text
from dftune.models.loading import load_model
from dftune.models.presets import init_model
from dftune.run import parse_config, run
from dftune.viz.accuracy import plot_accuracy
from dftune.viz.curves import plot_runs


@dataclass(frozen=True)
class Schedule:
    base_steps: int = 500
    finetune_steps: int = 500
    batch_size: int = 32
    base_lr: float = 2e-3
    finetune_lr: float = 5e-4


def train_stage(model_dir: Path, output_dir: Path, steps: int, lr: float, batch: int, objective: list[str]) -> list:
    """One `dftune train` run on the bundled data (objective given as its flags); returns its log history."""
    argv = [
        "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir),
        "--data_files", str(TRAIN_FILE), "--eval_files", str(EVAL_FILE), "--max_length", "64", *objective,
        "--max_steps", str(steps), "--learning_rate", str(lr), "--lr_scheduler_type", "linear",
        "--warmup_steps", str(min(50, steps // 10)), "--weight_decay", "0.0",
        "--per_device_train_batch_size", str(batch), "--per_device_eval_batch_size", "100",
        "--eval_strategy", "steps", "--eval_steps", str(max(steps // 4, 1)), "--logging_steps", str(max(steps // 25, 1)),
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--seed", "0",
    ]  # fmt: skip
    trainer = run(parse_config(argv))
    return trainer.state.log_history


def held_out_accuracy(model_dir: Path) -> EvalReport:
    model = load_model(ModelArguments(model_name_or_path=str(model_dir), torch_dtype="auto"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = [json.loads(line) for line in EVAL_FILE.read_text(encoding="utf-8").splitlines()]
    return evaluate_records(model, tokenizer, [r["messages"] for r in records], max_new_tokens=8, batch_size=100)


def run_quickstart(output_dir: str | Path, *, steps: int | None = None, dft_alpha: float = 0.7) -> dict[str, float]:
    """Run the quickstart; `steps` replaces both stages' step counts (for smoke tests).

    dft_alpha defaults to the seed DFT trainer's 0.7. Returns held-out accuracy per model (base, dft, sft).
    """
    out = Path(output_dir)
    schedule = Schedule() if steps is None else Schedule(base_steps=steps, finetune_steps=steps)
    transformers.logging.set_verbosity_warning()
    started = time.time()
    init_dir = init_model("small-llama", out / "init")
    base_log = train_stage(
        init_dir, out / "base", schedule.base_steps, schedule.base_lr, schedule.batch_size, ["--loss", "sft"]
    )
    objectives = {"dft": ["--loss", "dft", "--dft_alpha", str(dft_alpha)], "sft": ["--loss", "sft"]}
    logs = {
        name: train_stage(
            out / "base", out / name, schedule.finetune_steps, schedule.finetune_lr, schedule.batch_size, flags
        )
        for name, flags in objectives.items()
    }
    reports = {name: held_out_accuracy(out / name) for name in ("base", "dft", "sft")}
    rows = result_rows(reports, dft_alpha)
    write_results(rows, out)
    png = plot_runs(
        {"base (SFT from scratch)": base_log,
         f"DFT (alpha {dft_alpha}) from base": shift_steps(logs["dft"], schedule.base_steps),
         "SFT from base": shift_steps(logs["sft"], schedule.base_steps)},
        out / "curves.png",
        title="dftune quickstart: 2-digit addition, small Llama from scratch on CPU",
    )  # fmt: skip
    print_table(rows, time.time() - started, [png, out / "accuracy.png", out / "accuracy.md"])
    return {name: report.accuracy for name, report in reports.items()}


def shift_steps(history: list[dict], offset: int) -> list[dict]:
    """Fine-tuning logs continue the base run's step axis, so the curves read left to right."""
    return [{**entry, "step": entry["step"] + offset} for entry in history if "step" in entry]


Row = tuple[str, EvalReport]


def result_rows(reports: dict[str, EvalReport], dft_alpha: float) -> list[Row]:
    return [("base model (before)", reports["base"]), (f"+ DFT, alpha {dft_alpha} (after)", reports["dft"]),
            ("+ SFT, same steps (for comparison)", reports["sft"])]  # fmt: skip


def accuracy_markdown(rows: list[Row]) -> str:
    """The held-out accuracy table as Markdown, intervals included (accuracy.md; README shows one)."""
    lines = [f"Held-out exact-match accuracy ({EVAL_FILE.name}, greedy, 95% Wilson interval):", "",
             "| model | accuracy | 95% interval | correct |", "|---|---|---|---|"]
    for name, report in rows:
        low, high = report.interval
        correct = sum(r.correct for r in report.results)
        lines.append(f"| {name} | {report.accuracy:.1%} | [{low:.1%}, {high:.1%}] | {correct} / {len(report.results)} |")
    return "\n".join(lines) + "\n"


def write_results(rows: list[Row], out: Path) -> None:
    """accuracy.json (for scripts), accuracy.md (for people) and accuracy.png, in the demo's output folder."""
    payload = [{"model": name, "accuracy": report.accuracy, "interval": list(report.interval),
                "correct": sum(r.correct for r in report.results), "total": len(report.results)}
               for name, report in rows]  # fmt: skip
    write_text(out / "accuracy.json", json.dumps(payload, indent=2) + "\n")
    write_text(out / "accuracy.md", accuracy_markdown(rows))
    plot_accuracy({name.split(" (")[0]: (report.accuracy, *report.interval) for name, report in rows},
                  out / "accuracy.png", title="dftune quickstart: held-out accuracy, 95% interval")


def print_table(rows: list[Row], seconds: float, files: list[Path]) -> None:
    print("\n" + accuracy_markdown(rows))
    print("\n".join(f"wrote {path}" for path in files) + f"\ntook {seconds / 60:.1f} min")
