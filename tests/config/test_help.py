"""`--help` of every subcommand exits 0; `dftune train --help` lists every key, each once, with its default."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from cli_commands import command_paths
from dftune.cli.main import main
from dftune.stages import stage_sections, train_help_parser
from dftune.config.parse import sections


@pytest.mark.parametrize("command", command_paths(), ids=lambda c: " ".join(["dftune", *c]))
def test_every_help_exits_zero(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        code = main([*command, "--help"])
        raise SystemExit(code)
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_train_help_lists_every_key_once_with_stage_choices_and_auto() -> None:
    text = train_help_parser().format_help()
    options = text.split("options:", 1)[1]
    for section in sections(stage_sections()):
        for f in fields(section):
            if f.init:
                assert len(re.findall(rf"^  --{f.name}\b", options, re.MULTILINE)) == 1, f.name
    assert "5% of the free memory" in re.sub(r"\s+", " ", options)  # a `%` in a help string is text
    assert "--stage {sft,dllm,dpo}" in options
    resume = options.split("--resume_from_checkpoint", 1)[1].split("\n  --", 1)[0]
    assert "auto" in resume
    assert "keep their left part" not in options
    for block in re.split(r"\n  --", options):
        appended = re.search(r"\(default: [^()]*\)\s*$", block)
        if appended:  # the default is appended only to help that does not say it already
            assert not re.search(r"\(default\b|\bdefault:|\bdefaults to\b", block[: appended.start()], re.I), block
