"""The console of a run: one tqdm bar with ETA, and log lines written for a person.

transformers prints each log entry as a Python dict of strings (`{'loss': '4.544', ...}`), and its final
evaluation both as a dict and again through `log_metrics`. Here each entry is one line, numbers as numbers at a
fixed width, the objective's loss first, then plain cross-entropy and `avg_p_correct` (comparable across
objectives), then the objective's own metrics::

    step   20/100  loss 0.8123  ce 1.2040  avg_p_correct 0.4121  token_accuracy 0.6012  dft_alpha 0.7000  lr 4.0e-04
    eval   20/100  loss 0.9012  ce 1.3311  avg_p_correct 0.3890

Trackers and `trainer.state.log_history` keep every entry as it was logged (machine-readable); only the console
changes. With `disable_tqdm` the same lines are printed without a bar.
"""

from __future__ import annotations

import math
from typing import Any

from tqdm.auto import tqdm
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

FIRST = ("loss", "ce", "avg_p_correct", "token_accuracy")
"""Metrics shown first, in this order; any other metric follows in the order it was logged."""
LAST = ("learning_rate", "grad_norm", "epoch")
HIDDEN = ("total_flos", "step", "num_input_tokens_seen")
SHORT = {"learning_rate": "lr"}


def number(value: Any) -> str:
    """A metric at a fixed width: 4 decimals for values of order one, scientific notation for the very small or
    large (a learning rate), integers (and whole floats from 10 up: counts) as integers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) >= 10:  # a count logged as a float (TRL's num_tokens)
        return str(int(value))
    return f"{value:.1e}" if value != 0 and not 1e-3 <= abs(value) < 1e4 else f"{value:.4f}"


def log_line(logs: dict[str, Any], step: int, max_steps: int) -> str | None:
    """One console line for a log entry; None for the Trainer's end-of-training speed entry (the summary says it)."""
    if "train_runtime" in logs:
        return None
    evaluation = any(key.startswith("eval_") for key in logs)
    prefix = "eval_" if evaluation else ""
    values = {key[len(prefix):]: value for key, value in logs.items()
              if key.startswith(prefix) and not key.endswith(("_runtime", "_per_second")) and key not in HIDDEN}
    order = [k for k in FIRST if k in values] + [k for k in values if k not in FIRST and k not in LAST]
    order += [k for k in LAST if k in values]
    width = len(str(max_steps))
    head = f"{'eval' if evaluation else 'step'} {step:>{width}}/{max_steps}"
    return "  ".join([head, *(f"{SHORT.get(k, k)} {number(values[k])}" for k in order)])


class ProgressBar(ProgressCallback):
    """transformers' bars (training with ETA, evaluation batches), with `log_line` above the bar instead of a
    dict; a log entry after the bar has closed (the final evaluation) is printed the same way, once."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if not state.is_world_process_zero or not logs:
            return
        line = log_line(logs, state.global_step, state.max_steps)
        if line is not None:
            (self.training_bar.write if self.training_bar is not None else tqdm.write)(line)


class LinePrinter(PrinterCallback):
    """`disable_tqdm`: the same lines, no bar."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if state.is_world_process_zero and logs:
            line = log_line(logs, state.global_step, state.max_steps)
            if line is not None:
                print(line, flush=True)


def use_console(trainer: Trainer) -> None:
    """Swap the Trainer's default progress callback (bar or printer) for dftune's console; a notebook keeps its own
    (transformers' NotebookProgressCallback is neither)."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBar())
    elif trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(LinePrinter())
