"""The quickstart's bundled task: two-number addition as ChatML conversations, train and held-out splits.

Regenerate the bundled files with `python -m dftune.demo.arithmetic` (a test checks they match this code).
Held-out questions are operand pairs never seen in training, so accuracy there measures generalisation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
TRAIN_FILE = DATA_DIR / "addition_train.jsonl"
EVAL_FILE = DATA_DIR / "addition_eval.jsonl"
NUM_TRAIN, NUM_EVAL, SEED = 4000, 200, 1234


def conversation(a: int, b: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": str(a + b)},
        ]
    }


def make_splits(num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL, seed: int = SEED) -> tuple[list, list]:
    """Disjoint operand pairs from 0..99: the first `num_eval` shuffled pairs are held out."""
    pairs = [(a, b) for a in range(100) for b in range(100)]
    random.Random(seed).shuffle(pairs)
    held_out, train = pairs[:num_eval], pairs[num_eval : num_eval + num_train]
    return [conversation(*p) for p in train], [conversation(*p) for p in held_out]


def write_jsonl(records: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


if __name__ == "__main__":
    train, held_out = make_splits()
    write_jsonl(train, TRAIN_FILE)
    write_jsonl(held_out, EVAL_FILE)
    print(f"wrote {len(train)} records to {TRAIN_FILE} and {len(held_out)} to {EVAL_FILE}")
