"""The one-screen run header (what is about to train, and how) and the final summary (what came out).

Both are plain text blocks logged once, by the main process. The header is logged from `on_train_begin`
because only then does the Trainer know the real number of optimizer steps (epochs x batches / accumulation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from dftune.runlog import process_info

logger = logging.getLogger(__name__)

TRAIN_KEYS = ("loss", "ce", "avg_p_correct", "token_accuracy")


def human(n: float) -> str:
    """12345678 -> '12.35M': parameter and sample counts at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total). Under DeepSpeed ZeRO-3 a parameter holds a 0-element shard; its full size is ds_numel."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()  # ds_numel: DeepSpeed's attribute, absent otherwise
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def block(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """Rows as an aligned two-column block under a title rule."""
    width = max(len(name) for name, _ in rows)
    lines = [f"---- {title} " + "-" * max(0, 60 - len(title))]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class RunDescription:
    """What the header says that the Trainer does not know."""

    model_name: str
    objective: str
    train_samples: int
    eval_samples: int | None
    trackers: str  # as requested: swanlab leaves report_to for a callback of its own
    parallelism: str  # what engaged: "DeepSpeed ZeRO-3, world size 2, backend gloo"


def header_rows(
    args: TrainingArguments, state: TrainerState, model: nn.Module, run: RunDescription
) -> list[tuple[str, str]]:
    trainable, total = parameter_counts(model)
    info = process_info()
    config = model.config
    precision = "bf16 mixed" if args.bf16 else "fp16 mixed" if args.fp16 else "fp32"
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    evaluated = f"{run.eval_samples} eval" if run.eval_samples else "no eval"
    return [
        ("model", f"{run.model_name} ({type(model).__name__})"),
        ("parameters", f"{human(trainable)} trainable / {human(total)} total ({trainable / max(total, 1):.1%})"),
        ("objective", run.objective),
        ("data", f"{run.train_samples} train samples, {evaluated}"),
        (
            "effective batch",
            f"{effective} = {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} "
            f"accumulation x {args.world_size} processes",
        ),
        ("steps", f"{state.max_steps} optimizer steps, logging every {state.logging_steps:g}"),
        ("precision", f"{precision}, weights {next(model.parameters()).dtype}".replace("torch.", "")),
        ("attention", str(config._attn_implementation)),
        ("launcher", ", ".join(filter(None, (info.launcher, info.layout(), f"device {args.device}")))),
        ("parallelism", run.parallelism),
        ("trackers", run.trackers or "none"),
        ("output", str(args.output_dir)),
    ]


class RunHeader(TrainerCallback):
    """Logs the run header once, when training starts."""

    def __init__(self, run: RunDescription) -> None:
        self.run = run

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            logger.info("%s", block("dftune run", header_rows(args, state, kwargs["model"], self.run)))


def last_entry(history: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any]:
    """The last log entry holding `key` (the Trainer's final `train_runtime` entry also holds `train_loss`)."""
    return next((e for e in reversed(history) if key in e and "train_runtime" not in e), {})


@dataclass(frozen=True)
class RunOutcome:
    """What the summary says that the log history does not."""

    objective: str
    steps: int
    seconds: float
    output_dir: str
    target_tokens: int | None = None
    """Target tokens trained in this session over every process; None where the trainer does not count them."""
    files: Sequence[tuple[str, str]] = ()
    """(what, path) of each file worth opening: the curves, the data report, the resolved config."""


def summary_rows(history: Sequence[Mapping[str, Any]], outcome: RunOutcome) -> list[tuple[str, str]]:
    train = last_entry(history, "loss")
    evaluation = last_entry(history, "eval_loss")
    speed = next((e for e in reversed(history) if "train_runtime" in e), {})
    rows = [("objective", outcome.objective), ("steps", str(outcome.steps)), ("time", f"{outcome.seconds:.1f} s")]
    throughput = [f"{speed['train_samples_per_second']:.2f} samples/s"] if "train_samples_per_second" in speed else []
    if outcome.target_tokens and speed.get("train_runtime"):
        throughput.append(f"{outcome.target_tokens / speed['train_runtime']:.0f} target tokens/s "
                          f"({human(outcome.target_tokens)} trained)")
    if throughput:
        rows.append(("throughput", ", ".join(throughput)))
    if train:
        rows.append(("final train", ", ".join(f"{k} {train[k]:.4f}" for k in TRAIN_KEYS if k in train)))
    if "eval_ce" in evaluation:
        rest = [f"{k[5:]} {evaluation[k]:.4f}" for k in ("eval_loss", "eval_avg_p_correct") if k in evaluation]
        rows.append(("final eval CE", f"{evaluation['eval_ce']:.4f} ({', '.join(rest)})"))
    elif evaluation:  # a stage without plain CE (dpo): its own loss
        rows.append(("final eval loss", f"{evaluation['eval_loss']:.4f}"))
    rows.append(("model", outcome.output_dir))
    rows += [(what, path) for what, path in outcome.files]
    return rows


def log_summary(history: Sequence[Mapping[str, Any]], outcome: RunOutcome) -> None:
    """Log the final summary block (call it on the main process)."""
    logger.info("%s", block("dftune done", summary_rows(history, outcome)))
