"""Shared fixtures: a tiny random model made once per session, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from dftune.models.presets import init_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model("tiny-llama", tmp_path_factory.mktemp("tiny-llama"))
