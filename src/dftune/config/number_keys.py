"""Every number key of `dftune train` finite and in its range, checked once at parse time, before a model loads.

Each section declares its keys' ranges beside its fields, as the class attribute `ranges` (key -> `Range`): ours
(`DataArguments.ranges`, a stage's `DllmArguments.ranges`, the objective settings' from the registry), and
transformers' `TrainingArguments` here (`TRAINING_RANGES`). A number key with no declared range must still be
finite. `check_given` runs on the values as written (so `logging_steps: inf` never reaches TrainingArguments,
which would raise OverflowError), `check_section` on each parsed section (defaults from the environment too).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from transformers import TrainingArguments

from dftune.numbers import FINITE, Range, out_of_range

SEED = Range(0, 2**32 - 1)
"""numpy's seeds: `seed: -1` used to end in a traceback from numpy."""

TRAINING_RANGES: Mapping[str, Range] = {
    "learning_rate": Range(0),
    "weight_decay": Range(0),
    "adam_beta1": Range(0, 1, high_open=True),
    "adam_beta2": Range(0, 1, high_open=True),
    "adam_epsilon": Range(0),
    "max_grad_norm": Range(0),  # 0 turns clipping off
    "label_smoothing_factor": Range(0, 1),
    "neftune_noise_alpha": Range(0),
    "warmup_steps": Range(0),  # below 1: a share of the steps
    "num_train_epochs": FINITE,  # 0 or less with no max_steps: `check_training_numbers`
    "logging_steps": Range(0),
    "save_steps": Range(0),
    "eval_steps": Range(0),
    "eval_delay": Range(0),
    "seed": SEED,
    "data_seed": SEED,
    "per_device_train_batch_size": Range(1),
    "per_device_eval_batch_size": Range(1),
    "gradient_accumulation_steps": Range(1),
    "dataloader_num_workers": Range(0),
}


def ranges_of(section: type) -> Mapping[str, Range]:
    """The declared ranges of a section's keys."""
    return TRAINING_RANGES if issubclass(section, TrainingArguments) else getattr(section, "ranges", {})


def is_number_type(kind: Any) -> bool:
    """`int`, `float`, or either `| None` (not bool)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union \
        else (kind,)
    return any(option in (int, float) for option in options)


def check_given(values: Mapping[str, Any], sections: Iterable[type]) -> None:
    """The number keys among `values` (key -> the value as written: a YAML number or a flag's text), each in its
    range; a ValueError naming the first that is not. A value that is not a number is left to the parser."""
    for section in sections:
        hints = typing.get_type_hints(section)
        for f in fields(section):
            written = values.get(f.name)
            if written is None or isinstance(written, bool) or not is_number_type(hints.get(f.name)):
                continue
            try:
                number = float(written)
            except (TypeError, ValueError):
                continue  # "invalid float value: 'fast'": the parser says so, with file:line
            if error := out_of_range(f.name, number, ranges_of(section), written):
                raise error


def check_section(section: Any) -> None:
    """Every number field of a parsed section finite and in its range (a ValueError naming the first that is not)."""
    assert is_dataclass(section)
    ranges = ranges_of(type(section))
    for f in fields(section):
        if error := out_of_range(f.name, getattr(section, f.name), ranges):
            raise error
