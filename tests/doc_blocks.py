"""The shell blocks of README.md and docs/*.md, and running one as printed (tests/docs/test_doc_commands.py runs
every block not marked `<!-- docs test: not run: REASON -->`; tests/harness runs the lm-eval page's, which need the
lmeval extra)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import processes

ROOT = Path(__file__).resolve().parents[1]
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


def run_block(block: Block, folder: Path) -> None:
    """`block` run by bash in `folder` (which gets links to the repository's examples/, src/ and configs/ once), with
    this Python's scripts first on PATH; a failure names the page and line."""
    for name in SHARED:
        if not (folder / name).exists():
            (folder / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = processes.run(["bash", "-euo", "pipefail", "-c", block.commands], step=f"{block.page.name}:{block.line}",
                           timeout=1800, cwd=folder, env=env, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, (
        f"{block.page.name}:{block.line}: the block fails as printed (exit {result.returncode}):\n{block.commands}\n"
        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
