"""The package layout holds: the import-linter contracts in pyproject.toml pass, and no module grows past 300 lines."""

from __future__ import annotations

import sys
from pathlib import Path

import processes

ROOT = Path(__file__).parents[1]
MAX_LINES = 300


def test_import_layers_hold():
    """Layers point down, the runtime imports no stage, no package imports a sibling in a cycle (lazy imports
    inside functions included: import-linter reads every import statement)."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = processes.run([str(lint_imports)], step="lint-imports", timeout=120, cwd=ROOT, capture_output=True,
                           text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_module_over_300_lines():
    sizes = {path.relative_to(ROOT): len(path.read_text(encoding="utf-8").splitlines())
             for path in (ROOT / "src" / "dftune").rglob("*.py")}  # fmt: skip
    too_long = {str(path): n for path, n in sizes.items() if n > MAX_LINES}
    assert not too_long, too_long
