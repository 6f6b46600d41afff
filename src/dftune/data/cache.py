"""Where prepared datasets are cached, and the fingerprint that names them.

The fingerprint hashes everything that changes the tokenised result: the data files' bytes (or a Hub
dataset's own fingerprint), the tokenizer (vocabulary, specials, chat template), max_length, mask_history,
and CODE_VERSION, which must be bumped whenever reading, validation or encoding changes behaviour.
The split and the bad-record policy are applied after the cache, so they are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, load_from_disk
from transformers import PreTrainedTokenizerBase

from dftune.data.encode import chat_template, require_fast
from dftune.data.readers import is_local, load_hub_dataset
from dftune.data.report import ValidationReport
from dftune.data.sources import Source, as_sources

CODE_VERSION = "dftune-data-3"  # 2: long conversations split, source_id, per-source length counts; 3: lone replies
_REPORT = "report.json"
_EMPTY = "empty.json"  # an empty split's features: `datasets` 5.2 saves a table without rows but cannot load it back


def cache_root(configured: str | None) -> Path:
    """`dataset_cache_dir`, else $DFTUNE_CACHE, else ~/.cache/dftune."""
    return Path(configured or os.environ.get("DFTUNE_CACHE") or Path.home() / ".cache" / "dftune").expanduser()


def fingerprint(
    splits: dict[str, Sequence[str | Source]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    mask_history: bool,
    **settings: Any,
) -> str:
    """A hex digest naming the tokenised result of `splits` ({"train": sources, "eval": sources}); `settings` are
    further keys that change it (e.g. long_conversations)."""
    digest = hashlib.sha256()
    settings = {"code": CODE_VERSION, "max_length": max_length, "mask_history": mask_history, **settings}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for split, sources in splits.items():
        digest.update(f"\0split {split}\0".encode())
        for source in as_sources(sources):
            digest.update(f"\0source {source.name}\0".encode())
            digest.update(source.digest(_content_hash).encode())
    digest.update(_tokenizer_hash(tokenizer).encode())
    return digest.hexdigest()[:32]


def load_entry(entry: Path) -> tuple[dict[str, Dataset], ValidationReport] | None:
    """The cached datasets and report, or None when the entry is absent (or was left half written)."""
    if not (entry / _REPORT).is_file():
        return None
    datasets = {split.name: _load_split(split) for split in sorted(entry.iterdir()) if split.is_dir()}
    report = ValidationReport.from_dict(json.loads((entry / _REPORT).read_text(encoding="utf-8")))
    return datasets, report


def save_entry(entry: Path, datasets: dict[str, Dataset], report: ValidationReport) -> None:
    """Write to a temporary folder then rename, so a killed run never leaves an entry that looks complete.
    `datasets` cannot load back a 0-row dataset it saved, so a split with no rows is stored as its columns."""
    partial = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for split, dataset in datasets.items():
        if len(dataset) == 0:  # every record rejected: the report says why, the split is only its columns
            (partial / split).mkdir(parents=True)
            (partial / split / _EMPTY).write_text(json.dumps(dataset.features.to_dict()), encoding="utf-8")
        else:
            dataset.save_to_disk(str(partial / split))
    report.save(partial / _REPORT)
    if entry.exists():  # another process finished the same entry first; the rename makes entries all-or-nothing
        shutil.rmtree(partial)
    else:
        partial.rename(entry)


def _load_split(folder: Path) -> Dataset:
    empty = folder / _EMPTY
    if empty.is_file():
        features = Features.from_dict(json.loads(empty.read_text(encoding="utf-8")))
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return load_from_disk(str(folder))


def report_file(entry: Path) -> Path:
    return entry / _REPORT


def _content_hash(source: str) -> str:
    if not is_local(source):
        return load_hub_dataset(source)._fingerprint
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    digest = hashlib.sha256(chat_template(tokenizer).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(require_fast(tokenizer).backend_tokenizer.to_str().encode())
    return digest.hexdigest()
