"""Write the reverse task of examples/diffusion/dllm_reverse.yaml: `{"input": "reverse: abc", "output": "cba"}`.

Strings of 3 to 6 letters from a-h; the eval strings never occur in training.
Run: python examples/diffusion/make_reverse_data.py  (writes reverse_train.json and reverse_eval.jsonl here)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def make(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    strings: list[str] = []
    while len(strings) < n_train + n_eval:
        s = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        if s not in seen:
            seen.add(s)
            strings.append(s)
    records = [{"input": f"reverse: {s}", "output": s[::-1]} for s in strings]
    return records[:n_train], records[n_train:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=str(Path(__file__).parent))
    parser.add_argument("--n_train", type=int, default=4000)
    parser.add_argument("--n_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, evaluation = make(args.n_train, args.n_eval, args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Training data as seed 003 reads it (one .json list of records); eval as JSONL for `dftune.demo`-style checks.
    (out / "reverse_train.json").write_text("[\n" + ",\n".join(map(json.dumps, train)) + "\n]\n", encoding="utf-8")
    (out / "reverse_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evaluation), encoding="utf-8")
    print(f"wrote {len(train)} train and {len(evaluation)} eval records to {out}")


if __name__ == "__main__":
    main()
