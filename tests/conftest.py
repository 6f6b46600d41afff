"""Shared fixtures: a tiny random model made once per session, offline; launch lines for 2 CPU processes."""

from __future__ import annotations

import shutil
import socket
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from dftune.models.presets import init_model


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` skip, saying so, on a machine without a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run on one (make bench-gpu covers the GPU paths)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def nan_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with one NaN in its output layer: every loss is NaN from the first step."""
    poisoned = tmp_path_factory.mktemp("nan-model") / "model"
    shutil.copytree(tiny_model_dir, poisoned)
    weights = load_file(poisoned / "model.safetensors")
    weights["lm_head.weight"][0, 0] = float("nan")
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})
    return poisoned


@pytest.fixture
def heavy_work(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the expensive steps a command takes, each still run as it is: model weight loads (`from_pretrained` of
    a transformers model) and tokenisation of a dataset (`datasets.Dataset.map`). A test that a mistake fails fast
    bounds this work (none of it) instead of timing the command, which flakes on a loaded machine."""
    from datasets import Dataset
    from transformers import PreTrainedModel

    counts: Counter = Counter()
    load, tokenise = PreTrainedModel.from_pretrained.__func__, Dataset.map

    def counted_load(cls, *args, **kwargs):
        counts["model loads"] += 1
        return load(cls, *args, **kwargs)

    def counted_map(self, *args, **kwargs):
        counts["dataset maps"] += 1
        return tokenise(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counted_load))
    monkeypatch.setattr(Dataset, "map", counted_map)
    return counts


@pytest.fixture
def scratch_objectives() -> Iterator[None]:
    """Objectives registered inside a test are gone after it (the registry is restored in place)."""
    from dftune.losses import OBJECTIVES

    saved = dict(OBJECTIVES)
    yield
    OBJECTIVES.clear()
    OBJECTIVES.update(saved)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], str]:
    """A free TCP port on this machine, fresh each call: a rendezvous endpoint for a launcher."""
    return _free_port


@pytest.fixture
def torchrun() -> Callable[[], list[str]]:
    """`torchrun --nproc_per_node 2` on a fresh free port each call (tests run side by side)."""
    return lambda: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port()]
