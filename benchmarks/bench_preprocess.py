"""Preprocessing throughput: conversations per second to read, validate and tokenise, 1 vs 2 workers; and, with
--long, time and memory on long conversations (split at turn boundaries vs the old truncation) and one 50 MB reply.

    python benchmarks/bench_preprocess.py --records 100000
    python benchmarks/bench_preprocess.py --long [--json out.json]     (what `make bench` runs)

Synthetic multi-turn ChatML records (system + 1-3 user/assistant exchanges) with the byte-level preset
tokenizer; each run starts cold (no dftune cache: it calls validate_and_encode directly). --long: conversations of
2k-15k tokens (a quarter with a first prompt over the budget) at max_length 2048, each case in a fresh process
whose peak RSS (VmHWM) is reported with the RSS after the imports, so the difference is preprocessing's own.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
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


def long_records(count: int, seed: int = 0) -> list[dict]:
    """Conversations of 2k-15k tokens (byte-level: one per character); every fourth opens with a 2,500-token prompt."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        total, lengths = rng.randint(2000, 15000), [2500 if i % 4 == 0 else rng.randint(50, 600)]
        while sum(lengths) < total or len(lengths) % 2:
            lengths.append(rng.randint(100, 1500))
        roles = ["user", "assistant"] * len(lengths)
        records.append({"messages": [{"role": r, "content": " ".join(rng.choices(WORDS, k=n // 5))}
                                     for r, n in zip(roles, lengths)]})  # fmt: skip
    return records


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that across fork and exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str, max_length: int, mode: str) -> dict:
    """One case, in this (fresh) process: seconds, peak RSS and RSS after imports (MiB), records and samples."""
    tokenizer = build_tokenizer()
    base = peak_rss_mib()
    start = time.perf_counter()
    dataset, report = validate_and_encode([path], tokenizer, max_length=max_length, long_conversations=mode)
    seconds = time.perf_counter() - start
    lengths = report.to_dict().get("lengths", {})
    cut = sum(c["tokens_cut"] for c in lengths.values())
    return {"mode": mode, "seconds": seconds, "base_mib": base, "peak_mib": peak_rss_mib(),
            "records": report.total, "kept": report.kept, "samples": len(dataset), "tokens_cut": cut}  # fmt: skip


def long_benchmark(records: int) -> dict:
    """The long corpus in both modes and one 50 MB reply at max_length 64, each in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus, big = Path(tmp) / "long.jsonl", Path(tmp) / "big.jsonl"
        corpus.write_text("\n".join(json.dumps(r) for r in long_records(records)) + "\n")
        reply = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "y" * (50 << 20)}]}
        big.write_text(json.dumps(reply) + "\n")
        cases = [("long corpus", corpus, 2048, "split"), ("long corpus", corpus, 2048, "truncate"),
                 ("one 50 MB reply", big, 64, "split")]  # fmt: skip
        rows = []
        for name, path, max_length, mode in cases:
            out = subprocess.run([sys.executable, __file__, "--measure", str(path), str(max_length), mode],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            rows.append({"case": name, "max_length": max_length, **json.loads(out.strip().splitlines()[-1])})
    header = ["| case | max_length | mode | records | kept | samples | tokens cut | seconds | RSS after imports (MiB) "
              "| peak RSS (MiB) | peak - imports (MiB) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines = [f"| {r['case']} | {r['max_length']} | {r['mode']} | {r['records']} | {r['kept']} | {r['samples']} | "
             f"{r['tokens_cut']:,} | {r['seconds']:.2f} | {r['base_mib']:.0f} | {r['peak_mib']:.0f} | "
             f"{r['peak_mib'] - r['base_mib']:.0f} |" for r in rows]  # fmt: skip
    return {"rows": rows, "table": "\n".join(header + lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--long", action="store_true", help="long conversations and a 50 MB reply: time and memory")
    parser.add_argument("--long_records", type=int, default=200)
    parser.add_argument("--json", help="write the results here (with --long)")
    parser.add_argument("--measure", nargs=3, metavar=("FILE", "MAX_LENGTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    disable_progress_bars()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.measure[2])))
        return
    if args.long:
        result = long_benchmark(args.long_records)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        print(result["table"])
        return
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
