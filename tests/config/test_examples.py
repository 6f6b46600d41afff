"""The example configs in examples/ parse, so the README's commands stay true."""

from pathlib import Path

import pytest

from dftune.run import parse_config

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path):
    config = parse_config([str(path)])
    assert config.method.loss in {"dft", "bft"}
    assert all(Path(__file__).parents[2].joinpath(f).is_file() for f in config.data.data_files)


def test_there_are_examples():
    assert len(EXAMPLES) >= 2
