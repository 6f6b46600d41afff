"""Synthetic multi-step arithmetic word problems with worked answers, as ChatML train and held-out splits.

    python examples/smollm2_math/make_data.py --output_dir outputs/smollm2_math/data

Each problem takes two or three steps of small-number arithmetic; the answer works them out one line per step
("3 × 4 = 12") and ends with "The answer is N." so the `last_number` extractor reads it. No held-out question
appears in training, so held-out accuracy measures the skill, not recall.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jade", "Kofi", "Lena")
ITEMS = ("apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "cards")

Problem = tuple[str, list[str], int]  # question, worked steps, answer


def gather(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    start, bags, per_bag = r.randint(2, 30), r.randint(2, 6), r.randint(2, 9)
    given = r.randint(1, start + bags * per_bag - 1)
    bought, total = bags * per_bag, start + bags * per_bag
    question = (
        f"{name} has {start} {item}. {name} buys {bags} bags with {per_bag} {item} in each bag, "
        f"then gives {given} {item} to a friend. How many {item} does {name} have now?"
    )
    steps = [f"{bags} × {per_bag} = {bought}", f"{start} + {bought} = {total}", f"{total} - {given} = {total - given}"]
    return question, steps, total - given


def change(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    price, count = r.randint(2, 12), r.randint(2, 8)
    cost = price * count
    paid = r.choice([b for b in (20, 50, 100) if b >= cost] or [200])
    question = (
        f"A shop sells {item} for {price} dollars each. {name} buys {count} {item} and pays with "
        f"{paid} dollars. How many dollars of change does {name} get?"
    )
    return question, [f"{count} × {price} = {cost}", f"{paid} - {cost} = {paid - cost}"], paid - cost


def reading(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    per_day, days, extra = r.randint(3, 25), r.randint(2, 7), r.randint(1, 40)
    read = per_day * days
    question = (
        f"{name} reads {per_day} pages every day for {days} days, and then {extra} more pages on the weekend. "
        f"How many pages does {name} read in total?"
    )
    return question, [f"{days} × {per_day} = {read}", f"{read} + {extra} = {read + extra}"], read + extra


def sharing(r: random.Random) -> Problem:
    item = r.choice(ITEMS)
    friends, each, boxes = r.randint(2, 6), r.randint(2, 9), r.randint(2, 5)
    total = friends * each
    first = r.randint(1, total - 1)
    second = total - first
    question = (
        f"There are {first} {item} in one box and {second} {item} in another. They are shared equally among "
        f"{friends} friends. Each friend then finds {boxes} more {item}. How many {item} does each friend have?"
    )
    steps = [f"{first} + {second} = {total}", f"{total} ÷ {friends} = {each}", f"{each} + {boxes} = {each + boxes}"]
    return question, steps, each + boxes


def seats(r: random.Random) -> Problem:
    cars, per_car, empty, boarding = r.randint(2, 9), r.randint(4, 12), r.randint(1, 15), r.randint(1, 20)
    seats_total = cars * per_car
    empty = min(empty, seats_total - 1)
    riding = seats_total - empty
    question = (
        f"A train has {cars} cars with {per_car} seats in each car. {empty} seats are empty and every other seat "
        f"is taken. At the next stop {boarding} more people get on. How many people are on the train now?"
    )
    steps = [f"{cars} × {per_car} = {seats_total}", f"{seats_total} - {empty} = {riding}",
             f"{riding} + {boarding} = {riding + boarding}"]  # fmt: skip
    return question, steps, riding + boarding


TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "gather": gather, "change": change, "reading": reading, "sharing": sharing, "seats": seats,
}  # fmt: skip


def record(problem: Problem) -> dict:
    question, steps, answer = problem
    worked = "\n".join(f"Step {i}: {step}" for i, step in enumerate(steps, 1))
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"{worked}\nThe answer is {answer}."},
        ]
    }


def make_splits(num_train: int, num_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Round-robin over the templates; a held-out question never appears in training."""
    r = random.Random(seed)
    names = list(TEMPLATES)
    held_out: dict[str, Problem] = {}
    while len(held_out) < num_eval:
        problem = TEMPLATES[names[len(held_out) % len(names)]](r)
        held_out.setdefault(problem[0], problem)
    train: list[Problem] = []
    while len(train) < num_train:
        problem = TEMPLATES[names[len(train) % len(names)]](r)
        if problem[0] not in held_out:
            train.append(problem)
    return [record(p) for p in train], [record(p) for p in held_out.values()]


def write_jsonl(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/smollm2_math/data")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    train, held_out = make_splits(args.num_train, args.num_eval, args.seed)
    out = Path(args.output_dir)
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(held_out, out / "heldout.jsonl")
    print(f"wrote {len(train)} training and {len(held_out)} held-out problems to {out}")


if __name__ == "__main__":
    main()
