"""tests/harness needs lm-evaluation-harness (the `lmeval` extra): without it these tests fail to load, saying how
to run them (`make test-lmeval`), rather than skip. The local task folder (`lm_eval_tasks.write_tasks`) is made once
per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lm_eval_tasks import write_tasks

if importlib.util.find_spec("lm_eval") is None:
    raise ImportError("tests/harness needs lm-evaluation-harness, the lmeval extra: run `make test-lmeval` (it adds "
                      "the extra to .venv), or `pip install -c constraints.txt -e '.[dev,lmeval]'` first; `make test` "
                      "leaves tests/harness out")


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))
