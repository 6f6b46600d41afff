"""examples/study/make_copy_data.py: every answer is the sentence its prompt asks to repeat, the held-out sentences
are never trained on, and the same seed makes the same files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import processes

SCRIPT = Path(__file__).parents[2] / "examples" / "study" / "make_copy_data.py"
PREFIX = "Repeat exactly: "


def generate(out: Path, seed: int = 11) -> tuple[list[dict], list[dict]]:
    argv = [sys.executable, str(SCRIPT), "--output_dir", str(out), "--num_train", "300", "--num_eval", "60",
            "--seed", str(seed)]  # fmt: skip
    processes.run(argv, step="examples/study/make_copy_data.py", timeout=120, check=True, capture_output=True)
    read = lambda name: [json.loads(line) for line in (out / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    return read("train.jsonl"), read("heldout.jsonl")


def test_answers_repeat_the_prompt_and_splits_are_disjoint(tmp_path):
    train, held_out = generate(tmp_path / "a")
    assert (len(train), len(held_out)) == (300, 60)
    for record in train + held_out:
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"] == PREFIX + assistant["content"] and assistant["content"].endswith("?")
    held = {r["messages"][1]["content"] for r in held_out}
    assert len(held) == 60
    assert not held & {r["messages"][1]["content"] for r in train}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    assert generate(tmp_path / "a") == generate(tmp_path / "b")
    assert generate(tmp_path / "c", seed=12)[1] != generate(tmp_path / "a")[1]
