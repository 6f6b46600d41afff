"""tests/harness: the local lm-eval task folder (`lm_eval_tasks.write_tasks`), made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_eval_tasks import write_tasks


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))
