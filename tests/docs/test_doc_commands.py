"""Docs as tests: every shell block of README.md and docs/*.md runs, in order, exactly as printed, in a fresh
folder that holds the repository's examples/, src/ and configs/ — unless the line above the block says why not
(`<!-- docs test: not run: REASON -->`: placeholders, GPUs, or longer than minutes on 2 CPU cores). A command
that fails as written fails here, with the page and line."""

from __future__ import annotations

import pytest
from doc_blocks import MARKER, NOT_RUN, PAGES, ROOT, run_block, shell_blocks

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
    for block in RUN[page]:
        run_block(block, tmp_path)
