"""`dftune --help` and every subcommand's `--help` but `train`'s import neither torch nor transformers (issue 29):
each runs in a fresh interpreter, which then reports the exit code and which of the two it holds in sys.modules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import processes
import pytest

import dftune
from cli_commands import command_paths

HEAVY = ("torch", "transformers")
CHILD = """
import json, sys
from dftune.cli.main import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": sorted(name for name in %r if name in sys.modules)}))
""" % (HEAVY,)
SRC = str(Path(dftune.__file__).resolve().parents[1])  # the dftune being tested, installed or from src/


def help_in_fresh_process(command: list[str]) -> dict:
    """Run `dftune COMMAND --help` in a new interpreter; its last stdout line is the child's report."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = processes.run([sys.executable, "-c", CHILD, json.dumps([*command, "--help"])], step=f"{command} --help",
                         timeout=600, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout, done.stdout[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_walk_finds_nested_subcommands() -> None:
    paths = command_paths()
    assert [] in paths and ["train"] in paths and ["data"] in paths and ["data", "check"] in paths
    assert len(paths) == len({tuple(p) for p in paths})


@pytest.mark.parametrize("command", command_paths(), ids=lambda c: " ".join(["dftune", *c]))
def test_help_imports_no_torch_nor_transformers(command: list[str]) -> None:
    report = help_in_fresh_process(command)
    assert report["code"] == 0
    if command[:1] != ["train"]:  # train --help lists TrainingArguments' keys: transformers is what defines them
        assert report["heavy"] == [], f"dftune {' '.join(command)} --help imported {report['heavy']}"
