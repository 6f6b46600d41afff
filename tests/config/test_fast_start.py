"""`dftune --help` and every subcommand's `--help` but `train`'s import neither torch nor transformers, and `train
--help` imports only what its keys need: no TRL, PEFT, datasets, DeepSpeed, trainer or model loading (issue 29).
Each runs in a fresh interpreter, which then reports the exit code and which of the named modules it holds in
sys.modules."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from dataclasses import fields
from pathlib import Path

import processes
import pytest

import dftune
from cli_commands import command_paths
from dftune.stages import STAGES, stage_sections

HEAVY = ("torch", "transformers")
TRAINERS = ("trl", "peft", "datasets", "deepspeed", "dftune.run", "dftune.stages.common", "dftune.models.loading",
            "dftune.runtime.objective_trainer", *(stage.module for stage in STAGES.values()))  # fmt: skip
"""What `train --help` must not import: the libraries and our modules that only training needs."""
CHILD = """
import json, sys
from dftune.cli.main import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "loaded": sorted(name for name in json.loads(sys.argv[2]) if name in sys.modules)}))
"""
KEYS_CHILD = """
import json, sys
from transformers import TrainingArguments
print(json.dumps({"code": 0, "loaded": sorted(name for name in json.loads(sys.argv[2]) if name in sys.modules)}))
"""
SRC = str(Path(dftune.__file__).resolve().parents[1])  # the dftune being tested, installed or from src/


def fresh_process(script: str, argv: list[str], names: tuple[str, ...]) -> tuple[dict, str]:
    """Run `script` with `argv` in a new interpreter: (the report on its last stdout line, its whole stdout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = processes.run([sys.executable, "-c", script, json.dumps(argv), json.dumps(names)], step=f"{argv}",
                         timeout=600, capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def help_in_fresh_process(command: list[str], names: tuple[str, ...] = HEAVY) -> tuple[dict, str]:
    """`dftune COMMAND --help` in a new interpreter: which of `names` it imported, and what it printed."""
    report, out = fresh_process(CHILD, [*command, "--help"], names)
    assert "usage:" in out, out[-3000:]
    return report, out


def test_the_walk_finds_nested_subcommands() -> None:
    paths = command_paths()
    assert [] in paths and ["train"] in paths and ["data"] in paths and ["data", "check"] in paths
    assert len(paths) == len({tuple(p) for p in paths})


@pytest.mark.parametrize("command", command_paths(), ids=lambda c: " ".join(["dftune", *c]))
def test_help_imports_no_torch_nor_transformers(command: list[str]) -> None:
    report, _ = help_in_fresh_process(command)
    assert report["code"] == 0
    if command[:1] != ["train"]:  # train --help lists TrainingArguments' keys: transformers is what defines them
        assert report["loaded"] == [], f"dftune {' '.join(command)} --help imported {report['loaded']}"


def test_train_help_imports_no_trainer_and_lists_every_stage_key() -> None:
    """Of TRAINERS, `train --help` may hold only what `from transformers import TrainingArguments` itself imports
    (transformers 5.23's trainer_utils imports peft whenever it is installed), and it still lists each stage's keys
    once: the registry reads them from `dftune.stages.keys` without importing the stage modules."""
    report, out = help_in_fresh_process(["train"], TRAINERS)
    assert report["code"] == 0
    keys_need, _ = fresh_process(KEYS_CHILD, [], TRAINERS)
    assert set(report["loaded"]) - set(keys_need["loaded"]) == set(), report["loaded"]
    assert not {"trl", "datasets", "deepspeed"} & set(report["loaded"]), report["loaded"]
    for name, section in stage_sections().items():
        for f in fields(section):
            assert len(re.findall(rf"^  --{f.name}\b", out, re.MULTILINE)) == 1, (name, f.name)


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_module_builds_a_trainer(name: str) -> None:
    """The registry names a module by its path: a typo would surface only when that stage runs."""
    module = importlib.import_module(STAGES[name].module)
    assert callable(module.build_trainer), STAGES[name].module
