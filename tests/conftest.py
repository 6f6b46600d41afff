"""Shared fixtures: a tiny random model made once per session, offline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dftune.models.presets import init_model


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tokenised-data caches go to a temporary folder, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DFTUNE_CACHE", str(tmp_path_factory.mktemp("dftune-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model("tiny-llama", tmp_path_factory.mktemp("tiny-llama"))
