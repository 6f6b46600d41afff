"""examples/smollm2_math/make_data.py: every worked step is right, the answer is the last step's result, and no
held-out question is in training."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from pathlib import Path

import processes

SCRIPT = Path(__file__).parents[2] / "examples" / "smollm2_math" / "make_data.py"
STEP = re.compile(r"^Step (\d+): (\d+) ([×÷+-]) (\d+) = (\d+)$")
OPERATIONS = {"×": lambda a, b: a * b, "÷": lambda a, b: a / b, "+": lambda a, b: a + b, "-": lambda a, b: a - b}


def generate(out: Path, seed: int = 7) -> tuple[list[dict], list[dict]]:
    argv = [sys.executable, str(SCRIPT), "--output_dir", str(out), "--num_train", "300", "--num_eval", "60",
            "--seed", str(seed)]  # fmt: skip
    processes.run(argv, step="examples/smollm2_math/make_data.py", timeout=120, check=True, capture_output=True)
    read = lambda name: [json.loads(line) for line in (out / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    return read("train.jsonl"), read("heldout.jsonl")


def test_worked_answers_are_right_and_splits_disjoint(tmp_path):
    train, held_out = generate(tmp_path / "a")
    assert (len(train), len(held_out)) == (300, 60)
    for record in train + held_out:
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        *steps, final = assistant["content"].split("\n")
        assert 2 <= len(steps) <= 3
        results = []
        for number, line in enumerate(steps, 1):
            match = STEP.match(line)
            assert match and int(match[1]) == number, line
            a, op, b, result = int(match[2]), match[3], int(match[4]), int(match[5])
            assert OPERATIONS[op](a, b) == result, line
            assert result >= 0
            results.append(result)
        assert final == f"The answer is {results[-1]}."
    train_questions = {r["messages"][0]["content"] for r in train}
    assert not train_questions & {r["messages"][0]["content"] for r in held_out}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    assert generate(tmp_path / "a") == generate(tmp_path / "b")
    assert generate(tmp_path / "c", seed=8)[1] != generate(tmp_path / "a")[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_summary_knows_each_template_and_checks_worked_lines():
    make_data, summarize = load("make_data"), load("summarize")
    assert list(summarize.TEMPLATES) == list(make_data.TEMPLATES)
    rng = random.Random(0)
    for name, template in make_data.TEMPLATES.items():
        for _ in range(50):
            record = make_data.record(template(rng))
            assert summarize.template_of(record["messages"][0]["content"]) == name
            right, worked = summarize.right_lines(record["messages"][1]["content"])
            assert right == worked >= 2
    assert summarize.right_lines("2 + 3 = 6\nStep 2: 6 × 2 = 12\nThe answer is 12.") == (1, 2)
