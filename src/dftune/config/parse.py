"""`dftune train [CONFIG.yaml] [--key value ...]` -> one typed RunConfig, with every mistake caught before a model loads.

Flags override YAML keys. Both are merged into one argv for `HfArgumentParser`, so a YAML value and the same
value given as a flag are converted by the same code: every `TrainingArguments` flag works as transformers
documents it.

The stages' own keys come from the caller (`dftune.stages.parse_config` passes the registry's dataclasses, each
a `StageArguments`): this module knows no stage. The chosen stage's keys become `RunConfig.stage_args`; another
stage's key set to a value of its own is an error.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from dftune.config.data_args import DataArguments
from dftune.config.help_text import HELP, help_text
from dftune.config.legacy import stage_aliases, translate
from dftune.config.machine import needs_cpu
from dftune.config.method_args import MethodArguments
from dftune.config.model_args import ModelArguments
from dftune.config.number_keys import check_given, check_section
from dftune.config.reliability_args import ReliabilityArguments, check_training_numbers
from dftune.config.yaml_source import Sourced as _Value
from dftune.config.yaml_source import read_yaml
from dftune.errors import DftuneError
from dftune.numbers import Range

CONFIG_FILE_NAME = "dftune_config.yaml"
StageSections = Mapping[str, "type[StageArguments]"]  # stage name -> its keys, as the registry lists them


@dataclass
class StageArguments:
    """Base of a stage's own keys (`dftune.stages.keys`): the fields are its keys; the class attribute `ranges`
    their ranges (key -> `dftune.numbers.Range`, checked at parse time); `check` holds the rules that need the rest
    of the config (the objective, packing, the fine-tuning type)."""

    ranges: ClassVar[dict[str, Range]] = {}

    def check(self, config: RunConfig) -> None:
        """Raise ValueError when this stage's keys contradict the rest of `config` (parse reports it)."""

    def own_objective(self) -> str | None:
        """The run header's objective for a stage with a loss of its own (DPO's), else None: `loss` and its keys."""
        return None


@dataclass
class RunConfig:
    """Everything one run needs, resolved and checked."""

    model: ModelArguments
    data: DataArguments
    method: MethodArguments
    training: TrainingArguments
    notes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    reliability: ReliabilityArguments = field(default_factory=ReliabilityArguments)
    stage_args: StageArguments = field(default_factory=StageArguments)
    """The keys of `method.stage`: an instance of that stage's dataclass."""

    def to_yaml(self) -> str:
        """The resolved config as YAML that `dftune train` reads back: what actually ran."""
        merged: dict[str, Any] = {}
        for section in (self.model, self.data, self.method, self.reliability, self.stage_args):
            merged.update(asdict(section))
        merged.update(_explicit_training_args(self.training))
        return yaml.safe_dump(merged, sort_keys=False)


def sections(stages: StageSections) -> tuple[type, ...]:
    """Every dataclass whose fields are keys: the generic sections and every stage's, TrainingArguments last."""
    return (ModelArguments, DataArguments, MethodArguments, ReliabilityArguments, *stages.values(), TrainingArguments)


class ConfigArgumentParser(HfArgumentParser):
    """argparse exits the process on a bad value; we want a DftuneError the CLI prints cleanly, starting with the
    `file:line` (or "command line") of the key it names when `origins` knows it."""

    origins: dict[str, str] = {}

    def __init__(self, dataclass_types: Any, **kwargs: Any) -> None:
        super().__init__(dataclass_types, formatter_class=argparse.HelpFormatter, **kwargs)
        for action in self._actions:
            if action.dest in HELP or (action.help and action.help is not argparse.SUPPRESS):
                action.help = help_text(HELP.get(action.dest, action.help), action.default)

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"argument --(\w+)(/--[\w-]+)?", r"key \1", message)
        key = re.search(r"key (\w+)", message)
        origin = self.origins.get(key.group(1)) if key else None
        raise DftuneError(f"{origin}: {message}" if origin else message)


def config_parser(stages: StageSections, **kwargs: Any) -> ConfigArgumentParser:
    """The parser of every key; `stage` lists the registered stages as its choices."""
    parser = ConfigArgumentParser(sections(stages), **kwargs)
    for action in parser._actions:
        if action.dest == "stage":
            action.choices = list(stages)
    return parser


def with_origin(message: str, values: dict[str, _Value]) -> str:
    """`message` (a ValueError of a section's checks) led by the origin of the first key it names, if any."""
    named = [(match.start(), key) for key in values if (match := re.search(rf"\b{key}\b", message))]
    return f"{values[min(named)[1]].origin}: {message}" if named else message


def known_keys(stages: StageSections) -> set[str]:
    return {f.name for section in sections(stages) for f in fields(section) if f.init}


def parse_config(argv: list[str], stages: StageSections) -> RunConfig:
    """Parse `[CONFIG.yaml] [--key value ...]` into a RunConfig; raise DftuneError naming the key and its origin.

    `stages`: the stage registry's keys (`dftune.stages.parse_config` passes them)."""
    values: dict[str, _Value] = {}
    if argv and not argv[0].startswith("--"):
        values.update(read_yaml(Path(argv[0])))
        argv = argv[1:]
    values.update(parse_flags(argv))

    notes: list[str] = []
    env: dict[str, str] = {}
    known = known_keys(stages)
    values = stage_aliases(values, notes)  # TRL SFTConfig's loss_type under stage sft (config/legacy.py)
    resolved: dict[str, _Value] = {}
    for key, item in values.items():
        translation = translate(key, item.value) if key not in known else None
        if translation is not None:
            notes.append(f"{item.origin}: {key} {translation.note}")
            env.update(translation.env)
            resolved.update({k: _Value(v, item.origin) for k, v in translation.keys.items()})
        elif key in known:
            resolved[key] = item
        else:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            fix = f"; did you mean {hint[0]!r}?" if hint else "; see `dftune train --help` for the keys"
            raise DftuneError(f"{item.origin}: unknown key {key!r}{fix}")

    check_stage(resolved.get("stage"), stages)
    parser = config_parser(stages)
    parser.origins = {key: item.origin for key, item in resolved.items()}
    try:
        check_engines(resolved)
        if deepspeed_on_cpu_processes(resolved):
            start_deepspeed_on_cpu()
            resolved["use_cpu"] = _Value(True, "dftune")
            notes.append("DeepSpeed processes on a machine without CUDA: DeepSpeed started on gloo, use_cpu: true")
        if needs_cpu(resolved):  # no accelerator here: bf16 flags and torchrun DDP on CPU (dftune.config.machine)
            resolved["use_cpu"] = _Value(True, "dftune")
        check_given({key: item.value for key, item in resolved.items()}, sections(stages))
        argv = to_argv(resolved, multi_word=multi_word_keys(parser))
        model, data, method, reliability, *per_stage, training = parser.parse_args_into_dataclasses(args=argv)
        stage_args = stage_keys(method.stage, dict(zip(stages, per_stage)), given=set(resolved))
        config = RunConfig(model, data, method, training, notes, env, reliability, stage_args)
        for section in (model, data, method, reliability, stage_args, training):
            check_section(section)
        check_training_numbers(training, reliability, given=set(resolved))
        stage_args.check(config)
    except ValueError as err:  # __post_init__ and stage checks: contradictions and out-of-range values
        raise DftuneError(with_origin(f"invalid configuration: {err}", resolved)) from None
    # transformers reads --report_to as one word: `tensorboard,wandb` (or a YAML list) names several trackers.
    training.report_to = [name.strip() for item in training.report_to for name in item.split(",") if name.strip()]
    return config


def check_stage(item: _Value | None, stages: StageSections) -> None:
    """`stage` names a registered stage (the default, sft, when absent)."""
    if item is not None and str(item.value) not in stages:
        raise DftuneError(f"{item.origin}: key stage: invalid choice: {str(item.value)!r} "
                          f"(choose from {', '.join(stages)})")


def stage_keys(stage: str, per_stage: dict[str, StageArguments], *, given: set[str]) -> StageArguments:
    """The chosen stage's keys; ValueError when a key only another stage has was given a value of its own.

    A key at its default passes: a saved dftune_config.yaml of an older dftune lists every stage's keys so.
    """
    own = {f.name for f in fields(per_stage[stage])}
    for name, values in per_stage.items():
        default = type(values)()
        changed = [f.name for f in fields(values) if f.name in given and f.name not in own
                   and getattr(values, f.name) != getattr(default, f.name)]  # fmt: skip
        if changed:
            raise ValueError(f"{', '.join(changed)} apply to stage: {name} only, but the stage is {stage}")
    return per_stage[stage]


def parse_flags(argv: list[str]) -> dict[str, _Value]:
    """`--key v`, `--key=v`, `--key v1 v2` (a list) and a bare `--flag` (true) into key -> value."""
    values: dict[str, _Value] = {}
    key: str | None = None
    for token in argv:
        if token.startswith("--"):
            key, eq, inline = token[2:].partition("=")
            key = key.replace("-", "_")
            values[key] = _Value([inline] if eq else [], "command line")
        elif key is None:
            raise DftuneError(f"unexpected argument {token!r}: options are written --key value")
        else:
            values[key].value.append(token)
    for item in values.values():
        item.value = {0: True, 1: item.value[0] if item.value else None}.get(len(item.value), item.value)
    return values


def check_engines(values: dict[str, _Value]) -> None:
    """A DeepSpeed config needs the package before TrainingArguments see it (a failure there leaves transformers'
    global DeepSpeed state half set for the rest of the process)."""
    item = values.get("deepspeed")
    if item is not None and item.value and importlib.util.find_spec("deepspeed") is None:
        raise DftuneError(f"{item.origin}: deepspeed needs the deepspeed package: pip install 'dftune[deepspeed]'")


def deepspeed_on_cpu_processes(values: dict[str, _Value]) -> bool:
    """A DeepSpeed config, several processes (torchrun, deepspeed launcher) and no CUDA."""
    item = values.get("deepspeed")
    return bool(item and item.value) and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def start_deepspeed_on_cpu() -> None:
    """Start DeepSpeed's process group (gloo) before TrainingArguments set up the devices.

    Without CUDA, accelerate 1.15 starts torch.distributed itself and leaves DeepSpeed's own communication
    uninitialised, so ZeRO's config sees world size 1 and stops with "train_batch_size is not equal to
    micro_batch_per_gpu * gradient_acc_step * world_size". Started here, both see every process.
    """
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")


def multi_word_keys(parser: HfArgumentParser) -> set[str]:
    """Keys whose flag takes several words; other keys given a YAML list get one comma-joined word
    (transformers 5 reads `report_to: [tensorboard, wandb]` as `--report_to tensorboard,wandb`)."""
    return {a.dest for a in parser._actions if a.nargs in ("+", "*")}


def to_argv(values: dict[str, _Value], multi_word: set[str]) -> list[str]:
    """Render merged values as flags for HfArgumentParser (lists as several words, mappings as JSON)."""
    argv: list[str] = []
    for key, item in values.items():
        value = item.value
        if isinstance(value, (list, tuple)):
            if not value:  # an empty list in YAML means "none": keep the default
                continue
            words = [_scalar(v) for v in value]
            argv += [f"--{key}", *(words if key in multi_word else [",".join(words)])]
        else:
            argv += [f"--{key}", _scalar(value)]
    return argv


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _explicit_training_args(training: TrainingArguments) -> dict[str, Any]:
    """TrainingArguments that differ from their defaults, as plain YAML values."""
    defaults = TrainingArguments(output_dir=training.output_dir)
    out: dict[str, Any] = {}
    for f in fields(TrainingArguments):
        if not f.init:
            continue
        value = getattr(training, f.name)
        if value != getattr(defaults, f.name) or f.name == "output_dir":
            out[f.name] = json.loads(json.dumps(value, default=str))
    return out


def apply_env(config: RunConfig) -> None:
    """Export the environment that legacy keys translated to (e.g. TENSORBOARD_LOGGING_DIR)."""
    os.environ.update(config.env)
