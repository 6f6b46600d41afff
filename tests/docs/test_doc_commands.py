"""Docs as tests: every shell block of README.md and docs/*.md runs, in order, exactly as printed, in a fresh
folder that holds the repository's examples/, src/ and configs/ — unless the line above the block says why not
(`<!-- docs test: not run: REASON -->`: placeholders, GPUs, or longer than minutes on 2 CPU cores). A command
that fails as written fails here, with the page and line."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import processes
import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!-- docs test")
NOT_RUN = re.compile(r"^<!-- docs test: not run: (\S.*?) -->$")
SHARED = ("examples", "src", "configs")  # what the printed commands read, relative to the repository root


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    commands: str
    not_run: str | None  # the reason, for a block the test does not run


def shell_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        above = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.match(above)
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(page, line, match.group(1), reason.group(1) if reason else None))
    return blocks


RUN = {page: [block for block in shell_blocks(page) if block.not_run is None] for page in PAGES}


def test_every_marker_is_well_formed_and_sits_on_a_block():
    """A misspelt marker would run a block meant to be skipped (or the reverse) without a word."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if MARKER.search(line):
                assert NOT_RUN.match(line), f"{page.name}:{number}: write `<!-- docs test: not run: REASON -->`"
                assert lines[number].startswith("```"), f"{page.name}:{number}: the marker must sit right above a block"


def test_the_readme_runs_its_train_block():
    """The README's first-minutes commands are not exempt: its init-model and train block is run."""
    assert any("dftune train examples/dft_quickstart.yaml" in block.commands for block in RUN[ROOT / "README.md"])


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if RUN[page]], ids=lambda page: page.name)
def test_commands_run_as_printed(page, tmp_path):
    for name in SHARED:
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block in RUN[page]:
        result = processes.run(["bash", "-euo", "pipefail", "-c", block.commands], step=f"{page.name}:{block.line}",
                               timeout=1800, cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, (
            f"{page.name}:{block.line}: the block fails as printed (exit {result.returncode}):\n{block.commands}\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
