"""README.md's objective and key tables and docs/keys.md are tools/docs_tables.py's output from the registry and
the dataclasses: a new objective, setting or key fails here until `make docs` has shown it."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from transformers import TrainingArguments

from dftune.config.parse import sections
from dftune.losses import OBJECTIVES
from dftune.stages import stage_sections

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "tools" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pages_match_the_code(tables):
    assert tables.stale_pages() == [], "run `make docs`"


def test_a_changed_block_is_found(tables, tmp_path):
    for page in tables.BLOCKS:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text((ROOT / page).read_text(encoding="utf-8").replace("`dft_alpha`", "`dft_a`"))
    assert tables.stale_pages(tmp_path) == list(tables.BLOCKS)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_has_a_formula_in_the_readme(tables, name):
    formula = OBJECTIVES[name].formula
    assert formula.strip(), f"objective {name} declares no formula"
    assert f"| `{name}` | `{formula.replace('|', chr(92) + '|')}` |" in tables.objective_table()


def test_every_key_of_train_is_listed_with_its_default(tables):
    """Every dftune key `dftune train` parses appears once in README's table and once in docs/keys.md."""
    generic = {f.name for f in fields(TrainingArguments)}
    keys = {f.name for s in sections(stage_sections()) if s is not TrainingArguments for f in fields(s) if f.init}
    readme, reference = tables.key_table(), tables.key_reference()
    for key in sorted(keys - generic):
        assert readme.count(f"`{key}`") == 1, key
        assert reference.count(f"| `{key}` |") == 1, key


def test_a_page_without_its_markers_is_an_error(tables):
    with pytest.raises(SystemExit, match="no block 'keys'"):
        tables.render("no markers here\n", {"keys": tables.key_table})
