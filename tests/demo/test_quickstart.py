"""The quickstart's plumbing, at a few steps: every stage runs, the table prints, the PNG is a real picture."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest

from dftune.demo.arithmetic import EVAL_FILE, TRAIN_FILE, make_splits
from dftune.demo.quickstart import run_quickstart


def test_bundled_data_matches_its_generator():
    train, held_out = make_splits()
    assert [json.loads(line) for line in TRAIN_FILE.read_text().splitlines()] == train
    assert [json.loads(line) for line in EVAL_FILE.read_text().splitlines()] == held_out
    questions = lambda records: {r["messages"][0]["content"] for r in records}  # noqa: E731
    assert not questions(train) & questions(held_out), "held-out questions must be unseen in training"


@pytest.mark.slow
def test_quickstart_smoke(tmp_path, capsys):
    accuracy = run_quickstart(tmp_path, steps=4)
    assert set(accuracy) == {"base", "dft", "sft"}
    out = capsys.readouterr().out
    assert "Held-out exact-match accuracy" in out and "DFT" in out
    saved = json.loads((tmp_path / "accuracy.json").read_text())
    held_out = len(EVAL_FILE.read_text().splitlines())
    assert [row["accuracy"] for row in saved] == [accuracy["base"], accuracy["dft"], accuracy["sft"]]
    for row in saved:  # the interval is Wilson's for correct / total, and holds the accuracy
        assert row["total"] == held_out and row["accuracy"] == row["correct"] / held_out
        assert row["interval"][0] <= row["accuracy"] <= row["interval"][1] and row["interval"][1] > 0
    table = (tmp_path / "accuracy.md").read_text()
    assert table in out and table.count("\n| ") == 4  # header + 3 models
    bars = mpimg.imread(tmp_path / "accuracy.png")
    assert bars[..., :3].std() > 0.05
    image = mpimg.imread(tmp_path / "curves.png")
    height, width = image.shape[:2]
    assert width > 1000 and height > 300
    assert image[..., :3].std() > 0.05, "the plot must contain drawn curves, not a blank canvas"
    for stage in ("base", "dft", "sft"):
        assert (tmp_path / stage / "model.safetensors").is_file()
