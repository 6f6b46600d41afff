"""Preprocessing throughput: conversations per second to read, validate and tokenise, 1 vs 2 workers.

    python benchmarks/bench_preprocess.py --records 100000

Synthetic multi-turn ChatML records (system + 1-3 user/assistant exchanges) with the byte-level preset
tokenizer; each run starts cold (no dftune cache: it calls validate_and_encode directly).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from datasets import disable_progress_bars

from dftune.data.validate import validate_and_encode
from dftune.models.presets import build_tokenizer

WORDS = "the model reads a short answer about numbers and returns one clear line of text".split()


def synthetic_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))

    records = []
    for _ in range(count):
        messages = [{"role": "system", "content": "You are helpful."}]
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": sentence()}, {"role": "assistant", "content": sentence()}]
        records.append({"messages": messages})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--max_length", type=int, default=1024)
    args = parser.parse_args()
    disable_progress_bars()
    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in synthetic_records(args.records)) + "\n")
        rows = ["| workers | records | seconds | conversations/s |", "|---:|---:|---:|---:|"]
        for workers in (1, 2):
            start = time.perf_counter()
            dataset, report = validate_and_encode(
                [str(path)], tokenizer, max_length=args.max_length, num_proc=workers, fingerprint=f"bench-{workers}"
            )
            seconds = time.perf_counter() - start
            assert report.kept == len(dataset) == args.records
            rows.append(f"| {workers} | {args.records} | {seconds:.1f} | {args.records / seconds:,.0f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
