"""The Python examples in docs/losses.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "losses.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_docs_have_an_example():
    assert EXAMPLES


@pytest.mark.parametrize("code", EXAMPLES)
def test_docs_example_runs(code):
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})
