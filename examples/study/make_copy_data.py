"""A copy task for the study: "Repeat exactly: <sentence>" answered by the sentence, as ChatML train and held-out
splits.

    python examples/study/make_copy_data.py --output_dir outputs/study/data/copy

The sentences are the word problems' questions (examples/smollm2_math/make_data.py's templates, another seed), so
the vocabulary matches the other task; but every target token is already in the prompt, which a pretrained model
copies with high probability: the study's task at the other end of the entropy profile. The held-out sentences
are drawn first, from their own seed, and no training sentence equals one of them.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "smollm2_math"))
from make_data import TEMPLATES, write_jsonl  # noqa: E402  (an example script beside this one, not a package)


def sentence(r: random.Random, index: int) -> str:
    """The question of a word problem, round-robin over the templates."""
    names = list(TEMPLATES)
    return TEMPLATES[names[index % len(names)]](r)[0]


def record(text: str) -> dict:
    return {"messages": [{"role": "user", "content": f"Repeat exactly: {text}"},
                         {"role": "assistant", "content": text}]}  # fmt: skip


def make_splits(num_train: int, num_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out sentences from `seed`, training sentences from `seed + 1` with every held-out one left out."""
    held_r, train_r = random.Random(seed), random.Random(seed + 1)
    held_out: dict[str, None] = {}
    while len(held_out) < num_eval:
        held_out.setdefault(sentence(held_r, len(held_out)))
    train: list[str] = []
    while len(train) < num_train:
        text = sentence(train_r, len(train))
        if text not in held_out:
            train.append(text)
    return [record(t) for t in train], [record(t) for t in held_out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/study/data/copy")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    train, held_out = make_splits(args.num_train, args.num_eval, args.seed)
    out = Path(args.output_dir)
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(held_out, out / "heldout.jsonl")
    print(f"wrote {len(train)} training and {len(held_out)} held-out sentences to {out}")


if __name__ == "__main__":
    main()
