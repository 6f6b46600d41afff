"""What the cache's manifest costs: write and verify a tokenised-data entry of --samples x --tokens tokens.

    python benchmarks/bench_cache.py --samples 100000 --tokens 1024      (~820 MB: input_ids and labels, int32)

The entry holds the columns `prepare_datasets` caches (random token ids). Reported: `save_entry` (write, hash,
manifest, rename), `check_manifest` alone (sizes, then every file's SHA-256), `load_from_disk` alone (a memory map:
what loading costs without the check) and `load_entry` (check + load). Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, disable_progress_bars, load_from_disk

from dftune.data import cache
from dftune.data.manifest import check_manifest
from dftune.data.report import ValidationReport


def timed(work) -> tuple[float, object]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    disable_progress_bars()
    n, t = args.samples, args.tokens
    ids = pa.array(np.random.default_rng(0).integers(0, 50_000, size=n * t, dtype=np.int32))
    column = pa.ListArray.from_arrays(pa.array(np.arange(0, n * t + 1, t, dtype=np.int32)), ids)
    table = pa.table({"input_ids": column, "labels": column, "source": pa.array(["a"] * n),
                      "source_id": pa.array(np.zeros(n, np.int32))})  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        entry = root / "prepared" / ("0" * 32)
        save, _ = timed(lambda: cache.save_entry(entry, {"train": Dataset(table)}, ValidationReport()))
        size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file()) / 1e6
        check, reason = timed(lambda: check_manifest(entry))
        plain, _ = timed(lambda: load_from_disk(str(entry / "train")))
        full, loaded = timed(lambda: cache.load_entry(entry))
        assert reason is None and loaded is not None
        print(f"entry {size:.0f} MB ({n} x {t} tokens): save_entry {save:.2f} s; check_manifest {check:.2f} s "
              f"({size / check:.0f} MB/s); load_from_disk alone {plain:.3f} s; load_entry {full:.2f} s")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
